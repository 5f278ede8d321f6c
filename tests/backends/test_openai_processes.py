"""`backend = "openai"` when processes die: a worker SIGKILLed with requests in flight, and the
server killed mid-run and started again. Every job ends done, recorded exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from inproc import InProcess
from test_openai_backend import enqueue, jobs, openai_args, serve, small, tiny_backend

from egoqa.dev.server import DevServer, Faults

from helpers import wait_until

__all__ = ["serve", "small", "tiny_backend"]  # fixtures shared with the in-process tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def worker_with_both_requests_in_flight(db, small, tiny_model, server: DevServer):
    """An `egoqa work --until-done` process on the baseline style's two jobs, yielded once the
    server holds both jobs' requests; killed on the way out if it still runs."""
    enqueue(InProcess(db, db.parent), small, tiny_model, *openai_args(server.base_url),
            style="baseline")  # fmt: skip
    cmd = [sys.executable, "-m", "egoqa", "--db", str(db), "work", "--until-done"]
    worker = subprocess.Popen(cmd, cwd=db.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: server.count >= 2, 120, "both jobs' requests in flight")
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        worker.stderr.close()


@pytest.mark.slow
def test_a_worker_killed_with_requests_in_flight_loses_nothing_and_repeats_nothing(
    migrated_db_path, small, tiny_model, serve
):
    server = serve(Faults(latency_s=1.0))
    db = migrated_db_path
    with worker_with_both_requests_in_flight(db, small, tiny_model, server) as worker:
        assert [j["state"] for j in jobs(db)] == ["running"] * 2
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    InProcess(db, db.parent)("work", "--until-done")  # finds the dead worker's jobs, runs them
    rows = jobs(db)
    # the killed worker's attempt counts; its answers, which arrived after it died, do not
    assert [(j["state"], j["results"], j["attempts"]) for j in rows] == [("done", 1, 2)] * 2
    assert server.count == 4  # the killed worker's answers were never recorded


@pytest.mark.slow
def test_the_server_killed_mid_run_and_restarted_loses_nothing(
    migrated_db_path, small, tiny_model, serve
):
    """The server is `egoqa dev serve` in a process of its own, SIGKILLed once a first job is
    done; then a server comes up again on the same port (here, in this process)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    serve_cmd = [sys.executable, "-m", "egoqa", "dev", "serve", str(tiny_model)]
    serve_cmd += ["--port", str(port), "--latency", "0.5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(serve_cmd, env=env, stderr=subprocess.DEVNULL)
    db = migrated_db_path
    egoqa = InProcess(db, db.parent)
    patient = [
        "--set",
        "openai.retries=30",
        "--set",
        "openai.max_backoff_s=1",
        "--set",
        "openai.concurrency=1",
    ]
    enqueue(egoqa, small, tiny_model, *openai_args(url, *patient), style="baseline")
    killed: list[int] = []
    failed: list[BaseException] = []

    def kill_after_first_job() -> None:
        try:
            wait_until(lambda: "done" in [j["state"] for j in jobs(db)], 180, "a first job done")
            first.send_signal(signal.SIGKILL)
            killed.append(first.wait(timeout=30))
            serve(Faults(latency_s=0.5), port=port)  # the server again, at the same address
        except Exception as exc:  # the test fails with it below
            failed.append(exc)

    killer = threading.Thread(target=kill_after_first_job)
    killer.start()
    try:
        egoqa("work", "--until-done")
        killer.join(timeout=60)
    finally:
        if first.poll() is None:
            first.terminate()
            first.wait(timeout=30)
    assert failed == [] and killed == [-signal.SIGKILL]
    rows = jobs(db)
    assert [(j["state"], j["results"]) for j in rows] == [("done", 1)] * 2


@pytest.mark.slow
def test_sigterm_abandons_hung_requests_and_releases_their_jobs_at_once(
    migrated_db_path, small, tiny_model, serve
):
    server = serve(Faults(hang_every=1))
    db = migrated_db_path
    with worker_with_both_requests_in_flight(db, small, tiny_model, server) as worker:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)  # the requests' timeout is 300 s: they are not awaited
    assert code == 128 + signal.SIGTERM
    assert [(j["state"], j["attempts"]) for j in jobs(db)] == [("ready", 0)] * 2
