"""`backend = "openai"` against `egoqa dev serve` on the tiny model: the same answers as the
in-process backend, faults sorted into the right kinds, every job recorded exactly once, and the
API key nowhere but in the environment."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from inproc import InProcess

from egoqa.backends.base import GREEDY, Frames, Request, sample_seed
from egoqa.backends.openai import backoff_s, chat_body, decide
from egoqa.dev.server import DevServer, Faults, request_from
from egoqa.dev.synth import write_synth_dataset
from egoqa.plan.config import GenerationConfig, OpenAIConfig

from conftest import copy_db

SECRET = "sk-test-0123456789-never-shown"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One clip, two queries: the demo style makes six jobs of it."""
    return write_synth_dataset(tmp_path_factory.mktemp("small"), clips=1, queries_per_clip=2)


@pytest.fixture(scope="module")
def tiny_backend(tiny_model):
    from egoqa.backends.registry import load_backend

    return load_backend("transformers", model=str(tiny_model), dtype="float32", device="cpu")


@pytest.fixture
def serve(tiny_backend, tiny_model):
    """Start a dev server (in this process) with the faults given; closed after the test."""
    servers: list[DevServer] = []

    def start(faults: Faults | None = None, port: int = 0, **kw) -> DevServer:
        server = DevServer(tiny_backend, str(tiny_model), faults, port=port, **kw).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def openai_args(server_url: str, *extra: str) -> list[str]:
    return [
        "--set",
        'backend="openai"',
        "--set",
        f'openai.base_url="{server_url}"',
        "--set",
        "openai.backoff_s=0.01",
        *extra,
    ]


def enqueue(egoqa: InProcess, data, model: Path, *extra: str, style: str | None = None) -> None:
    args = ["enqueue", "-a", data.annotations, "--videos", data.videos, "--config", "demo"]
    args += ["--run", "r", "--set", f"model={json.dumps(str(model))}"]
    args += ["--set", "generation.do_sample=false"]
    if style:
        args += ["--set", f'style="{style}"', "--set", "generation.max_new_tokens=4"]
    egoqa(*args, *extra)


def jobs(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT j.*, (SELECT COUNT(*) FROM job_results r WHERE r.job_id = j.id) AS results "
            "FROM jobs j ORDER BY turn_index, clip_id, query_id"
        ).fetchall()
    con.close()
    return [dict(r) for r in rows]


# --- requests, faults and config (pure) --------------------------------------------------------


def _request(samples: int = 1, generation: GenerationConfig = GREEDY) -> Request:
    rng = np.random.default_rng(0)
    frames = Frames(rng.integers(0, 255, (3, 56, 84, 3), dtype=np.uint8), [0.0, 4.0, 8.0], 0.25)
    return Request(1, "Where is the cup?", frames, samples, generation, "be brief", seed=1234)


def test_png_frames_reach_the_server_pixel_for_pixel_before_the_question():
    request = _request()
    body = chat_body(request, "m", OpenAIConfig(base_url="http://x/v1", image_format="png"), 1)
    content = body["messages"][1]["content"]
    assert [p["type"] for p in content] == ["image_url"] * 3 + ["text"]
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    back = request_from(body)
    assert np.array_equal(back.frames.array, request.frames.array)
    assert back.frames.fps == 0.25 and back.prompt == request.prompt
    assert back.generation.do_sample is False and body["temperature"] == 0.0


def test_each_request_carries_the_seed_of_its_first_sample():
    sampled = GenerationConfig(do_sample=True, top_k=7)
    config = OpenAIConfig(base_url="http://x/v1")
    first = chat_body(_request(4, sampled), "m", config, 4, 0)
    third = chat_body(_request(4, sampled), "m", config, 1, 2)
    assert (first["seed"], first["n"]) == (sample_seed(1234, 0), 4)
    assert (third["seed"], third["n"]) == (sample_seed(1234, 2), 1)
    assert first["top_k"] == 7 and first["mm_processor_kwargs"] == {"fps": 0.25}
    hosted = chat_body(
        _request(4, sampled), "m", config.model_copy(update={"vllm_extensions": False}), 4
    )
    assert "top_k" not in hosted and "mm_processor_kwargs" not in hosted


@pytest.mark.parametrize(
    "status, message, expected",
    [
        (None, "", ("retry", "upstream_unavailable")),
        (429, "slow down", ("retry", "upstream_unavailable")),
        (500, "", ("retry", "upstream_unavailable")),
        (503, "", ("retry", "upstream_unavailable")),
        (401, "", ("fatal", None)),
        (403, "", ("fatal", None)),
        (400, "This model's maximum context length is 32768 tokens", ("fail", "context_too_long")),
        (400, "unknown field", ("fail", "bad_request")),
        (404, "model not found", ("fail", "bad_request")),
    ],
)
def test_replies_are_sorted_into_retry_stop_or_fail(status, message, expected):
    d = decide(status, message)
    what = "retry" if d.retry else "fatal" if d.fatal else "fail"
    assert (what, d.kind) == expected


def test_backoff_grows_is_capped_and_honours_retry_after():
    rng = random.Random(0)
    assert all(0 <= backoff_s(0, None, 1.0, 60, rng) <= 1.0 for _ in range(50))
    assert all(backoff_s(10, None, 1.0, 5.0, rng) <= 5.0 for _ in range(50))
    assert all(backoff_s(0, 7.5, 1.0, 60, rng) >= 7.5 for _ in range(50))


def test_api_key_in_place_of_its_variable_is_refused_without_echoing_it(tmp_path, small):
    egoqa = InProcess(tmp_path / "egoqa.db", tmp_path)
    args = ["enqueue", "-a", small.annotations, "--videos", small.videos, "--config", "demo"]
    bad = egoqa(
        *args,
        *openai_args("http://127.0.0.1:9/v1"),
        "--set",
        f'openai.api_key_env="{SECRET}"',
        check=False,
    )
    assert bad.returncode == 1 and "api_key_env takes the NAME" in bad.stderr
    assert SECRET not in bad.stderr + bad.stdout
    nourl = egoqa(*args, "--set", 'backend="openai"', check=False)
    assert nourl.returncode == 1 and "needs openai.base_url" in nourl.stderr


# --- end to end through `egoqa dev serve` --------------------------------------------------------


@pytest.mark.slow
def test_greedy_png_answers_equal_the_in_process_backend(
    tmp_path, small, tiny_model, serve, migrated_template
):
    server = serve()
    for name in ("remote.db", "local.db"):
        copy_db(migrated_template, tmp_path / name)
    remote = InProcess(tmp_path / "remote.db", tmp_path)
    local = InProcess(tmp_path / "local.db", tmp_path)
    enqueue(
        remote,
        small,
        tiny_model,
        *openai_args(server.base_url, "--set", 'openai.image_format="png"'),
    )
    enqueue(local, small, tiny_model)
    remote("work", "--until-done")
    local("work", "--until-done", "--device", "cpu", "--batch-size", "1")
    a, b = jobs(tmp_path / "remote.db"), jobs(tmp_path / "local.db")
    assert len(a) == len(b) == 6 and all(j["state"] == "done" for j in a + b)
    same = ("turn_name", "query_id", "prompt", "response", "responses", "prompt_tokens")
    assert [{k: j[k] for k in same} for j in a] == [{k: j[k] for k in same} for j in b]
    assert {j["served_model"] for j in a} == {str(tiny_model)}
    assert {j["system_fingerprint"] for j in a} == {server.fingerprint}
    assert {j["engine"] for j in a}.isdisjoint({j["engine"] for j in b})


def test_a_429_storm_and_dropped_connections_end_with_every_job_once(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve(Faults(error_every=2, retry_after_s=0.05, drop_every=3))
    egoqa = InProcess(migrated_db_path, tmp_path)
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url), style="baseline")
    egoqa("work", "--until-done")
    rows = jobs(tmp_path / "egoqa.db")
    assert [(j["state"], j["results"], j["attempts"]) for j in rows] == [("done", 1, 1)] * 2
    assert server.count > server.answered == 2  # the refused and dropped ones were retried


def test_retries_used_up_fail_the_job_as_upstream_unavailable(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve(Faults(error_every=1, error_status=503))
    egoqa = InProcess(migrated_db_path, tmp_path)
    extra = openai_args(server.base_url, "--set", "openai.retries=2", "--set", "max_attempts=2")
    enqueue(egoqa, small, tiny_model, *extra, style="baseline")
    egoqa("work", "--until-done")
    rows = jobs(tmp_path / "egoqa.db")
    assert [(j["state"], j["error_kind"], j["attempts"]) for j in rows] == [
        ("failed", "upstream_unavailable", 2)
    ] * 2
    assert server.count == 2 * 2 * 3  # jobs × attempts × (1 + retries)


def test_a_hung_request_times_out_and_is_retried(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve(Faults(hang_every=2))
    egoqa = InProcess(migrated_db_path, tmp_path)
    extra = openai_args(
        server.base_url, "--set", "openai.timeout_s=2", "--set", "openai.concurrency=1"
    )
    enqueue(egoqa, small, tiny_model, *extra, style="baseline")
    egoqa("work", "--until-done")
    rows = jobs(tmp_path / "egoqa.db")
    assert [(j["state"], j["results"]) for j in rows] == [("done", 1)] * 2
    # request 2 hung and timed out; a retry answered (a busy machine may time out more)
    assert server.count >= 3


@pytest.mark.parametrize(
    "faults, kind, attempts",
    [
        (Faults(max_model_len=10), "context_too_long", 1),
        (Faults(garble_every=1), "bad_response", 3),
        (Faults(empty_every=1), "empty_generation", 1),
    ],
)
def test_server_faults_fail_jobs_with_their_kind(
    tmp_path, migrated_db_path, small, tiny_model, serve, faults, kind, attempts
):
    server = serve(faults)
    egoqa = InProcess(migrated_db_path, tmp_path)
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url), style="baseline")
    egoqa("work", "--until-done")
    rows = jobs(tmp_path / "egoqa.db")
    assert [(j["state"], j["error_kind"], j["attempts"]) for j in rows] == [
        ("failed", kind, attempts)
    ] * 2


def test_each_job_is_recorded_as_it_arrives(tmp_path, migrated_db_path, small, tiny_model, serve):
    """Request 2 hangs; the other job is done (in the database) while it still hangs."""
    server = serve(Faults(hang_every=2))
    egoqa = InProcess(migrated_db_path, tmp_path)
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url), style="baseline")
    seen: list[list[str]] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [j["state"] for j in jobs(tmp_path / "egoqa.db")]
            if server.count >= 2 and "done" in states:
                seen.append(states)
                server.faults = Faults()  # the retry of the hung request is answered
                server.release_hangs()
                return
            time.sleep(0.05)
        seen.append(["timed out"])
        server.release_hangs()

    watcher = threading.Thread(target=watch)
    watcher.start()
    egoqa("work", "--until-done")
    watcher.join()
    assert sorted(seen[0]) == ["done", "running"]
    assert [(j["state"], j["results"]) for j in jobs(tmp_path / "egoqa.db")] == [("done", 1)] * 2


def test_a_refused_key_stops_the_worker_jobs_stay_ready_and_the_key_never_shows(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve(api_key_env="EGOQA_TEST_SERVER_KEY")
    egoqa = InProcess(migrated_db_path, tmp_path)
    extra = openai_args(server.base_url, "--set", 'openai.api_key_env="EGOQA_TEST_KEY"')
    enqueue(egoqa, small, tiny_model, *extra, style="baseline")
    wrong = {"EGOQA_TEST_KEY": SECRET + "-wrong", "EGOQA_TEST_SERVER_KEY": SECRET}
    refused = egoqa("work", "--until-done", env=wrong, check=False)
    assert refused.returncode == 3
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "EGOQA_TEST_KEY" in errors[0] and "HTTP 401" in errors[0]
    assert [(j["state"], j["attempts"]) for j in jobs(tmp_path / "egoqa.db")] == [("ready", 0)] * 2
    right = {"EGOQA_TEST_KEY": SECRET, "EGOQA_TEST_SERVER_KEY": SECRET}
    done = egoqa("work", "--until-done", "-v", env=right)
    assert [j["state"] for j in jobs(tmp_path / "egoqa.db")] == ["done"] * 2
    shown = [refused.stdout, refused.stderr, done.stdout, done.stderr]
    for command in (["status"], ["report", "--run", "r"], ["report", "--run", "r", "--json"]):
        p = egoqa(*command, env=right)
        shown += [p.stdout, p.stderr]
    shown.append(egoqa("sql", "SELECT * FROM turns", "--json", env=right).stdout)
    assert not any(SECRET in text for text in shown)
    for f in tmp_path.glob("egoqa.db*"):
        assert SECRET.encode() not in f.read_bytes()


def test_prices_give_the_cost_of_each_turn_and_of_the_run(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve()
    egoqa = InProcess(migrated_db_path, tmp_path)
    price = "openai.price_per_mtok={input = 2.0, output = 10.0}"
    enqueue(
        egoqa, small, tiny_model, *openai_args(server.base_url, "--set", price), style="baseline"
    )
    egoqa("work", "--until-done")
    cost = egoqa.json("report", "--run", "r")["cost"]
    rows = jobs(tmp_path / "egoqa.db")
    prompt, completion = (
        sum(j["prompt_tokens"] for j in rows),
        sum(j["completion_tokens"] for j in rows),
    )
    assert prompt > 0 and completion > 0
    assert cost["by_turn"][0]["prompt_tokens"] == prompt
    assert cost["total"] == pytest.approx((2.0 * prompt + 10.0 * completion) / 1e6)
    assert cost["saved_by_cache"] == 0
    text = egoqa("report", "--run", "r").stdout
    assert "cost in $" in text


def test_a_key_refused_mid_run_stops_the_worker_with_the_rest_ready(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    """The server starts refusing the key after the first answer: that job stays done, the
    worker stops with one line, the other job is ready with its attempt given back."""
    server = serve(Faults(refuse_key_after=1))
    egoqa = InProcess(migrated_db_path, tmp_path)
    extra = ["--set", 'openai.api_key_env="EGOQA_TEST_KEY"', "--set", "openai.concurrency=1"]
    enqueue(egoqa, small, tiny_model, *openai_args(server.base_url, *extra), style="baseline")
    p = egoqa("work", "--until-done", env={"EGOQA_TEST_KEY": SECRET}, check=False)
    assert p.returncode == 3 and "refused the key in $EGOQA_TEST_KEY" in p.stderr
    assert sorted((j["state"], j["attempts"]) for j in jobs(tmp_path / "egoqa.db")) == [
        ("done", 1),
        ("ready", 0),
    ]
    assert SECRET not in p.stderr + p.stdout


def test_status_warns_when_one_engines_results_came_from_two_server_fingerprints(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    server = serve()
    egoqa = InProcess(migrated_db_path, tmp_path)
    enqueue(
        egoqa, small, tiny_model, *openai_args(server.base_url), "--limit", "1", style="baseline"
    )
    egoqa("work", "--until-done")
    assert "fingerprints" not in egoqa("status").stderr
    server.fingerprint = "egoqa-dev-reconfigured"  # the server restarted with other settings
    args = ["--run", "r2", *openai_args(server.base_url)]
    enqueue(egoqa, small, tiny_model, *args, style="baseline")
    egoqa("work", "--until-done")
    rows = jobs(tmp_path / "egoqa.db")
    assert len({j["engine"] for j in rows}) == 1 and len(rows) == 2
    warning = egoqa("status").stderr
    assert "warning: engine" in warning and "2 server fingerprints" in warning
    assert len(egoqa.json("status")["mixed_fingerprints"]) == 1


def test_jobs_waiting_behind_slow_requests_keep_their_lease(
    tmp_path, migrated_db_path, small, tiny_model, serve
):
    """One request at a time, 2 s each, a 1.5 s lease: the second job waits longer than its
    lease, while the worker reaps every 0.2 s; the heartbeat (every 0.1 s) renews it, so nothing
    is reaped and each job runs once."""
    server = serve(Faults(latency_s=2.0))
    egoqa = InProcess(migrated_db_path, tmp_path)
    extra = openai_args(server.base_url, "--set", "openai.concurrency=1")
    enqueue(egoqa, small, tiny_model, *extra, style="baseline")
    waits = {"EGOQA_HEARTBEAT_S": "0.1", "EGOQA_REAP_S": "0.2"}
    egoqa("work", "--until-done", "--lease", "1.5", env=waits)
    rows = jobs(tmp_path / "egoqa.db")
    assert [(j["state"], j["attempts"], j["results"]) for j in rows] == [("done", 1, 1)] * 2
    assert server.count == 2
