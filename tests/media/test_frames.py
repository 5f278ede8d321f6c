"""Samplers, the decord frame decoder and its caches, on clips rendered with their frame index."""

from __future__ import annotations

import os

import numpy as np
import pytest

from egoqa.dev.synth import read_frame_index, render_clip
from egoqa.errors import ConfigError, VideoError
from egoqa.media.frames import (
    FrameDecoder,
    resized_size,
    sample_timestamps,
    sampling_fps,
    segment_timestamps,
    stamp_frames,
)
from egoqa.plan.config import SamplerConfig, sampler_from

FPS = 10


@pytest.fixture(scope="module")
def full_video(tmp_path_factory):
    """A 20 s 'full video' at 10 fps, 320x240; clips are read from it at an offset."""
    return render_clip(tmp_path_factory.mktemp("videos") / "full.mp4", 20, fps=FPS)


# --- samplers ----------------------------------------------------------------------------------


def test_uniform_timestamps_include_both_ends_by_default():
    ts = sample_timestamps(SamplerConfig(frames=8), 28.0)
    assert ts == [4.0 * i for i in range(8)]  # the intervals between them cover the whole clip


def test_uniform_timestamps_are_bin_centres_without_endpoints():
    spec = SamplerConfig(frames=8, endpoints=False)
    assert sample_timestamps(spec, 24.0) == [1.5 + 3 * i for i in range(8)]


def test_uniform_odd_count_is_padded_with_the_last_timestamp():
    ts = sample_timestamps(SamplerConfig(frames=5, endpoints=False), 10.0)
    assert ts == [1.0, 3.0, 5.0, 7.0, 9.0, 9.0]
    assert sample_timestamps(SamplerConfig(frames=5), 10.0) == [0.0, 2.5, 5.0, 7.5, 10.0, 10.0]
    assert sample_timestamps(SamplerConfig(frames=1), 10.0) == [5.0, 5.0]


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(10.2, 10), (9.7, 10), (9.4, 10), (8.6, 10), (0.2, 2)],
)
def test_dense_timestamps_are_even_and_inside_the_clip(duration, expected):
    ts = sample_timestamps(SamplerConfig(kind="dense", fps=1.0), duration)
    assert len(ts) == expected
    assert len(ts) % 2 == 0
    assert all(0 <= t < duration for t in ts)
    assert ts == sorted(ts)


def test_dense_at_two_fps_steps_half_a_second():
    ts = sample_timestamps(SamplerConfig(kind="dense", fps=2.0), 3.0)
    assert ts == [0.25, 0.75, 1.25, 1.75, 2.25, 2.75]


def test_dense_sampling_is_capped_and_thinned_evenly():
    ts = sample_timestamps(SamplerConfig(kind="dense", fps=1.0, max_frames=20), 100.0)
    assert len(ts) == 20
    assert ts[0] == 2.5 and ts[-1] == 97.5
    gaps = np.diff(ts)
    assert gaps.min() == gaps.max() == 5.0


def test_segments_share_uniform_frames_by_length():
    ts = segment_timestamps(SamplerConfig(frames=4, endpoints=False), [(10, 16), (0, 2)], 30.0)
    assert ts == [1.0, 11.0, 13.0, 15.0]
    ends = segment_timestamps(SamplerConfig(frames=5), [(10, 16), (0, 2)], 30.0)
    assert ends == [0.0, 10.0, 12.0, 14.0, 16.0, 16.0]  # the union is 8 s: a frame every 2 s


def test_segments_dense_sampling_stays_inside_the_segments():
    ts = segment_timestamps(SamplerConfig(kind="dense", fps=1.0), [(0, 2), (10, 16)], 30.0)
    assert ts == [0.5, 1.5, 10.5, 11.5, 12.5, 13.5, 14.5, 15.5]


def test_overlapping_and_out_of_range_segments_are_merged_and_clipped():
    spec = SamplerConfig(frames=2, endpoints=False)
    ts = segment_timestamps(spec, [(5, 12), (8, 40), (-3, -1)], 20.0)
    assert ts == [8.75, 16.25]


def test_no_usable_segment_falls_back_to_the_whole_clip():
    spec = SamplerConfig(frames=4)
    assert segment_timestamps(spec, [], 8.0) == sample_timestamps(spec, 8.0)
    assert segment_timestamps(spec, [(3, 3)], 8.0) == sample_timestamps(spec, 8.0)


def test_sampling_fps_is_frames_per_clip_second():
    centres = sample_timestamps(SamplerConfig(frames=8, endpoints=False), 24.0)
    assert sampling_fps(centres, 24.0) == pytest.approx(1 / 3)
    ends = sample_timestamps(SamplerConfig(frames=8), 28.0)
    assert sampling_fps(ends, 28.0) == pytest.approx(1 / 4)
    dense = sample_timestamps(SamplerConfig(kind="dense", fps=2.0), 30.0)
    assert sampling_fps(dense, 30.0) == pytest.approx(2.0)
    assert sampling_fps([4.0, 4.0], 8.0) == pytest.approx(0.25)


def test_shots_are_detected_not_computed_from_a_duration():
    with pytest.raises(ConfigError, match="detected shots"):
        sample_timestamps(SamplerConfig(kind="shots"), 10.0)
    with pytest.raises(ConfigError, match="uniformly or densely"):
        segment_timestamps(SamplerConfig(kind="shots"), [(1, 2)], 10.0)
    with pytest.raises(ConfigError, match="detector"):
        sampler_from({"kind": "shots", "detector": "histogram"})


def test_invalid_sampler_and_duration_are_reported():
    with pytest.raises(ConfigError, match="kind"):
        sampler_from({"kind": "random"})
    with pytest.raises(VideoError) as info:
        sample_timestamps(SamplerConfig(), 0.0)
    assert info.value.kind == "clip_empty"


# --- decoding ----------------------------------------------------------------------------------


def test_frames_at_an_offset_are_the_expected_frames(full_video):
    spec = SamplerConfig(frames=8, max_edge=224)
    offset, duration = 5.0, 10.0
    ts = sample_timestamps(spec, duration)
    frames = FrameDecoder().frames(full_video, offset, ts, spec.max_edge, duration)
    assert [read_frame_index(f) for f in frames.array] == [round((offset + t) * FPS) for t in ts]
    assert frames.timestamps == ts
    assert frames.fps == pytest.approx(0.7)  # 8 frames from 0 s to 10 s: 7 gaps of 10/7 s
    assert frames.array.dtype == np.uint8


def test_frames_are_resized_to_the_max_edge_with_even_sides(full_video):
    decoder = FrameDecoder()
    small = decoder.frames(full_video, 0.0, [1.0, 2.0], 112, 20.0)
    assert small.array.shape == (2, 84, 112, 3)
    native = decoder.frames(full_video, 0.0, [1.0, 2.0], 1000, 20.0)
    assert native.array.shape == (2, 240, 320, 3)
    assert resized_size(1920, 1080, 448) == (448, 252)
    assert resized_size(101, 75, 50) == (50, 38)


def test_same_key_is_served_from_memory_without_decoding(full_video):
    decoder = FrameDecoder()
    first = decoder.frames(full_video, 1.0, [0.5, 1.5], 112, 4.0)
    second = decoder.frames(full_video, 1.0, [0.5, 1.5], 112, 4.0)
    assert decoder.decodes == 1 and decoder.hits == 1
    assert second is first
    decoder.frames(full_video, 1.0, [0.5, 1.5], 224, 4.0)  # another size is another key
    assert decoder.decodes == 2


def test_least_recently_used_entry_is_evicted(full_video):
    decoder = FrameDecoder(cache_items=2)
    for t in (0.5, 1.5, 0.5, 2.5):  # 0.5 is refreshed, so 1.5 is the one evicted
        decoder.frames(full_video, 0.0, [t, t], 112, 4.0)
    assert decoder.decodes == 3
    decoder.frames(full_video, 0.0, [0.5, 0.5], 112, 4.0)
    assert decoder.decodes == 3
    decoder.frames(full_video, 0.0, [1.5, 1.5], 112, 4.0)
    assert decoder.decodes == 4


def test_changed_file_is_decoded_again(full_video, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(full_video.read_bytes())
    decoder = FrameDecoder()
    decoder.frames(clip, 0.0, [1.0, 2.0], 112, 4.0)
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decoder.frames(clip, 0.0, [1.0, 2.0], 112, 4.0)
    assert decoder.decodes == 2


def test_disk_cache_round_trip(full_video, tmp_path):
    cache = tmp_path / "frames"
    first = FrameDecoder(disk_cache=cache).frames(full_video, 2.0, [1.0, 3.0], 112, 4.0)
    fresh = FrameDecoder(disk_cache=cache)
    again = fresh.frames(full_video, 2.0, [1.0, 3.0], 112, 4.0)
    assert fresh.decodes == 0 and fresh.hits == 1
    np.testing.assert_array_equal(again.array, first.array)
    assert again.timestamps == first.timestamps and again.fps == first.fps
    assert [p.name.endswith(".npz") and not p.name.startswith(".") for p in cache.iterdir()] == [
        True
    ]


def test_damaged_disk_cache_entry_is_a_miss(full_video, tmp_path):
    cache = tmp_path / "frames"
    FrameDecoder(disk_cache=cache).frames(full_video, 0.0, [1.0, 3.0], 112, 4.0)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not an npz")
    decoder = FrameDecoder(disk_cache=cache)
    decoder.frames(full_video, 0.0, [1.0, 3.0], 112, 4.0)
    assert decoder.decodes == 1


# --- errors ------------------------------------------------------------------------------------


def _error_kind(path, offset=0.0, timestamps=(1.0, 2.0), duration=4.0):
    with pytest.raises(VideoError) as info:
        FrameDecoder().frames(path, offset, list(timestamps), 112, duration)
    assert str(path) in str(info.value)
    return info.value.kind


def test_missing_file_is_video_missing(tmp_path):
    assert _error_kind(tmp_path / "nope.mp4") == "video_missing"


def test_random_bytes_are_video_unreadable(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert _error_kind(path) == "video_unreadable"


def test_zero_length_file_is_video_unreadable(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    assert _error_kind(path) == "video_unreadable"


def test_timestamps_past_the_end_are_video_truncated(full_video):
    ts = sample_timestamps(SamplerConfig(frames=8), 30.0)
    assert _error_kind(full_video, offset=0.0, timestamps=ts, duration=30.0) == "video_truncated"
    assert _error_kind(full_video, offset=18.0, timestamps=ts[:2], duration=30.0) == (
        "video_truncated"
    )


def test_prefetch_decodes_distinct_sets_in_parallel_and_frames_then_hit_the_cache(
    full_video, tmp_path
):
    other = render_clip(tmp_path / "other.mp4", 8, fps=FPS, seed=3)
    missing = tmp_path / "missing.mp4"
    ts_a, ts_b = [0.5, 1.5, 2.5, 3.5], [4.5, 5.5]
    decoder = FrameDecoder()
    wanted = [
        (full_video, 0.0, ts_a, 112, 20.0),
        (full_video, 0.0, ts_a, 112, 20.0),
        (other, 0.0, ts_b, 112, 8.0),
        (missing, 0.0, ts_b, 112, 8.0),
    ]
    assert decoder.prefetch(wanted, workers=2) == 2
    assert decoder.decodes == 2
    sequential = FrameDecoder()
    for path, offset, ts, edge, duration in wanted[:3]:
        got = decoder.frames(path, offset, ts, edge, duration)
        want = sequential.frames(path, offset, ts, edge, duration)
        assert np.array_equal(got.array, want.array) and got.fps == want.fps
    assert decoder.decodes == 2 and decoder.hits == 3
    with pytest.raises(VideoError) as err:  # errors surface from frames(), with their kind
        decoder.frames(missing, 0.0, ts_b, 112, 8.0)
    assert err.value.kind == "video_missing"


def test_stamped_frames_carry_their_label_and_leave_the_originals_alone(full_video):
    frames = FrameDecoder().frames(full_video, 0.0, [1.0, 2.0], 224, 20.0)
    before = frames.array.copy()
    stamped = stamp_frames(frames, ["0s - 6s", "6s - 13s"])
    assert np.array_equal(frames.array, before)  # the decoder's cached frames are not drawn on
    height = frames.array.shape[1]
    corner = stamped.array[:, height - height // 6 :, : frames.array.shape[2] // 3]
    assert (corner.max(axis=-1) > 200).any(axis=(1, 2)).all()  # white text ...
    assert (corner.max(axis=-1) < 30).mean() > 0.3  # ... on a black box
    assert [read_frame_index(f) for f in stamped.array] == [10, 20]  # the index band is intact
    assert stamped.timestamps == frames.timestamps and stamped.fps == frames.fps


def test_a_uniform_sampler_stored_before_endpoints_existed_keeps_its_bin_centres():
    from egoqa.media.rendering import media_timestamps

    legacy = {"kind": "uniform", "frames": 8, "fps": 1.0, "max_edge": 448, "max_frames": 768}
    spec = {"media": {"kind": "frames", "sampler": legacy}}
    assert media_timestamps(spec, 24.0, {}) == [1.5 + 3 * i for i in range(8)]
    current = {"media": {"kind": "frames", "sampler": {**legacy, "endpoints": True}}}
    assert media_timestamps(current, 28.0, {}) == [4.0 * i for i in range(8)]
