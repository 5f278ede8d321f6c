"""Synthetic clips carry a recoverable frame index, and synthetic datasets load like real ones."""

from __future__ import annotations

import json

import av
import decord
import numpy as np
import pytest
from PIL import Image

from egoqa.dev.synth import TEMPLATES, read_frame_index, render_clip, write_synth_dataset
from egoqa.errors import DatasetError, VideoError
from egoqa.plan.dataset import load_nlq, query_type


def _resize_long_edge(frame: np.ndarray, long_edge: int) -> np.ndarray:
    height, width = frame.shape[:2]
    scale = long_edge / max(height, width)
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BICUBIC))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return render_clip(tmp_path_factory.mktemp("clip") / "c.mp4", 4.0, fps=10, seed=7)


def test_rendered_clip_decodes_with_expected_frame_count_and_size(clip_path):
    reader = decord.VideoReader(str(clip_path))
    assert len(reader) == 40
    assert reader.get_avg_fps() == pytest.approx(10.0)
    assert reader[0].shape == (240, 320, 3)


def test_frame_index_is_recovered_from_decoded_frames(clip_path):
    reader = decord.VideoReader(str(clip_path))
    indices = [0, 1, 9, 17, 31, 39]
    frames = reader.get_batch(indices).asnumpy()
    assert [read_frame_index(frame) for frame in frames] == indices


def test_frame_index_survives_resize_to_112_px_long_edge(clip_path):
    reader = decord.VideoReader(str(clip_path))
    for index in range(len(reader)):
        small = _resize_long_edge(reader[index].asnumpy(), 112)
        assert small.shape[:2] == (84, 112)
        assert read_frame_index(small) == index


def test_consecutive_frames_differ_visibly(clip_path):
    reader = decord.VideoReader(str(clip_path))
    first, second = reader[10].asnumpy(), reader[11].asnumpy()
    below_band = slice(first.shape[0] // 4, None)
    assert np.abs(first[below_band].astype(int) - second[below_band]).mean() > 0.5


def test_render_is_deterministic_for_a_seed(tmp_path):
    one = render_clip(tmp_path / "one.mp4", 1.0, size=(160, 120), seed=3).read_bytes()
    two = render_clip(tmp_path / "two.mp4", 1.0, size=(160, 120), seed=3).read_bytes()
    other = render_clip(tmp_path / "other.mp4", 1.0, size=(160, 120), seed=4).read_bytes()
    assert one == two
    assert one != other


def test_gop_sets_the_keyframe_interval(tmp_path):
    path = render_clip(tmp_path / "g.mp4", 3.0, fps=10, size=(160, 120), gop=5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keyframes = [
            round(float(packet.pts * stream.time_base) * 10)
            for packet in container.demux(stream)
            if packet.is_keyframe and packet.pts is not None
        ]
    assert keyframes == [0, 5, 10, 15, 20, 25]


def test_frame_without_index_band_is_rejected():
    grey = np.full((120, 160, 3), 128, dtype=np.uint8)
    with pytest.raises(VideoError, match="no readable index band"):
        read_frame_index(grey)


def test_odd_size_is_rejected_with_a_clear_message(tmp_path):
    with pytest.raises(VideoError, match="even width and height"):
        render_clip(tmp_path / "odd.mp4", 1.0, size=(161, 120))


# --- datasets --------------------------------------------------------------------------------

SMALL = {"duration_sec": 3.0, "fps": 10, "size": (160, 120)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synth_dataset(tmp_path_factory.mktemp("synth"), clips=3, **SMALL)


def test_synth_dataset_loads_with_expected_counts(synth):
    data = load_nlq(synth.annotations, synth.videos, synth.metadata)
    assert len(data.queries) == 9
    assert len(data.clips) == 3
    assert data.skipped == []
    assert data.version == "v2"
    for clip in data.clips.values():
        assert (clip.video_path.name, clip.offset_sec) == (f"{clip.clip_uid}.mp4", 0.0)
        assert clip.duration_sec == 3.0


def test_synth_annotations_have_the_real_v2_shape(synth):
    data = json.loads(synth.annotations.read_text(encoding="utf-8"))
    assert "metadata" in data and "manifest" not in data
    clip = data["videos"][0]["clips"][0]
    query = clip["annotations"][0]["language_queries"][0]
    assert {
        "clip_uid",
        "video_start_sec",
        "video_end_sec",
        "clip_start_sec",
        "clip_end_sec",
    } <= set(clip)
    assert {"template", "query", "slot_x", "verb_x", "raw_tags", "video_start_sec"} <= set(query)
    assert query["template"] in {template for template, _, _ in TEMPLATES}
    assert len(clip["clip_uid"]) == 36 and clip["clip_uid"][14] == "4"  # uuid4 form
    texts = [q.text for q in load_nlq(synth.annotations, synth.videos).queries]
    assert {query_type(text) for text in texts} <= {
        "where",
        "what",
        "how",
        "in",
        "who",
        "did",
        "when",
    }


def test_synth_windows_lie_inside_their_clips(synth):
    data = load_nlq(synth.annotations, synth.videos)
    for query in data.queries:
        assert 0.0 <= query.gt_start < query.gt_end <= data.clips[query.clip_uid].duration_sec


def test_synth_clip_video_decodes_with_its_own_frame_indices(synth):
    clip = next(iter(load_nlq(synth.annotations, synth.videos).clips.values()))
    reader = decord.VideoReader(str(clip.video_path))
    assert len(reader) == 30
    assert read_frame_index(reader[29].asnumpy()) == 29


def test_second_write_does_not_rerender(synth):
    before = {path.name: path.stat().st_mtime_ns for path in synth.videos.iterdir()}
    json_before = synth.annotations.stat().st_mtime_ns
    again = write_synth_dataset(synth.root, clips=3, **SMALL)
    assert again == synth
    assert {path.name: path.stat().st_mtime_ns for path in synth.videos.iterdir()} == before
    assert synth.annotations.stat().st_mtime_ns == json_before


def test_changed_parameters_rerender(tmp_path):
    paths = write_synth_dataset(tmp_path, clips=1, queries_per_clip=1, **SMALL)
    (video,) = paths.videos.iterdir()
    write_synth_dataset(tmp_path, clips=1, queries_per_clip=1, **{**SMALL, "fps": 5})
    assert len(decord.VideoReader(str(video))) == 15


def test_full_scale_videos_hold_clips_at_their_offsets(tmp_path):
    paths = write_synth_dataset(tmp_path, clips=3, full_scale=True, **SMALL)
    data = load_nlq(paths.annotations, paths.videos, paths.metadata)
    assert len(data.queries) == 9 and data.skipped == []
    assert len(list(paths.videos.iterdir())) == 2  # two clips per video
    for clip in data.clips.values():
        assert clip.video_path.name == f"{clip.video_uid}.mp4"
        reader = decord.VideoReader(str(clip.video_path))
        first = round(clip.offset_sec * 10)
        assert read_frame_index(reader[first].asnumpy()) == first
    assert sorted(clip.offset_sec for clip in data.clips.values()) == [5.0, 5.0, 13.0]


def test_queries_per_clip_tuple_gives_skewed_counts(tmp_path):
    paths = write_synth_dataset(tmp_path, clips=3, queries_per_clip=(5, 1, 0), **SMALL)
    data = load_nlq(paths.annotations, paths.videos)
    per_clip = [sum(q.clip_uid == uid for q in data.queries) for uid in data.clips]
    assert per_clip == [5, 1]


def test_queries_per_clip_tuple_must_match_clip_count(tmp_path):
    with pytest.raises(DatasetError, match="one count per clip"):
        write_synth_dataset(tmp_path, clips=2, queries_per_clip=(1, 2, 3), **SMALL)


def test_quirks_produce_every_skip_reason_the_demo_reports(tmp_path):
    paths = write_synth_dataset(tmp_path, clips=2, quirks=True, **SMALL)
    data = load_nlq(paths.annotations, paths.videos, paths.metadata)
    assert data.skipped_counts() == {
        "inverted_window": 1,
        "missing_video": 2,
        "no_query_text": 1,
        "window_outside_clip": 1,
    }
    assert len(data.queries) == 7  # 2 x 3 plus the "Query Text:"-prefixed one
    prefixed = [q for q in data.queries if q.query_idx == 4]
    assert len(prefixed) == 1 and not prefixed[0].text.startswith("Query Text")


def test_same_seed_gives_the_same_uids_with_or_without_quirks(tmp_path):
    plain = write_synth_dataset(tmp_path / "a", clips=2, queries_per_clip=1, **SMALL)
    quirky = write_synth_dataset(tmp_path / "b", clips=2, queries_per_clip=1, quirks=True, **SMALL)
    plain_clips = set(load_nlq(plain.annotations, plain.videos).clips)
    assert plain_clips == set(load_nlq(quirky.annotations, quirky.videos).clips)
