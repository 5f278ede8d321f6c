"""Stop signals for a worker: SIGINT/SIGTERM stop it, but never inside a critical section.

Python runs signal handlers in the main thread, whichever thread the kernel delivered the signal
to, so masking signals in the main thread (`pthread_sigmask`) does not keep a handler from
running while a claim is being made and recorded: with any other thread alive the kernel hands
the signal to that thread and the main thread runs the handler anyway. Here the handler itself
defers: inside `critical()` it only notes the signal, and the stop is raised as the section ends,
when the claimed jobs are recorded and can be released.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SUPERVISOR_ENV = "EGOQA_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def unblock_stop_signals() -> None:
    """Let SIGINT and SIGTERM through in this thread and the threads it starts: a process
    inherits its parent thread's signal mask across exec, and a worker started by a thread that
    blocked them (a scheduler's, a test runner's) would otherwise never see a stop."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def supervisor_pid() -> int | None:
    """The pid of the `egoqa work` that started this worker, if one did."""
    value = os.environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


def die_with_supervisor() -> None:
    """A supervised worker stops (SIGTERM: release, exit) when its supervisor dies, even by
    `kill -9`: Linux's parent-death signal, plus a check for a parent already gone. The
    heartbeat also watches the parent, where the signal is not available."""
    parent = supervisor_pid()
    if parent is None:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the heartbeat's watch still applies
        pass
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def orphaned() -> bool:
    """True when this worker's supervisor is gone (it was re-parented)."""
    parent = supervisor_pid()
    return parent is not None and os.getppid() != parent


class StopRequested(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: abandon the batch, release, exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Installs the handlers; `critical()` sections finish before a stop is raised."""

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that stopped us (for the exit status)
        self._depth = 0
        self._pending: int | None = None
        self._closing = False
        self._old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
            unblock_stop_signals()

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def _handler(self, signum: int, _frame) -> None:
        self.received = signum
        if self._closing:  # already stopping: let the release finish
            return
        if self._depth:
            self._pending = signum
            return
        raise StopRequested(signum)

    @contextmanager
    def critical(self):
        """A section a stop must not interrupt (a claim being made and recorded)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._pending is not None:
                signum, self._pending = self._pending, None
                raise StopRequested(signum)

    def closing(self) -> None:
        """From now on a signal is only noted: the worker is already releasing and stopping."""
        self._closing = True

    @property
    def exit_code(self) -> int:
        """128 + the signal's number after a stop (130 for SIGINT, 143 for SIGTERM), else 0."""
        return 128 + self.received if self.received else 0
