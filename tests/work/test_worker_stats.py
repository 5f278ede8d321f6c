"""A worker's counters are counted by three threads at once (the main loop, the claim-ahead
thread, recording) and lose no update."""

from __future__ import annotations

import sys
import threading

from egoqa.work.recording import WorkerStats


def test_counters_added_from_many_threads_at_once_lose_nothing():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        stats = WorkerStats()
        start = threading.Barrier(4)

        def count() -> None:
            start.wait(timeout=30)
            for _ in range(20_000):
                stats.add(done=1, prepare_s=0.5)
                stats.count_failure("oom")

        threads = [threading.Thread(target=count) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
            assert not t.is_alive()
    finally:
        sys.setswitchinterval(old)
    assert (stats.done, stats.prepare_s) == (80_000, 40_000.0)
    assert (stats.failed, stats.failures) == (80_000, {"oom": 80_000})
