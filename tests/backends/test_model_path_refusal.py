"""A model path that does not exist is refused before torch or transformers are imported, so a
worker given a wrong path stops at once (the refusal must not wait on seconds of imports).

Which modules a process has imported is what is tested, so the command runs in a process of its
own: the test process has long imported torch for other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset

from conftest import ROOT

MISSING = "/nonexistent/egoqa-model"

# Runs `egoqa work` as the console script does, then reports its exit code, its stderr and
# whether torch or transformers were imported by then.
PROBE = """
import contextlib, io, json, sys
from egoqa.cli.app import main
sys.argv = ["egoqa", *json.loads(sys.argv[1])]
err = io.StringIO()
code = 0
with contextlib.redirect_stderr(err):
    try:
        main()
    except SystemExit as exc:
        code = exc.code
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(json.dumps({"code": code, "stderr": err.getvalue(), "imported": heavy}))
"""


def test_a_missing_model_path_is_refused_before_torch_is_imported(tmp_path):
    data = write_synth_dataset(tmp_path / "data", clips=1, queries_per_clip=1, duration_sec=4.0)
    db = tmp_path / "egoqa.db"
    InProcess(db, tmp_path)(
        "enqueue", "--annotations", data.annotations, "--videos", data.videos, "--config", "demo",
        "--set", f"model={MISSING}", "--run", "broken",
    )  # fmt: skip
    argv = ["--db", str(db), "work", "--until-done"]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = out["stderr"].strip().splitlines()
    assert out["code"] == 1 and len(lines) == 1, out
    assert lines[0].startswith(f"error: model path {MISSING} does not exist"), lines
    assert out["imported"] == [], f"refused only after importing {out['imported']}"
