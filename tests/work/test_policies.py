"""Pure policies, alone: GPU groups, restart backoff, batch sizes, the workers' waits."""

from __future__ import annotations

import pytest

from egoqa.errors import ConfigError
from egoqa.work import batching, waits
from egoqa.work.supervisor import backoff, gpu_groups, parse_gpus


@pytest.mark.parametrize(
    "spec, ids",
    [
        ("0-7", [str(i) for i in range(8)]),
        ("0,2,4", ["0", "2", "4"]),
        ("1-2,6", ["1", "2", "6"]),
        ("3", ["3"]),
    ],
)
def test_gpu_lists_and_ranges_parse(spec, ids):
    assert parse_gpus(spec) == ids


@pytest.mark.parametrize("spec", ["a-b", "", "0-", "-1"])
def test_bad_gpu_lists_say_how_to_write_them(spec):
    with pytest.raises(ConfigError, match="GPU"):
        parse_gpus(spec)


def test_gpus_split_into_groups_or_say_why_not():
    assert gpu_groups(parse_gpus("0-7"), 4) == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    with pytest.raises(ConfigError, match="groups of 3"):
        gpu_groups(parse_gpus("0-7"), 3)


def test_restart_backoff_doubles_up_to_a_minute():
    assert [backoff(n) for n in (1, 2, 3, 4, 10)] == [1, 2, 4, 8, 60]


def test_visual_tokens_match_qwen_geometry():
    # 8 frames at 448 px: 4 temporal groups x 16 x 16 merged patches
    assert batching.visual_tokens(8, 448) == 4 * 16 * 16
    assert batching.visual_tokens(7, 112) == 4 * 4 * 4


FRAMES_448 = {
    "kind": "frames",
    "sampler": {"kind": "uniform", "frames": 8, "fps": 1.0, "max_edge": 448, "max_frames": 768},
}


def test_auto_batch_size_is_free_memory_over_per_sample_bounded_by_what_was_learned():
    gib = 2**30
    per = batching.per_sample_bytes(
        FRAMES_448, 1, per_sample_gb=2.0, gb_per_1k_visual_tokens=1, base_gb=0
    )
    assert per == 2 * gib
    assert batching.auto_batch_size(20 * gib, per, 64) == 10
    assert batching.auto_batch_size(20 * gib, per, 4) == 4
    assert batching.auto_batch_size(gib, per, 64) == 1
    assert batching.auto_batch_size(20 * gib, per, 64, learned=(3, 4)) == 3
    assert batching.auto_batch_size(None, per, 16, learned=(None, 9)) == 8


def test_per_sample_estimate_grows_with_visual_tokens_and_samples():
    media = FRAMES_448
    one = batching.per_sample_bytes(
        media, 1, per_sample_gb=None, gb_per_1k_visual_tokens=1.5, base_gb=0.5
    )
    assert one == pytest.approx((0.5 + 1.5 * 1024 / 1000) * 2**30)
    assert (
        batching.per_sample_bytes(
            media, 5, per_sample_gb=None, gb_per_1k_visual_tokens=1.5, base_gb=0.5
        )
        == 5 * one
    )


def test_a_text_turn_is_sized_by_its_own_tokens_not_by_the_frames_turns_figure():
    mib = 2**20
    policy = {"per_sample_gb": 12.0, "gb_per_1k_visual_tokens": 1.5, "base_gb": 0.5}
    frames = batching.per_sample_bytes(FRAMES_448, 1, **policy)
    short = batching.per_sample_bytes(
        {"kind": "none"}, 1, **policy, text_tokens=1000, bytes_per_token=200_000
    )
    long = batching.per_sample_bytes(
        {"kind": "none"}, 5, **policy, text_tokens=3000, bytes_per_token=200_000
    )
    assert frames == 12 * 1024 * mib  # the configured figure is for frames turns
    assert short == 512 * mib + 1000 * 200_000  # base + its tokens' memory
    assert long == 5 * (512 * mib + 3000 * 200_000)  # longer prompts, more samples: more
    assert batching.auto_batch_size(60 * 1024 * mib, frames, 64) == 5
    assert batching.auto_batch_size(60 * 1024 * mib, short, 128) == 87  # 60 GiB / 702.7 MiB
    assert batching.text_tokens(prompt_chars=300, max_new_tokens=64) == 100 + 64


def test_a_batch_is_cut_by_prompt_length_only_where_padding_costs_more_than_a_pass():
    lengths, rows = [100, 5000, 120, 4800], [1, 1, 1, 1]
    # a pass of 10 new tokens at 50 tokens a step costs 500: padding 3 rows to 5000 costs more
    assert batching.length_groups(lengths, rows, new_tokens=10, step_tokens=50) == [[0, 2], [3, 1]]
    # 768 new tokens: one more pass costs 384,000 tokens' worth, far more than the padding
    assert batching.length_groups(lengths, rows, new_tokens=768, step_tokens=500) == [[0, 2, 3, 1]]
    # uniform lengths never split, however cheap a pass
    assert batching.length_groups([300] * 4, rows, new_tokens=1, step_tokens=1) == [[0, 1, 2, 3]]
    assert batching.padding([100, 5000, 120, 4800], rows) == (10020, 4 * 5000 - 10020)
    assert batching.padding([10, 20], [5, 1]) == (70, 50)  # samples count as rows


def test_split_halves():
    assert batching.split([1, 2, 3, 4, 5]) == ([1, 2], [3, 4, 5])


WAITS = {
    "EGOQA_HEARTBEAT_S": 5.0,
    "EGOQA_IDLE_MAX_S": 2.0,
    "EGOQA_REAP_S": 5.0,
    "EGOQA_WAIT_NOTE_S": 5.0,
    "EGOQA_SUPERVISOR_TICK_S": 1.0,
}


def _waits_read() -> dict[str, float]:
    """What the worker, its heartbeat and the supervisor take for each wait."""
    from egoqa.work.heartbeat import Heartbeat
    from egoqa.work.supervisor import Supervisor
    from egoqa.work.worker import WorkerOptions

    options = WorkerOptions()
    return {
        "EGOQA_HEARTBEAT_S": Heartbeat(None, "w", lease_s=900.0).period_s,
        "EGOQA_IDLE_MAX_S": options.idle_max_s,
        "EGOQA_REAP_S": options.reap_every_s,
        "EGOQA_WAIT_NOTE_S": options.wait_note_s,
        "EGOQA_SUPERVISOR_TICK_S": Supervisor([], []).tick_s,
    }


def test_the_waits_keep_their_defaults_unless_the_environment_sets_them(monkeypatch):
    for name in WAITS:
        monkeypatch.delenv(name, raising=False)
    assert _waits_read() == WAITS
    for name in WAITS:
        monkeypatch.setenv(name, "0.25")
    assert _waits_read() == dict.fromkeys(WAITS, 0.25)


def test_a_heartbeat_comes_every_third_of_the_lease_when_that_is_sooner(monkeypatch):
    from egoqa.work.heartbeat import Heartbeat

    monkeypatch.setenv("EGOQA_HEARTBEAT_S", "2")
    assert Heartbeat(None, "w", lease_s=3.0).period_s == 1.0
    assert Heartbeat(None, "w", lease_s=30.0).period_s == 2.0


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan"])
def test_a_wait_that_is_not_a_positive_number_of_seconds_is_refused_naming_it(monkeypatch, value):
    monkeypatch.setenv("EGOQA_IDLE_MAX_S", value)
    with pytest.raises(ConfigError, match=r"\$EGOQA_IDLE_MAX_S=.* not a number of seconds"):
        waits.idle_max_s()


def test_work_refuses_a_bad_wait_in_one_line_before_it_opens_the_database(tmp_path):
    from inproc import InProcess

    bad = {"EGOQA_SUPERVISOR_TICK_S": "-1"}
    out = InProcess(tmp_path / "egoqa.db", tmp_path)("work", "--workers", "2", env=bad, check=False)
    assert out.returncode == 1 and out.stderr.startswith("error: $EGOQA_SUPERVISOR_TICK_S='-1'")
    assert len(out.stderr.splitlines()) == 1  # not "no database at ...": it looked first
