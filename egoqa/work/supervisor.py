"""Many workers: one process per GPU group (or N on CPU), restarted with backoff when they crash,
stopped together on Ctrl-C, with one progress display for all of them."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from egoqa.errors import ConfigError
from egoqa.work import waits
from egoqa.work.stopping import unblock_stop_signals

log = logging.getLogger("egoqa.work.supervisor")

CRASH_LOOP_S = 60.0  # a worker that dies within this long of starting, repeatedly, is given up on
CRASH_LOOP_LIMIT = 5
MAX_BACKOFF_S = 60.0
# Exit status of a worker that could not start for a reason the user must fix (a model path
# that does not exist, a schema mismatch): restarting it would only repeat the error.
WORKER_CANNOT_START = 3
STOPPED_BY_SIGNAL = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def parse_gpus(spec: str) -> list[str]:
    """ "0-7", "0,2,4", "1-3,6" → device ids."""
    out: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ConfigError(
                f"--gpus {spec!r}: use a list or ranges of GPU ids, e.g. 0-7 or 0,2,4"
            )
        out += [str(i) for i in range(int(lo), int(hi or lo) + 1)]
    if not out:
        raise ConfigError(f"--gpus {spec!r} names no GPU")
    return list(dict.fromkeys(out))


def gpu_groups(gpus: list[str], per_worker: int) -> list[list[str]]:
    if per_worker < 1 or len(gpus) % per_worker:
        raise ConfigError(
            f"{len(gpus)} GPU(s) do not split into groups of {per_worker}: adjust --gpus-per-worker"
        )
    return [gpus[i : i + per_worker] for i in range(0, len(gpus), per_worker)]


def backoff(consecutive_failures: int) -> float:
    """Restart delay after a crash: 1, 2, 4, ... seconds, at most a minute."""
    return min(MAX_BACKOFF_S, 2.0 ** max(0, consecutive_failures - 1))


@dataclass
class Slot:
    name: str
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    quick_failures: int = 0
    restart_at: float = 0.0
    finished: bool = False
    gave_up: bool = False
    restarts: int = 0


@dataclass
class Supervisor:
    command: list[str]
    slots: list[Slot]
    env: dict[str, str] = field(default_factory=dict)  # for every worker (the database URL)
    on_tick: Callable[[], None] | None = None
    tick_s: float = field(default_factory=waits.supervisor_tick_s)  # $EGOQA_SUPERVISOR_TICK_S
    stopping: bool = False
    stop_signal: int | None = None  # what stopped us (the CLI exits 128 + it)
    log_lines: list[str] = field(default_factory=list)

    def run(self) -> int:
        restore = self._trap()
        try:
            while not self.stopping and not all(s.finished or s.gave_up for s in self.slots):
                for slot in self.slots:
                    self._tend(slot)
                if self.on_tick:
                    self.on_tick()
                time.sleep(self.tick_s)
        finally:
            self._stop_all()
            restore()
        if self.on_tick:
            self.on_tick()
        return 1 if any(s.gave_up for s in self.slots) else 0

    def _tend(self, slot: Slot) -> None:
        if slot.finished or slot.gave_up:
            return
        if slot.proc is None:
            if time.time() >= slot.restart_at:
                self._start(slot)
            return
        code = slot.proc.poll()
        if code is None:
            return
        slot.proc = None
        if code == 0:
            slot.finished = True
            log.info("worker %s finished", slot.name)
            return
        if code in STOPPED_BY_SIGNAL:  # someone stopped this worker on purpose: leave it stopped
            slot.finished = True
            log.warning("worker %s was stopped by a signal (exit %d)", slot.name, code)
            return
        if code == WORKER_CANNOT_START:
            slot.gave_up = True
            log.error(
                "worker %s could not start (see its error above): not restarting it", slot.name
            )
            return
        self._crashed(slot, code)

    def _crashed(self, slot: Slot, code: int) -> None:
        quick = time.time() - slot.started < CRASH_LOOP_S
        slot.failures += 1
        slot.quick_failures = slot.quick_failures + 1 if quick else 0
        if slot.quick_failures >= CRASH_LOOP_LIMIT:
            slot.gave_up = True
            log.error(
                "worker %s exited %d %d times right after starting: giving up on it (see its error above)",
                slot.name,
                code,
                slot.quick_failures,
            )
            return
        delay = backoff(slot.failures)
        slot.restart_at = time.time() + delay
        log.warning("worker %s exited with %d; restarting in %.0fs", slot.name, code, delay)

    def _start(self, slot: Slot) -> None:
        env = {**os.environ, **self.env, **slot.env}
        slot.proc = subprocess.Popen(self.command, env=env, start_new_session=True)
        slot.started = time.time()
        slot.restarts += 1 if slot.failures else 0
        log.info("worker %s started (pid %d)", slot.name, slot.proc.pid)

    def _trap(self):
        def handler(signum, _frame):
            self.stopping = True
            self.stop_signal = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        unblock_stop_signals()
        return lambda: [signal.signal(s, h) for s, h in old.items()]

    def _stop_all(self, grace_s: float = 30.0) -> None:
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.time() + grace_s
        for p in live:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def worker_command(args: list[str]) -> list[str]:
    """A worker's command line: never the database URL, which may hold a password (anyone on
    the host can read a command line); workers get it from the environment (`db_env`)."""
    return [sys.executable, "-m", "egoqa", "work", "--single", *args]


def db_env(url: str) -> dict[str, str]:
    """The environment of every worker: its database (readable by this user alone, unlike a
    command line) and who supervises it (a worker stops when its supervisor dies)."""
    from egoqa.work.stopping import SUPERVISOR_ENV

    return {"EGOQA_DB": url, SUPERVISOR_ENV: str(os.getpid())}


def cpu_slots(workers: int) -> list[Slot]:
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "EGOQA_TORCH_THREADS": threads}
    return [Slot(name=f"cpu{i}", env=dict(env)) for i in range(workers)]


def gpu_slots(groups: list[list[str]]) -> list[Slot]:
    return [
        Slot(name="gpu" + "+".join(g), env={"CUDA_VISIBLE_DEVICES": ",".join(g)}) for g in groups
    ]
