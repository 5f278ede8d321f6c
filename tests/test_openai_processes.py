"""`backend = "openai"` when processes die: a worker SIGKILLed with requests in flight, and the
server killed mid-run and started again. Every job ends done, recorded exactly once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from egoqa.dev.server import Faults
from tests.inproc import InProcess
from tests.test_openai_backend import enqueue, jobs, openai_args, serve, small, tiny_backend

__all__ = ["serve", "small", "tiny_backend"]  # fixtures shared with the in-process tests


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_worker_killed_with_requests_in_flight_loses_nothing_and_repeats_nothing(
    tmp_path, small, tiny_model, serve
):
    server = serve(Faults(latency_s=1.0))
    db = tmp_path / "egoqa.db"
    egoqa = InProcess(db, tmp_path)
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url), style="baseline")
    cmd = [sys.executable, "-m", "egoqa", "--db", str(db), "work", "--until-done"]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: server.count >= 2, 120, "both jobs' requests in flight")
        assert [j["state"] for j in jobs(db)] == ["running"] * 2
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stderr.close()
    egoqa("work", "--until-done")  # finds the dead worker's jobs and runs them again
    rows = jobs(db)
    # the killed worker's attempt counts; its answers, which arrived after it died, do not
    assert [(j["state"], j["results"], j["attempts"]) for j in rows] == [("done", 1, 2)] * 2
    assert server.count == 4  # the killed worker's answers were never recorded


@pytest.mark.slow
def test_the_server_killed_mid_run_and_restarted_loses_nothing(tmp_path, small, tiny_model):
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    serve_cmd = [
        sys.executable,
        "-m",
        "egoqa",
        "dev",
        "serve",
        str(tiny_model),
        "--port",
        str(port),
    ]
    serve_cmd += ["--latency", "0.5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    servers = [subprocess.Popen(serve_cmd, env=env, stderr=subprocess.DEVNULL)]
    db = tmp_path / "egoqa.db"
    egoqa = InProcess(db, tmp_path)
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

    def kill_after_first_job() -> None:
        try:
            wait_for(lambda: "done" in [j["state"] for j in jobs(db)], 180, "a first job done")
            servers[0].send_signal(signal.SIGKILL)
            killed.append(servers[0].wait(timeout=30))
            servers.append(subprocess.Popen(serve_cmd, env=env, stderr=subprocess.DEVNULL))
        except AssertionError:
            killed.append(0)

    killer = threading.Thread(target=kill_after_first_job)
    killer.start()
    try:
        egoqa("work", "--until-done")
        killer.join(timeout=60)
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert killed == [-signal.SIGKILL]
    rows = jobs(db)
    assert [(j["state"], j["results"]) for j in rows] == [("done", 1)] * 2


@pytest.mark.slow
def test_sigterm_abandons_hung_requests_and_releases_their_jobs_at_once(
    tmp_path, small, tiny_model, serve
):
    server = serve(Faults(hang_every=1))
    db = tmp_path / "egoqa.db"
    egoqa = InProcess(db, tmp_path)
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url), style="baseline")
    cmd = [sys.executable, "-m", "egoqa", "--db", str(db), "work", "--until-done"]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: server.count >= 2, 120, "both jobs' requests hung in flight")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)  # the requests' timeout is 300 s: they are not awaited
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.stderr.close()
    assert code == 128 + signal.SIGTERM
    assert [(j["state"], j["attempts"]) for j in jobs(db)] == [("ready", 0)] * 2
