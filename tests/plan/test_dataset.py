"""The NLQ loader reads v1, v2 and test_unannotated files unchanged and reports what it skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egoqa.errors import DatasetError
from egoqa.plan.dataset import Clip, Query, Skipped, clean_query_text, load_nlq, query_type

WHERE = "Objects: Where is object X?"


def _lq(start, end, text="Where is the knife?", **fields) -> dict:
    """A language query in the real shape; `None` for start/end leaves the key out."""
    entry = {"template": WHERE, "query": text, "slot_x": "knife", "verb_x": "[verb_not_applicable]"}
    if start is not None:
        entry["clip_start_sec"] = start
    if end is not None:
        entry["clip_end_sec"] = end
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not None}


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _videos(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.mp4").write_bytes(b"\x00")
    return folder


V2_QUERIES = [
    _lq(5.0, 9.5, answer="on the table", raw_tags=[WHERE, "knife"]),
    _lq(1.0, 2.0, text=None),
    _lq(
        20.0,
        24.0,
        text="Query Text:What  color is the\tcup ?",
        slot_x="X Text (Optional):cup",
        verb_x="Verb X (Optional): hold",
    ),
    _lq(8.0, 4.0),
    _lq(110.0, 125.0),
    _lq(119.0, 120.4),
    _lq(-1.0, 2.0),
    _lq(3.0, None),
    _lq(1.0, 2.0, text="   "),
]


def _v2_file(tmp_path: Path) -> Path:
    clip_a = {
        "clip_uid": "clip-a",
        "video_start_sec": 10.0,
        "video_end_sec": 130.0,
        "clip_start_sec": 0.0,
        "clip_end_sec": 120.0,
        "annotations": [
            {"annotation_uid": "ann-a1", "language_queries": V2_QUERIES},
            {"language_queries": [_lq(1.0, 2.0)]},
        ],
    }
    clip_lost = {
        "clip_uid": "clip-lost",
        "video_start_sec": 200.0,
        "video_end_sec": 300.0,
        "clip_start_sec": 0.0,
        "clip_end_sec": 100.0,
        "annotations": [{"annotation_uid": "ann-l", "language_queries": [_lq(1.0, 2.0)]}],
    }
    clip_full = {
        "clip_uid": "clip-full",
        "video_start_sec": 30.0,
        "video_end_sec": 90.0,
        "clip_start_sec": 0.0,
        "clip_end_sec": 60.0,
        "annotations": [{"annotation_uid": "ann-f", "language_queries": [_lq(1.0, 3.0)]}],
    }
    no_uid = {
        "video_start_sec": 0.0,
        "video_end_sec": 10.0,
        "annotations": [{"annotation_uid": "ann-n", "language_queries": [_lq(1.0, 2.0)]}],
    }
    data = {
        "version": "v2",
        "date": "2023-01-01",
        "description": "hand-made",
        "metadata": {"note": "v2 val uses metadata instead of manifest"},
        "videos": [
            {"video_uid": "vid-a", "split": "val", "clips": [clip_a, clip_lost]},
            {"video_uid": "vid-full", "split": "val", "clips": [clip_full]},
            {"video_uid": "vid-n", "split": "val", "clips": [no_uid]},
        ],
    }
    return _write(tmp_path / "v2" / "nlq_val.json", data)


@pytest.fixture
def v2(tmp_path):
    return load_nlq(_v2_file(tmp_path), _videos(tmp_path, "clip-a", "vid-full"))


def test_v2_usable_queries_are_cleaned_and_keep_clip_time(v2, tmp_path):
    assert [(q.clip_uid, q.annotation_uid, q.query_idx) for q in v2.queries] == [
        ("clip-a", "ann-a1", 0),
        ("clip-a", "ann-a1", 2),
        ("clip-a", "ann-a1", 5),
        ("clip-full", "ann-f", 0),
    ]
    assert v2.queries[0] == Query(
        "clip-a",
        "ann-a1",
        0,
        "Where is the knife?",
        WHERE,
        5.0,
        9.5,
        {
            "slot_x": "knife",
            "verb_x": "[verb_not_applicable]",
            "raw_tags": [WHERE, "knife"],
            "answer": "on the table",
        },
    )
    prefixed = v2.queries[1]
    assert prefixed.text == "What color is the cup ?"
    assert prefixed.extra == {
        "slot_x": "cup",
        "verb_x": "hold",
        "query_raw": "Query Text:What  color is the\tcup ?",  # as written, for --scoring original
    }
    assert (prefixed.gt_start, prefixed.gt_end) == (20.0, 24.0)
    assert v2.version == "v2"


def test_v2_skipped_records_name_reason_and_query_identity(v2):
    got = [(s.clip_uid, s.annotation_uid, s.query_idx, s.reason) for s in v2.skipped]
    assert got == [
        ("clip-a", "ann-a1", 1, "no_query_text"),
        ("clip-a", "ann-a1", 3, "inverted_window"),
        ("clip-a", "ann-a1", 4, "window_outside_clip"),
        ("clip-a", "ann-a1", 6, "window_outside_clip"),
        ("clip-a", "ann-a1", 7, "missing_fields"),
        ("clip-a", "ann-a1", 8, "no_query_text"),
        ("clip-a", None, 0, "missing_fields"),
        ("clip-lost", "ann-l", 0, "missing_video"),
        (None, "ann-n", 0, "missing_fields"),
    ]
    assert v2.skipped_counts() == {
        "inverted_window": 1,
        "missing_fields": 3,
        "missing_video": 1,
        "no_query_text": 2,
        "window_outside_clip": 2,
    }
    assert v2.skipped[1].detail == "answer window 8.00 s .. 4.00 s ends before it starts"
    assert "clip-lost.mp4" in v2.skipped[7].detail and "vid-a.mp4" in v2.skipped[7].detail


def test_clip_file_wins_and_full_video_gets_the_clip_offset(v2, tmp_path):
    videos = tmp_path / "videos"
    assert v2.clips == {
        "clip-a": Clip("clip-a", "vid-a", videos / "clip-a.mp4", 0.0, 120.0, "val"),
        "clip-full": Clip("clip-full", "vid-full", videos / "vid-full.mp4", 30.0, 60.0, "val"),
    }
    full_query = v2.queries[-1]
    assert (full_query.gt_start, full_query.gt_end) == (1.0, 3.0)  # still clip time


def _v1_file(tmp_path: Path) -> Path:
    early_clip = {
        "clip_uid": "v1-clip",
        "video_start_sec": 100.0,
        "video_end_sec": 580.0,
        "video_start_frame": 3000,
        "video_end_frame": 17400,
        "annotations": [
            {
                "annotation_uid": "v1-ann",
                "language_queries": [_lq(12.0, 12.0), _lq(470.0, 480.3), _lq(470.0, 481.0)],
            }
        ],
    }
    data = {
        "version": "v1",
        "manifest": "s3://example/manifest.csv",
        "videos": [{"video_uid": "v1-vid", "split": "val", "clips": [early_clip]}],
    }
    return _write(tmp_path / "v1" / "nlq_val.json", data)


def test_v1_early_clip_length_comes_from_video_times_and_zero_length_windows_are_kept(tmp_path):
    data = load_nlq(_v1_file(tmp_path), _videos(tmp_path, "v1-clip"))
    assert data.clips["v1-clip"].duration_sec == 480.0
    assert data.clips["v1-clip"].offset_sec == 0.0
    assert [(q.gt_start, q.gt_end) for q in data.queries] == [(12.0, 12.0), (470.0, 480.3)]
    assert [(s.query_idx, s.reason) for s in data.skipped] == [(2, "window_outside_clip")]
    assert data.version == "v1"


def test_v1_early_clip_inside_full_video_uses_video_start_as_offset(tmp_path):
    data = load_nlq(_v1_file(tmp_path), _videos(tmp_path, "v1-vid"))
    clip = data.clips["v1-clip"]
    assert (clip.video_path.name, clip.offset_sec, clip.duration_sec) == (
        "v1-vid.mp4",
        100.0,
        480.0,
    )


def test_test_unannotated_queries_have_no_ground_truth(tmp_path):
    clip = {
        "clip_uid": "t-clip",
        "video_start_sec": 0.0,
        "video_end_sec": 480.0,
        "clip_start_sec": 0.0,
        "clip_end_sec": 480.0,
        "annotations": [
            {
                "annotation_uid": "t-ann",
                "language_queries": [
                    {"query": "Where is the pan?"},
                    {},
                    {"query": "Query Text: How many cups did I wash?"},
                ],
            }
        ],
    }
    path = _write(
        tmp_path / "nlq_test_unannotated.json",
        {"version": "v2", "videos": [{"video_uid": "t-vid", "split": "test", "clips": [clip]}]},
    )
    data = load_nlq(path, _videos(tmp_path, "t-clip"))
    assert data.queries == [
        Query("t-clip", "t-ann", 0, "Where is the pan?", None, None, None, {}),
        Query(
            "t-clip",
            *("t-ann", 2, "How many cups did I wash?", None, None, None),
            {"query_raw": "Query Text: How many cups did I wash?"},
        ),
    ]
    assert [(s.query_idx, s.reason) for s in data.skipped] == [(1, "no_query_text")]


def test_limit_takes_the_first_usable_queries_in_file_order(tmp_path):
    videos = _videos(tmp_path, "clip-a", "vid-full")
    data = load_nlq(_v2_file(tmp_path), videos, limit=2)
    assert [q.query_idx for q in data.queries] == [0, 2]
    assert list(data.clips) == ["clip-a"]
    assert [s.reason for s in data.skipped] == ["no_query_text"]
    assert load_nlq(_v2_file(tmp_path), videos, limit=0).queries == []


def test_negative_limit_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="limit -1 is negative"):
        load_nlq(_v2_file(tmp_path), _videos(tmp_path), limit=-1)


def _metadata(tmp_path: Path, **durations: float) -> Path:
    videos = [
        {"video_uid": uid.replace("_", "-"), "duration_sec": sec, "video_metadata": {"fps": 30.0}}
        for uid, sec in durations.items()
    ]
    return _write(tmp_path / "ego4d.json", {"version": "v2", "videos": videos})


def test_metadata_completes_a_missing_clip_length(tmp_path):
    clip = {
        "clip_uid": "c",
        "video_start_sec": 20.0,
        "annotations": [{"annotation_uid": "a", "language_queries": [_lq(1.0, 2.0)]}],
    }
    path = _write(tmp_path / "nlq_val.json", {"videos": [{"video_uid": "vid-m", "clips": [clip]}]})
    videos = _videos(tmp_path, "c")
    assert load_nlq(path, videos).skipped_counts() == {"missing_fields": 1}
    data = load_nlq(path, videos, metadata=_metadata(tmp_path, vid_m=100.0))
    assert data.clips["c"].duration_sec == 80.0
    assert data.version is None


def test_clip_longer_than_its_video_in_metadata_is_skipped(tmp_path):
    data = load_nlq(
        _v2_file(tmp_path),
        _videos(tmp_path, "clip-a", "vid-full"),
        metadata=_metadata(tmp_path, vid_a=1000.0, vid_full=60.0),
    )
    assert [q.clip_uid for q in data.queries] == ["clip-a", "clip-a", "clip-a"]
    (too_long,) = [s for s in data.skipped if s.clip_uid == "clip-full"]
    assert too_long.reason == "bad_record"
    assert "ends at 90.00 s, after its video vid-full ends (60.00 s" in too_long.detail


def test_duplicate_query_identity_is_skipped(tmp_path):
    clip = {
        "clip_uid": "c",
        "clip_start_sec": 0.0,
        "clip_end_sec": 10.0,
        "annotations": [{"annotation_uid": "a", "language_queries": [_lq(1.0, 2.0)]}] * 2,
    }
    path = _write(tmp_path / "nlq_val.json", {"videos": [{"video_uid": "v", "clips": [clip]}]})
    data = load_nlq(path, _videos(tmp_path, "c"))
    assert len(data.queries) == 1
    assert data.skipped == [Skipped("c", "a", 0, "bad_record", "duplicate query c/a/0")]


def test_malformed_entries_are_skipped_not_fatal(tmp_path):
    clip = {
        "clip_uid": "c",
        "clip_start_sec": 0.0,
        "clip_end_sec": 10.0,
        "annotations": [{"annotation_uid": "a", "language_queries": ["text", _lq(1.0, 2.0)]}, 7],
    }
    videos = [{"video_uid": "v", "clips": [clip, "not a clip"]}, None]
    path = _write(tmp_path / "nlq_val.json", {"videos": videos})
    data = load_nlq(path, _videos(tmp_path, "c"))
    assert [q.query_idx for q in data.queries] == [1]
    assert [(s.clip_uid, s.query_idx, s.reason) for s in data.skipped] == [
        ("c", 0, "bad_record"),
        ("c", None, "bad_record"),
        (None, None, "bad_record"),
        (None, None, "bad_record"),
    ]


# --- whole-file problems -----------------------------------------------------------------------


def test_missing_annotation_file_says_where_to_look(tmp_path):
    with pytest.raises(DatasetError, match=r"nlq_val\.json does not exist.*nlq_\*\.json"):
        load_nlq(tmp_path / "nlq_val.json", _videos(tmp_path))


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "nlq_val.json"
    path.write_text('{"videos": [\n  {"video_uid": }\n]}', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 2, column 17"):
        load_nlq(path, _videos(tmp_path))


@pytest.mark.parametrize("data", [[], {"clips": []}, {"videos": {"a": 1}}])
def test_wrong_shape_asks_for_an_nlq_file(tmp_path, data):
    path = _write(tmp_path / "nlq_val.json", data)
    with pytest.raises(DatasetError, match="no top-level 'videos' list; pass an Ego4D nlq_"):
        load_nlq(path, _videos(tmp_path))


def test_missing_videos_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="videos folder .* does not exist"):
        load_nlq(_v2_file(tmp_path), tmp_path / "nowhere")


def test_missing_metadata_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match=r"metadata file .*ego4d\.json does not exist"):
        load_nlq(_v2_file(tmp_path), _videos(tmp_path), metadata=tmp_path / "ego4d.json")


def test_errors_are_one_line(tmp_path):
    path = tmp_path / "nlq_val.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_nlq(path, _videos(tmp_path))
    assert "\n" not in str(caught.value)


# --- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Query Text:What color is the cup?", "What color is the cup?"),
        ("X Text (Optional):  red   cup ", "red cup"),
        ("Verb X (Optional): hold", "hold"),
        ("Slot Y Text:table", "table"),
        ("Query Text: X Text (Optional): nested", "nested"),
        ("Where is the text: on the sign?", "Where is the text: on the sign?"),
        ("What text is on the sign?", "What text is on the sign?"),
        ("Where is the cup: in the sink?", "Where is the cup: in the sink?"),
        ("", ""),
    ],
)
def test_clean_query_text_strips_tool_labels_only(raw, clean):
    assert clean_query_text(raw) == clean


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Where is the knife?", "where"),
        ("What did I put in the bowl?", "what"),
        ("How many cups did I see?", "how"),
        ("In what location did I see the bag?", "in"),
        ("Who did I talk to in the kitchen?", "who"),
        ("Did I leave the fridge open?", "did"),
        ("Where's my phone?", "where"),
        ("Query Text:When did I talk to the cashier?", "when"),
        ("  ?! ", ""),
        ("", ""),
    ],
)
def test_query_type_is_the_lowercased_first_word(text, kind):
    assert query_type(text) == kind
