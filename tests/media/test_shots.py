"""Shot sampling: cuts found within a frame of where they were rendered, fixed splits where there
are none, at most max_shots, one detection per video file and window (the database's cache), and
the whole path through a real worker on the tiny model."""

from __future__ import annotations

import json

import pytest
from inproc import InProcess

from egoqa.dev.synth import render_clip, write_synth_dataset
from egoqa.media.shots import (
    Shots,
    clip_shots,
    detect_cuts,
    detection_key,
    detector_spec,
    fixed_splits,
    merge_shortest,
    shots_in_window,
)
from egoqa.plan.config import SamplerConfig
from egoqa.store.db import open_db

from conftest import enqueue_args

FPS = 10
CUTS = (3.7, 6.0, 13.0, 17.3)
SHOTS = SamplerConfig(kind="shots", max_shots=20)


@pytest.fixture(scope="module")
def cut_clip(tmp_path_factory):
    """24 s at 10 fps with hard cuts at CUTS (each shot another background)."""
    return render_clip(tmp_path_factory.mktemp("cuts") / "cut.mp4", 24.0, fps=FPS, cuts=CUTS)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """A full video holding two clips with cuts (write_synth_dataset's layout, full scale)."""
    root = tmp_path_factory.mktemp("full")
    return write_synth_dataset(
        root, clips=2, queries_per_clip=1, duration_sec=12.0, full_scale=True, cuts_per_clip=2
    )


# --- shots from cuts (hand values) -------------------------------------------------------------


def test_fixed_splits_are_equal_pieces_of_at_most_split_sec():
    assert fixed_splits((0.0, 50.0), 20.0) == [(0.0, 50 / 3), (50 / 3, 100 / 3), (100 / 3, 50.0)]
    assert fixed_splits((4.0, 14.0), 20.0) == [(4.0, 14.0)]
    assert fixed_splits((0.0, 40.0), 20.0) == [(0.0, 20.0), (20.0, 40.0)]


def test_the_shortest_shot_is_merged_into_its_shorter_neighbour_until_max_shots():
    shots = [(0, 5), (5, 6), (6, 10), (10, 11), (11, 20)]
    # (5,6) and (10,11) are 1 s: the earlier goes first, into its shorter neighbour (6,10)
    assert merge_shortest(shots, 4) == [(0, 5), (5, 10), (10, 11), (11, 20)]
    assert merge_shortest(shots, 3) == [(0, 5), (5, 11), (11, 20)]
    assert merge_shortest(shots, 1) == [(0, 20)]
    assert merge_shortest([(0, 1), (1, 9)], 1) == [(0, 9)]
    assert merge_shortest(shots, 9) == shots


def test_cuts_outside_the_window_are_ignored_and_none_inside_falls_back_to_splits():
    spec = SamplerConfig(kind="shots", max_shots=3, split_sec=5.0)
    assert shots_in_window([2.0, 8.0, 30.0], (0.0, 20.0), spec) == Shots(
        [(0.0, 2.0), (2.0, 8.0), (8.0, 20.0)], False
    )
    assert shots_in_window([2.0, 30.0], (5.0, 20.0), spec) == Shots(
        [(5.0, 10.0), (10.0, 15.0), (15.0, 20.0)], True
    )
    assert shots_in_window([], (0.0, 4.0), spec) == Shots([(0.0, 4.0)], True)
    assert Shots([(0.0, 6.0), (6.0, 13.0)], False).keyframes == [3.0, 9.5]


# --- detection on rendered cuts ---------------------------------------------------------------


@pytest.mark.parametrize("detector", ["content", "adaptive"])
def test_detected_cuts_are_within_one_frame_of_the_rendered_cuts(cut_clip, detector):
    found = detect_cuts(cut_clip, 0.0, 24.0, detector_spec(SamplerConfig(detector=detector)))
    assert len(found.cuts) == len(CUTS) and found.fps == FPS
    assert all(abs(a - b) <= 1 / FPS + 1e-9 for a, b in zip(found.cuts, CUTS, strict=True))
    assert found.frames == 24 * FPS


def test_detection_inside_a_window_at_an_offset_finds_only_its_own_cuts(cut_video):
    clip_uid, cuts = next(iter(cut_video.cuts.items()))
    ann = json.loads(cut_video.annotations.read_text())
    clip = ann["videos"][0]["clips"][0]
    assert clip["clip_uid"] == clip_uid
    video = cut_video.videos / f"{ann['videos'][0]['video_uid']}.mp4"
    offset = clip["video_start_sec"]
    found = detect_cuts(video, offset + 1.0, offset + 12.0, detector_spec(SHOTS))
    # the other clip's cuts lie later in the same file: none of them is reported
    assert [round(c - offset, 6) for c in found.cuts] == pytest.approx(list(cuts), abs=1 / FPS)


def test_a_clip_without_cuts_gets_fixed_splits(tmp_path, db_path):
    plain = render_clip(tmp_path / "plain.mp4", 8.0, fps=FPS)
    spec = SamplerConfig(kind="shots", split_sec=3.0)
    shots = clip_shots(open_db(db_path, create=True), plain, "plain", 0.0, (0, 8), spec, 8.0)
    assert shots == Shots([(0.0, 8 / 3), (8 / 3, 16 / 3), (16 / 3, 8.0)], True)


# --- the database's cache ------------------------------------------------------------------------


def _rows(db) -> list[tuple]:
    with db.read() as cur:
        return cur.all("SELECT key, video, detector, start_sec, end_sec, cuts FROM shot_detections")


def test_detection_runs_once_per_window_and_is_read_back_from_the_database(cut_clip, db_path):
    db = open_db(db_path, create=True)
    first = clip_shots(db, cut_clip, "vid-1", 0.0, (0.0, 24.0), SHOTS, 24.0)
    assert [round(a, 6) for a, _ in first.ranges[1:]] == pytest.approx(list(CUTS), abs=1 / FPS)
    (row,) = _rows(db)
    assert row[1:5] == ("vid-1", json.dumps(detector_spec(SHOTS), sort_keys=True), 0.0, 24.0)
    # the stored cuts are what a second call uses: change them and the shots follow
    with db.write() as cur:
        cur.execute("UPDATE shot_detections SET cuts = '[12.0]'")
    again = clip_shots(db, cut_clip, "vid-1", 0.0, (0.0, 24.0), SHOTS, 24.0)
    assert again == Shots([(0.0, 12.0), (12.0, 24.0)], False)
    assert len(_rows(db)) == 1


def test_detector_thresholds_and_windows_are_part_of_the_key(cut_clip, db_path):
    db = open_db(db_path, create=True)
    clip_shots(db, cut_clip, "vid-1", 0.0, (0.0, 24.0), SHOTS, 24.0)
    strict = SamplerConfig(kind="shots", threshold=200.0)
    assert clip_shots(db, cut_clip, "vid-1", 0.0, (0.0, 24.0), strict, 24.0).fallback
    narrow = clip_shots(db, cut_clip, "vid-1", 0.0, (5.0, 15.0), SHOTS, 24.0)
    flat = [t for shot in narrow.ranges for t in shot]
    assert flat == pytest.approx([5.0, 6.0, 6.0, 13.0, 13.0, 15.0], abs=1 / FPS)
    assert len(_rows(db)) == 3
    a = detection_key("v", detector_spec(SHOTS), 0.0, 24.0)
    assert a != detection_key("w", detector_spec(SHOTS), 0.0, 24.0)
    assert a != detection_key("v", detector_spec(SamplerConfig(detector="adaptive")), 0.0, 24.0)


def test_a_window_outside_the_clip_is_refused_with_its_reason(cut_clip, db_path):
    from egoqa.errors import VideoError

    db = open_db(db_path, create=True)
    with pytest.raises(VideoError, match="is not inside the 24.000 s clip") as err:
        clip_shots(db, cut_clip, "vid-1", 0.0, (10.0, 10.0), SHOTS, 24.0)
    assert err.value.kind == "bad_window"


# --- the whole path: enqueue, a real worker, the tiny model ----------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_a_shots_run_shows_one_stamped_keyframe_per_detected_shot(tiny_model, db_path, tmp_path):
    cli = InProcess(db_path, tmp_path)
    data = write_synth_dataset(
        tmp_path / "data", clips=1, queries_per_clip=2, duration_sec=12.0, cuts_per_clip=2
    )
    model = json.dumps(str(tiny_model))
    sets = ("model=" + model, "style=baseline", "sampler.kind=shots", "sampler.stamp=true")
    sets += ("generation.do_sample=false",)  # greedy: the same answers every session
    cli(*enqueue_args(data, "demo", *(a for s in sets for a in ("--set", s))))
    cli("work", "--until-done")
    db = open_db(db_path)
    with db.read() as cur:
        jobs = cur.all("SELECT state, prompt, visual_tokens, clip_id FROM jobs")
        clips = dict(cur.all("SELECT id, clip_uid FROM clips"))
    assert len(jobs) == 2 and all(state == "done" and vt > 0 for state, _, vt, _ in jobs)
    for _, prompt, _, clip_id in jobs:
        cuts = data.cuts[clips[clip_id]]
        bounds = [0.0, *cuts, 12.0]
        ranges = ", ".join(f"{_t(a)} - {_t(b)}" for a, b in zip(bounds, bounds[1:], strict=False))
        assert "These 3 frames" in prompt and f"taken at {ranges}." in prompt
    assert len(_rows(db)) == 1  # one detection for the clip, shared by both queries on it


def _t(seconds: float) -> str:
    r = round(seconds, 1)
    return f"{int(r)}s" if r == int(r) else f"{r}s"


def test_synth_dataset_cuts_renders_clips_the_shots_sampler_can_split(tmp_path):
    """`egoqa dev synth-dataset --cuts N`: every clip has N hard cuts a detector finds."""
    InProcess(None, tmp_path)("dev", "synth-dataset", "d", "--clips", "2", "--cuts", "2")
    ann = json.loads((tmp_path / "d" / "annotations" / "nlq_val.json").read_text())
    clips = [c["clip_uid"] for v in ann["videos"] for c in v["clips"]]
    for clip_uid in clips:
        found = detect_cuts(tmp_path / "d" / "videos" / f"{clip_uid}.mp4", 0.0, 24.0,
                            detector_spec(SHOTS))  # fmt: skip
        assert len(found.cuts) == 2, clip_uid
