"""The benchmark scripts still run: each `bench/*.py --quick` returns 0 and prints its table.

Each script's `main(["--quick"])` runs in this process (as `python bench/NAME.py --quick` would,
less a Python start-up and a torch import per script), on the session's tiny model where it
builds one, with its cached files in a temporary folder instead of `bench/.cache/`. Processes a
benchmark starts itself (queue workers, a server, `egoqa enqueue` timed whole) are still its own.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# script -> a line its results table starts with
SCRIPTS = {
    "calls_saved.py": "### Model calls",
    "queue_throughput.py": "### Claim + complete, jobs/s",
    "enqueue_scale.py": "### Enqueue (stage_analysis, coarse preset), seconds",
    "decoding.py": "### Dense 1 fps:",
    "explorer_scale.py": "### Explorer size and load time",
    "paired_bootstrap.py": "### Intervals and paired tests, seconds",
}
# the scripts that build the tiny model (given the session's instead)
MODEL_SCRIPTS = {
    "worker_overhead.py": "### Worker wall time by part (tiny model, CPU)",
    "seeded_sampling.py": "### Logits step at vocabulary 152,064",
    "gpu_throughput.py": "### Throughput: the original's loop vs egoqa",
    "openai_backend.py": "### Tiny model: through the dev server vs in process",
}


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == SCRIPTS.keys() | MODEL_SCRIPTS.keys()


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    """What the scripts would cache in `bench/.cache/`, kept for this module's runs only."""
    return tmp_path_factory.mktemp("bench-cache")


def run_quick(script: str, cache: Path, monkeypatch) -> None:
    """`python bench/SCRIPT --quick`, in this process; asserts it returned what exits 0."""
    monkeypatch.syspath_prepend(str(BENCH))  # as running a script from bench/ does
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = importlib.import_module(script.removesuffix(".py"))
    monkeypatch.setattr(sys.modules["_common"], "CACHE", cache)
    if hasattr(module, "CACHE"):
        monkeypatch.setattr(module, "CACHE", cache)
    status = module.main(["--quick"])
    assert status in (None, 0), f"{script} returned {status}"  # `sys.exit(status)` exits 0


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.slow
def test_benchmark_runs_quick_and_prints_its_table(script, bench_cache, monkeypatch, capsys):
    run_quick(script, bench_cache, monkeypatch)
    out = capsys.readouterr().out
    assert SCRIPTS[script] in out, out[-3000:]


@pytest.mark.parametrize("script", sorted(MODEL_SCRIPTS))
@pytest.mark.slow
def test_model_benchmark_runs_quick_on_the_tiny_model_and_prints_its_table(
    script, bench_cache, tiny_model, monkeypatch, capsys
):
    import torch

    model = bench_cache / "tiny-qwen2.5-vl"  # where the scripts build it: a complete build there
    if not model.exists():  # is left alone (a copy: a served model is named by its real path)
        shutil.copytree(tiny_model, model)
    threads = torch.get_num_threads()  # the scripts set their own; later tests keep theirs
    try:
        run_quick(script, bench_cache, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert MODEL_SCRIPTS[script] in out, out[-3000:]
