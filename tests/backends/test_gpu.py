"""On a CUDA GPU: a real allocator out-of-memory is split and learned, and `--gpus` runs workers.

Skipped, saying why, on machines without a GPU (CI runs on CPU; these run where one is lent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from egoqa.store.db import open_db

from conftest import enqueue_args


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prebuilt dataset (EGOQA_GPU_DATA) where rendering tools are missing, else a fresh one."""
    from egoqa.dev.synth import SynthPaths, write_synth_dataset

    pre = os.environ.get("EGOQA_GPU_DATA")
    if pre:
        root = Path(pre)
        return SynthPaths(
            root, root / "annotations" / "nlq_val.json", root / "videos", root / "ego4d.json"
        )
    return write_synth_dataset(
        tmp_path_factory.mktemp("gpu"), clips=2, queries_per_clip=4, duration_sec=16.0
    )


def _model(tiny_model) -> str:
    return f"model={json.dumps(str(tiny_model))}"


def test_a_real_cuda_oom_is_split_and_the_fitting_size_is_learned(data, tiny_model, db_path):
    import torch

    from egoqa.plan.config import load_config
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style
    from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

    db = open_db(db_path, create=True)
    cfg = load_config(
        "demo",
        [
            _model(tiny_model),
            "style=baseline",
            "sampler.frames=32",
            "sampler.max_edge=448",
            "batch.size=8",
            "generation.do_sample=false",
            "generation.max_new_tokens=4",
        ],
    )
    enqueue_run(db, load_nlq(data.annotations, data.videos), cfg, load_style("baseline"), "oom")
    served = resolve_engine(db)
    backend = load_backend_for(served, "cuda")
    # Measure one request, then cap this process's CUDA memory so that ~2 requests fit, not 8.
    probe = Worker(db, served, backend, WorkerOptions(batch_size=1, max_batches=1))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    probe.run()
    per_request = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(0.95, (base + 2.5 * per_request) / total))
    try:
        worker = Worker(db, served, backend, WorkerOptions(batch_size=8, until_done=True))
        stats = worker.run()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert stats.oom_splits >= 1 and stats.failed == 0
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state <> 'done'") == 0
        max_ok, min_fail = cur.execute("SELECT max_ok, min_fail FROM batch_limits").fetchone()
    assert 1 <= max_ok < min_fail <= 8, (max_ok, min_fail, per_request)


def test_work_gpus_runs_a_worker_per_gpu_to_completion(data, tiny_model, cli, db_path):
    cli(*enqueue_args(data, "demo", "--set", _model(tiny_model), "--set", "dtype=bfloat16"))
    p = cli("work", "--gpus", "0", "--until-done", timeout=150)
    assert "0 failed" in p.stderr
    db = open_db(db_path)
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state <> 'done'") == 0
        assert {r[0] for r in cur.all("SELECT device FROM workers")} == {"cuda:0"}
