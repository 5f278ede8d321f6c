"""The real `egoqa` entry point run inside the test process: the same parsing, commands and
error boundary (`egoqa.cli.app.main`) as the console script, without a Python start-up per call.

`conftest.Cli` starts a subprocess; use that wherever a process of its own matters (workers,
signals, imports, files left behind by a crash).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock


class InProcess:
    """Calls `egoqa [--db DB] ARGS...` in this process; returns a CompletedProcess."""

    def __init__(self, db: Path | str | None, cwd: Path) -> None:
        self.db, self.cwd = None if db is None else str(db), cwd

    def __call__(
        self, *args, check: bool = True, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        from egoqa.cli.app import main

        argv = ["egoqa", *(["--db", self.db] if self.db else []), *map(str, args)]
        out, err = io.StringIO(), io.StringIO()
        code = 0
        cwd = Path.cwd()
        # The command's log lines go to its stderr, as in a process of its own (under pytest the
        # root logger already has handlers, so the command's basicConfig adds none).
        logs = logging.StreamHandler(err)
        logs.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        levels = {name: logging.getLogger(name).level for name in ("", "egoqa", "alembic")}
        with (
            mock.patch.object(sys, "argv", argv),
            mock.patch.dict(os.environ, env or {}),
            redirect_stdout(out),
            redirect_stderr(err),
        ):
            os.chdir(self.cwd)
            root.addHandler(logs)
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            finally:
                root.removeHandler(logs)
                for name, level in levels.items():
                    logging.getLogger(name).setLevel(level)
                os.chdir(cwd)
        proc = subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
        if check and code != 0:
            raise AssertionError(f"{' '.join(argv)} exited {code}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args, **kw):
        return json.loads(self(*args, "--json", **kw).stdout)
