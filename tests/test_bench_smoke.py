"""The benchmark scripts still run: each `bench/*.py --quick` exits 0 and prints its table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# script -> a line its results table starts with
SCRIPTS = {
    "calls_saved.py": "### Model calls",
    "queue_throughput.py": "### Claim + complete, jobs/s",
    "enqueue_scale.py": "### Enqueue (stage_analysis, coarse preset), seconds",
    "worker_overhead.py": "### Worker wall time by part (tiny model, CPU)",
    "decoding.py": "### Dense 1 fps:",
    "seeded_sampling.py": "### Logits step at vocabulary 152,064",
    "explorer_scale.py": "### Explorer size and load time",
    "gpu_throughput.py": "### Throughput: the original's loop vs egoqa",
    "paired_bootstrap.py": "### Intervals and paired tests, seconds",
    "openai_backend.py": "### Tiny model: through the dev server vs in process",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.slow
def test_benchmark_runs_quick_and_prints_its_table(script):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{proc.stderr[-3000:]}"
    assert SCRIPTS[script] in proc.stdout, proc.stdout[-3000:]
