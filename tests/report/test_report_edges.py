"""Reports at the newest features' edges: the explorer shows the keyframes a shots turn saw, an
oracle run is labelled wherever it appears, and report options that would do nothing are
refused rather than ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chromium import browser, open_page  # noqa: F401 -- `browser` is a fixture
from inproc import InProcess

from egoqa.dev.synth import SynthPaths, write_synth_dataset

from helpers import error_line

STYLE = Path(__file__).resolve().parents[2] / "egoqa" / "plan" / "styles" / "coarse_cot_shots.toml"
CLIP_SEC = 60.0


class Zoomed:
    """A model-zoom run `m` and an oracle-zoom run `o` of coarse_cot_shots, fake backend."""

    def __init__(self, root: Path, data: SynthPaths) -> None:
        self.root, self.data = root, data
        self.cli = InProcess(root / "egoqa.db", root)

    def explorer(self, run: str, *extra: str) -> Path:
        site = self.root / f"site-{run}-{len(extra)}"
        self.cli("report", "--run", run, "--html", site, "--thumbs", "4", *extra)
        return site


def _load(path: Path, call: str):
    text = path.read_text()
    assert text.startswith(call) and text.endswith(");\n")
    return json.loads(text[len(call) : -3])


@pytest.fixture(scope="module")
def zoomed(tmp_path_factory) -> Zoomed:
    root = tmp_path_factory.mktemp("zoomed")
    data = write_synth_dataset(
        root / "ds", clips=1, queries_per_clip=2, duration_sec=CLIP_SEC, cuts_per_clip=3, seed=9
    )
    oracle = root / "oracle.toml"
    oracle.write_text(STYLE.read_text().replace('zoom = "model"', 'zoom = "oracle"'))
    z = Zoomed(root, data)
    for run, style in (("m", STYLE), ("o", oracle)):
        args = ["enqueue", "-a", data.annotations, "--videos", data.videos, "--run", run]
        args += ["--config", "coarse_cot_shots", "--set", "backend=fake"]
        z.cli(*args, "--set", f"style={json.dumps(str(style))}")
    z.cli("work", "--until-done")
    return z


# --- 3: a shots turn's frames ------------------------------------------------------------------


def test_the_explorer_shows_the_keyframes_a_shots_turn_saw(zoomed):
    site = zoomed.explorer("m")
    index = _load(site / "data" / "index.js", "EGOQA.index(")
    detail = _load(site / "data" / "clip-0.js", "EGOQA.clip(0, ")
    locate = [j for j in detail["jobs"].values() if j["turn"] == "locate" and j["state"] == "done"]
    assert locate and all(j.get("f") for j in locate), locate
    # the first level shows one keyframe per shot of the whole clip: the middle of each
    cuts = zoomed.data.cuts[index["clips"][0][0]]
    bounds = [0.0, *cuts, CLIP_SEC]
    middles = [(a + b) / 2 for a, b in zip(bounds, bounds[1:], strict=False)]
    firsts = [j for j in locate if j["of"] == len(middles)]
    shown = [t for t, _ in firsts[0]["f"]]
    assert len(shown) == 4 and all(min(abs(t - m) for m in middles) < 0.2 for t in shown)
    assert all((site / rel).is_file() for j in locate for _, rel in j["f"])


# --- 4: an oracle run is labelled where it appears --------------------------------------------


def test_an_oracle_run_is_labelled_in_the_comparison_and_the_explorer(zoomed):
    cli = zoomed.cli
    built = cli.json("report", "--run", "m", "--compare", "o")
    assert [(r["run"], r["oracle"]) for r in built["compare"]] == [("m", False), ("o", True)]
    shown = cli("report", "--run", "m", "--compare", "o", env={"COLUMNS": "200"}).stdout
    assert "o (oracle)" in shown and "m (oracle)" not in shown
    compared = zoomed.explorer("m", "--compare", "o")
    assert _load(compared / "data" / "index.js", "EGOQA.index(")["oracle"] == ["o"]
    own = zoomed.explorer("o")
    assert _load(own / "data" / "index.js", "EGOQA.index(")["oracle"] == ["o"]
    assert "oracle zoom" in (own / "index.html").read_text().split("<h1", 1)[1].split("</h1>")[0]
    plain = zoomed.explorer("m")
    assert _load(plain / "data" / "index.js", "EGOQA.index(")["oracle"] == []


# --- 7: options that would do nothing ---------------------------------------------------------


def test_report_refuses_options_it_would_ignore(zoomed, tmp_path):
    cli = zoomed.cli
    p = cli("report", "--run", "m", "--scoring", "original", "--html", tmp_path / "s", check=False)
    error_line(p, "--html", "--scoring original")
    assert not (tmp_path / "s").exists()
    error_line(cli("report", "--run", "m", "--thumbs", "3", check=False), "--thumbs", "--html")


def test_compare_shows_each_run_once(zoomed):
    built = zoomed.cli.json("report", "--run", "m", "--compare", "o", "--compare", "o")
    assert [r["run"] for r in built["compare"]] == ["m", "o"]
    built = zoomed.cli.json("report", "--run", "m", "--compare", "m")
    assert built["compare"] == []


# --- 5: the original's scoring reads the shot ranges egoqa prints --------------------------------

SHOT_BLOCKS = """1. 0s - 17.8s:
Confidence Score: 6
Verdict: Relevant

2. 17.8s - 31.9s:
Verdict: Irrelevant

3. 32s - 60s:
Verdict: [Relevant]"""


def test_shot_ranges_with_decimals_are_read_as_the_whole_seconds_the_original_printed():
    from egoqa.report import original

    shots = original.parse(SHOT_BLOCKS, verdicts=True, shots=True)
    assert shots == original.Parsed([(0, 17), (32, 60)], 3)
    # a style whose ranges are not shots keeps the original's whole-second pattern exactly
    assert original.parse(SHOT_BLOCKS, verdicts=True) == original.Parsed([(32, 60)], 3)


def test_original_scoring_credits_a_shots_run_by_its_relevant_shots(zoomed):
    from egoqa.report import original
    from egoqa.store.db import open_db

    built = original.build(open_db(zoomed.root / "egoqa.db", readonly=True), "m")
    assert built["instances"] and all(i["segments"] for i in built["instances"])
    assert all(isinstance(x, int) for i in built["instances"] for s in i["segments"] for x in s)


# --- the zoom chain, level by level --------------------------------------------------------------


def test_the_explorer_and_results_json_show_every_zoom_level_and_the_final_window(zoomed):
    index = _load(zoomed.explorer("m") / "data" / "index.js", "EGOQA.index(")
    for item in index["items"]:
        levels = item["zl"]
        assert levels[0]["d"] == 0 and levels[0]["w"] == [0.0, CLIP_SEC]
        for above, below in zip(levels, levels[1:], strict=False):
            assert below["w"] == above["c"] and below["d"] == above["d"] + 1
        assert "r" in levels[-1]  # the last level says why it stopped (None: at the target)
        assert item["zf"] in (levels[-1]["c"], levels[-1]["w"])
    out = zoomed.root / "out"
    zoomed.cli("report", "--run", "m", "--out", out)
    doc = json.loads((out / "results.json").read_text())
    by_query = {(i["clip_uid"], i["query_idx"]): i for i in doc["instances"]}
    for item in index["items"]:
        clip_uid = index["clips"][item["c"]][0]
        notes = by_query[(clip_uid, item["x"])]["zoom_levels"]
        assert [n["window"] for n in notes] == [lvl["w"] for lvl in item["zl"]]
        assert notes[-1]["final"] is True


@pytest.mark.slow
def test_oracle_labels_and_the_zoom_chain_show_in_chromium(zoomed, browser):  # noqa: F811

    problems: list[str] = []
    page = open_page(browser, zoomed.explorer("m", "--compare", "o"), problems)
    assert "Oracle zoom in o" in page.locator("header.top").inner_text()
    cards = page.locator("article.card")
    assert cards.count() == 2
    for n in range(cards.count()):
        card = cards.nth(n)
        assert "Oracle zoom in o" in card.locator(".oracle-note").inner_text()
        assert card.locator(".zoom-line").inner_text().startswith("zoom (")
        assert card.locator(".tl.main .mark.zoomed").count() == 1
        assert card.locator(".tl.compare .tl-label").inner_text() == "o (oracle)"
    assert problems == []
