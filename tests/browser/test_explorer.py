"""The run explorer (`report --html`): every query as a card with its status, failures and
pending work shown as such, thumbnails that are the frames each turn saw (decoded, and checked by
the frame index burned into them), a prior beside a model run, and the page in a real browser."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from chromium import browser, open_page  # noqa: F401 -- `browser` is a fixture
from inproc import InProcess

from egoqa.answers.metrics import parse_segments, union_length
from egoqa.answers.scoring import score_items
from egoqa.dev.synth import read_frame_index, write_synth_dataset
from egoqa.plan.config import load_config
from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.priors import enqueue_prior_run, parse_prior
from egoqa.plan.styles import load_style
from egoqa.report import summary as rp
from egoqa.report.clusters import cluster_run
from egoqa.report.explorer import ExplorerError, write_explorer
from egoqa.report.tables import tables
from egoqa.store.db import open_db

ROOT = Path(__file__).resolve().parents[2]
CLIP_SEC, FPS = 24.0, 10  # the synthetic clips written below
UNPARSEABLE = "I cannot tell from these frames."


def _load(path: Path, call: str):
    text = path.read_text()
    assert text.startswith(call) and text.endswith(");\n")
    return json.loads(text[len(call) : -3])


class Explored:
    """A run with every kind of card, its explorer written once for the module."""

    def __init__(self, root: Path, annotation: dict, site: Path, db: Path) -> None:
        self.root, self.site, self.db = root, site, db
        clips = [c for v in annotation["videos"] for c in v["clips"]]
        self.uids = [c["clip_uid"] for c in clips]
        self.queries = [  # every query's text, in file order
            q["query"] for c in clips for a in c["annotations"] for q in a["language_queries"]
        ]
        self.index = _load(site / "data" / "index.js", "EGOQA.index(")
        self.clip_no = {c[0]: n for n, c in enumerate(self.index["clips"])}

    def items(self, clip: int) -> list[dict]:
        n = self.clip_no[self.uids[clip]]
        return [it for it in self.index["items"] if it["c"] == n]

    def detail(self, clip: int) -> dict:
        n = self.clip_no[self.uids[clip]]
        return _load(self.site / "data" / f"clip-{n}.js", f"EGOQA.clip({n}, ")


def _make_unparseable(db_path: Path, clip_uid: str) -> None:
    db = open_db(db_path)
    with db.write() as cur:
        job = cur.one(
            """SELECT MIN(ri.graded_job_id) FROM run_items ri JOIN queries q ON q.id = ri.query_id
                 JOIN clips c ON c.id = q.clip_id WHERE c.clip_uid = :c""",
            {"c": clip_uid},
        )
        cur.execute(
            "UPDATE jobs SET response = :r, responses = :rs WHERE id = :j",
            {"r": UNPARSEABLE, "rs": json.dumps([UNPARSEABLE] * 5), "j": job},
        )
    score_items(db, run="main")
    db.dispose()


@pytest.fixture(scope="module")
def explored(tmp_path_factory) -> Explored:
    """4 clips x 3 queries, fake backend. Clip 1's video is garbage before the run (its queries
    fail), one of clip 0's answers is unparseable, clip 2's video is gone after the run (its
    thumbnails cannot be made), clip 3 was enqueued but not worked (pending); `whole` is the
    whole-clip prior over the same queries, compared."""
    root = tmp_path_factory.mktemp("explorer")
    synth = write_synth_dataset(root / "ds", clips=4, queries_per_clip=3, fps=FPS)
    annotation = json.loads(synth.annotations.read_text())
    uids = [c["clip_uid"] for v in annotation["videos"] for c in v["clips"]]
    egoqa, db = InProcess(root / "egoqa.db", root), root / "egoqa.db"
    (synth.videos / f"{uids[1]}.mp4").write_bytes(b"not a video " * 1000)
    config = load_config("demo", ["backend=fake"])
    enqueue = partial(enqueue_run, config=config, style=load_style(config.style), run="main")
    enqueue(open_db(db, create=True), load_nlq(synth.annotations, synth.videos, limit=9))
    egoqa("work", "--until-done")
    _make_unparseable(db, uids[0])
    everything = load_nlq(synth.annotations, synth.videos)
    enqueue(open_db(db), everything)  # the run grows: clip 3's queries wait
    whole = parse_prior("prior:whole_clip", [], None)
    enqueue_prior_run(open_db(db), everything, whole, "whole", None)
    cluster_run(open_db(db), "main")
    (synth.videos / f"{uids[2]}.mp4").rename(root / "moved.mp4")
    site = root / "site"
    egoqa("report", "--run", "main", "--compare", "whole", "--html", site)
    return Explored(root, annotation, site, db)


def test_every_query_is_a_card_with_failures_and_pending_work_shown_as_such(explored):
    index = explored.index
    assert len(index["items"]) == 12 and index["summary"]["pending"] == 3
    unreadable = explored.items(1)
    assert [it["o"] for it in unreadable] == ["failed"] * 3
    for it in unreadable:  # the root cause, not just "upstream job N failed"
        assert "video_unreadable" in it["e"] and explored.uids[1] in it["e"], it["e"]
    unparsed = [it for it in explored.items(0) if it["o"] == "no_segment"]
    assert [it["r"] for it in unparsed] == [UNPARSEABLE] and unparsed[0]["w"] == []
    pending = explored.items(3)
    assert {it["o"] for it in pending} == {"pending"} and {it["st"] for it in pending} <= {
        "ready",
        "blocked",
    }
    note = index["clips"][explored.clip_no[explored.uids[2]]][2]
    assert note.startswith("frames not shown:") and "does not exist" in note
    assert all(it["cmp"][0]["o"] == "covered" for it in index["items"])  # the whole-clip prior
    assert {it["k"] for it in index["items"]} != {None}  # clusters from `egoqa cluster`
    assert all(it["j"] and len(it["j"]) == len(index["turns"]) for it in index["items"])


def test_thumbnails_are_the_frames_each_turn_showed(explored):
    from PIL import Image

    detail = explored.detail(0)
    item = next(it for it in explored.items(0) if it["o"] != "no_segment")
    scenario, _, segments_turn, answer = (detail["jobs"][str(j)] for j in item["j"])
    # demo preset: 8 uniform frames of the 24 s clip, both ends included
    assert [t for t, _ in scenario["f"]] == pytest.approx([i * CLIP_SEC / 7 for i in range(8)])
    last = round(CLIP_SEC * FPS) - 1  # a time at the clip's very end shows its last frame
    for t, rel in scenario["f"] + answer["f"]:
        with Image.open(explored.site / rel) as image:
            assert image.format == "JPEG" and max(image.size) <= 128
            assert read_frame_index(image.convert("RGB")) == min(round(t * FPS), last), (t, rel)
    # the answer turn saw frames inside the segments its parent turn chose
    windows = parse_segments(segments_turn["response"], CLIP_SEC)
    assert answer["f"] and all(any(w.start <= t <= w.end for w in windows) for t, _ in answer["f"])
    assert all(job["prompt"] for job in (scenario, segments_turn, answer))
    assert len(segments_turn["responses"]) == 5  # every sample, for the folded list
    assert explored.detail(2)["note"].startswith("frames not shown:")


def test_report_compare_puts_a_prior_beside_a_model_run_with_their_lengths(explored):
    report = InProcess(explored.db, explored.root).json(
        "report", "--run", "main", "--compare", "whole"
    )
    by_run = {r["run"]: r for r in report["compare"]}
    assert by_run["whole"]["coverage"] == 1.0 and by_run["whole"]["pred_length"] == 1.0
    with sqlite3.connect(explored.db) as con:
        rows = con.execute("SELECT segments FROM results WHERE run = 'main'").fetchall()
    con.close()
    windows = [json.loads(s or "[]") for (s,) in rows]
    fractions = [union_length(w) / CLIP_SEC for w in windows if w]  # queries with a prediction
    expected = sum(fractions) / len(fractions)
    assert 0 < expected < 1 and by_run["main"]["pred_length"] == pytest.approx(expected)
    assert report["summary"]["pred_length"] == pytest.approx(expected)
    shown = tables(rp.build(open_db(explored.db, readonly=True), "main", ["whole"]))
    summary_rows = {row[0]: row[1:] for row in shown[0].rows}  # the file's, the enqueued
    assert summary_rows["mean predicted length, % of clip"][-1] == f"{100 * expected:.1f}"
    assert shown[-1].title == "runs compared (%)" and shown[-1].columns[4:6] == ["cov", "len"]
    compared = {row[0]: row for row in shown[-1].rows}
    assert compared["whole"][4:6] == ("100.0", "100.0")
    assert compared["main"][5] == f"{100 * expected:.1f}"


def test_html_report_decodes_frames_without_torch_and_plain_report_without_decord(
    explored, tmp_path
):
    script = f"""
import sys
from egoqa.cli.app import app
def run(*args):
    try:
        app(["--db", {str(explored.db)!r}, "report", "--run", "main", *args])
    except SystemExit as exc:
        assert not exc.code, exc.code
run()
plain = sorted(m for m in ("torch", "transformers", "decord", "sklearn") if m in sys.modules)
run("--html", {str(tmp_path / "site")!r}, "--thumbs", "2")
html = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("PLAIN", plain, "HTML", html, "DECORD", "decord" in sys.modules)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "PLAIN [] HTML [] DECORD True" in proc.stdout
    detail = _load(tmp_path / "site" / "data" / "clip-0.js", "EGOQA.clip(0, ")
    assert {len(j.get("f", [])) for j in detail["jobs"].values()} <= {0, 2}


def test_an_index_html_egoqa_did_not_write_is_never_replaced(explored, tmp_path):
    mine = tmp_path / "index.html"
    mine.write_text("<p>my own page</p>")
    proc = InProcess(explored.db, explored.root)(
        "report", "--run", "main", "--html", tmp_path, check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "was not written by egoqa" in line, line
    with pytest.raises(ExplorerError, match="is a file"):
        write_explorer(open_db(explored.db, readonly=True), "main", mine)
    assert mine.read_text() == "<p>my own page</p>" and sorted(tmp_path.iterdir()) == [mine]
    # the explorer's own folder is rewritten in place
    assert "egoqa explorer" in (explored.site / "index.html").read_text()


# --- in a real browser --------------------------------------------------------------------------


def _box(locator) -> dict:
    return locator.evaluate(
        "e => { const r = e.getBoundingClientRect(); return {x: r.x, w: r.width}; }"
    )


@pytest.mark.slow
def test_the_explorer_works_in_chromium(explored, browser, tmp_path):  # noqa: F811
    problems: list[str] = []
    page = open_page(browser, explored.site, problems)
    cards = page.locator("article.card")
    assert cards.count() == 12
    page.select_option("#f-outcome", "failed")
    assert cards.count() == 3 and "video_unreadable" in cards.first.inner_text()
    page.select_option("#f-outcome", "pending")
    assert cards.count() == 3 and "pending" in cards.first.inner_text()
    page.select_option("#f-outcome", "")
    needle = explored.queries[0]  # the file's first query, and those that hold its text
    matching = [q for q in explored.queries if needle.lower() in q.lower()]
    assert len(explored.queries) == 12 and len(matching) < 12  # the search narrows
    page.fill("#search", needle)
    assert cards.count() == len(matching)
    page.fill("#search", "")
    page.select_option("#sort", "iou-desc")
    best = max(it["u"] for it in explored.index["items"] if it["u"] is not None)
    assert explored.index["items"][int(cards.first.get_attribute("data-item"))]["u"] == best
    page.select_option("#sort", "")
    _check_timeline(page, explored)
    _check_turns(page, explored)
    assert problems == []
    shot = _screenshot(page, explored, tmp_path / "explorer.png")
    assert problems == [] and shot.stat().st_size > 10_000
    if os.environ.get("EGOQA_WRITE_SCREENSHOT"):  # refresh the README's picture, kept small
        from PIL import Image

        with Image.open(shot) as image:
            small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
            small.save(ROOT / "docs" / "explorer.png", optimize=True)


def _check_timeline(page, explored) -> None:
    """The first card with a prediction: its truth and rank-1 marks where their times say."""
    items = explored.index["items"]
    i = next(i for i, it in enumerate(items) if it["w"] and it["g"])
    item, duration = items[i], explored.index["clips"][items[i]["c"]][1]
    card = page.locator(f'article.card[data-item="{i}"]')
    bar = _box(card.locator(".tl.main .tl-bar"))
    for mark, (start, end) in (
        (".mark.gt", item["g"]),
        ('.mark.pred[data-rank="1"]', item["w"][0]),
    ):
        box = _box(card.locator(f".tl.main {mark}"))
        assert box["x"] == pytest.approx(bar["x"] + bar["w"] * start / duration, abs=1.0), mark
        width = max(2.0, bar["w"] * (end - start) / duration)  # CSS keeps a zero window 2 px wide
        assert box["w"] == pytest.approx(width, abs=1.0), mark
    assert card.locator(".tl.compare .mark.pred").count() == 1  # the whole-clip prior's window
    assert _box(card.locator(".tl.compare .mark.pred"))["w"] == pytest.approx(bar["w"], abs=1.0)


def _screenshot(page, explored, path: Path) -> Path:
    """The README's picture: the first clip's cards, one with its turns open, summary folded."""
    page.click("#summary > summary")
    page.select_option("#f-clip", str(explored.clip_no[explored.uids[0]]))
    _open_turns(page, explored)
    page.evaluate("window.scrollTo(0, 0)")
    page.set_viewport_size({"width": 1100, "height": 1000})
    page.screenshot(path=str(path))
    return path


def _open_turns(page, explored):
    first = explored.clip_no[explored.uids[0]]  # the clip whose frames were all decoded
    item = next(i for i, it in enumerate(explored.index["items"]) if it["c"] == first and it["w"])
    card = page.locator(f'article.card[data-item="{item}"]')
    card.locator("details.turns > summary").click()
    page.wait_for_selector(f'article.card[data-item="{item}"] .turn')
    return card


def _check_turns(page, explored) -> None:
    card = _open_turns(page, explored)
    assert card.locator(".turn").count() == 4
    images = card.locator(".frames img")
    assert images.count() >= 16
    images.first.scroll_into_view_if_needed()
    loaded = images.evaluate_all(
        "imgs => Promise.all(imgs.slice(0, 8).map(i => i.decode().then(() => i.naturalWidth)))"
    )
    assert loaded and all(w > 0 for w in loaded)
