"""Stop signals for a worker: SIGINT/SIGTERM stop it, at a point where stopping is safe.

Python runs signal handlers in the main thread between two bytecodes, whichever thread the kernel
delivered the signal to. A handler that raised there could land anywhere: between a claim's
COMMIT and the heartbeat taking the batch, between a lock's acquire and its `try`, inside a
finaliser or a library's `except BaseException` that swallowed it (a stop then went unnoticed).
So the handler only notes the signal, and the worker checks for it at safe points.
"""

from __future__ import annotations

import os
import signal
import threading
import time

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
    """Raised by the worker itself, at a safe point, once SIGINT/SIGTERM arrived: abandon the
    batch, release, exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Installs the handlers. A handler only notes the signal; the worker acts on it at safe
    points (`check`): before a claim, between decode steps (`is_set`, read by the backend's
    stopping criterion), in its bounded waits (`sleep`), and before a batch is recorded. So a
    stop never lands inside a claim, a recording, a lock or a finaliser, whichever thread made
    the claim and whichever thread the kernel handed the signal to."""

    POLL_S = 0.05  # how often a wait looks for a stop

    def __init__(self) -> None:
        self.received: int | None = None  # the signal that stopped us (for the exit status)
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
        # Nothing but an assignment: no lock taken, nothing raised, safe at any bytecode.
        if self.received is None:
            self.received = signum

    def request(self, signum: int) -> None:
        """Ask for a stop as the signal `signum` would (from any thread)."""
        self._handler(signum, None)

    def is_set(self) -> bool:
        return self.received is not None

    def check(self) -> None:
        """A safe point: raise `StopRequested` if a stop signal arrived."""
        if self.received is not None:
            raise StopRequested(self.received)

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, ending early (with `StopRequested`) on a stop signal."""
        deadline = time.monotonic() + seconds
        while True:
            self.check()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, self.POLL_S))

    @property
    def exit_code(self) -> int:
        """128 + the signal's number after a stop (130 for SIGINT, 143 for SIGTERM), else 0."""
        return 128 + self.received if self.received else 0
