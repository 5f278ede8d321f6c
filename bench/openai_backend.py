"""`backend = "openai"`: what the client side costs, and what the protocol costs on the tiny model.

(a) A real in-process worker runs a synthetic dataset (one job per query, 8 frames of 112 px a
job, JPEG) against `egoqa dev serve`'s server over the deterministic fake backend with a fixed
latency (200 ms a request, no model time): throughput against the ideal `concurrency / latency`,
and the client's own time per request — preparing (frames, prompt), encoding the request (JPEG,
base64, JSON) and recording — which is what egoqa adds to every request whatever the server.

(b) The tiny Qwen2.5-VL (CPU) on the same jobs: in process (batches of 8, and one request at a
time) and through the dev server (which generates one request at a time), wall time per job.
The server path costs HTTP, PNG/JPEG and base64 encoding and decoding on top of the model; the
ratio against one-at-a-time in process is the protocol's overhead.

Reproduce: `.venv/bin/python bench/openai_backend.py` (a few minutes on 2 cores); `--quick`
for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CACHE, banner, table

from egoqa.backends import openai as client
from egoqa.dev.server import DevServer
from egoqa.dev.synth import write_synth_dataset
from egoqa.plan.config import load_config
from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store.db import open_db
from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

LATENCY_S = 0.2


def run_worker(data, config, backend, db_path: Path) -> tuple[float, object, Worker]:
    """Enqueue into a fresh database and run one worker to the end: (wall, stats, worker).

    `worker.frames_s` is the main thread's time decoding frames (any engine pays it).
    """
    db = open_db(db_path, create=True)
    dataset = load_nlq(data.annotations, data.videos, data.metadata)
    report = enqueue_run(db, dataset, config, load_style(config.style), "bench")
    served = resolve_engine(db)
    backend = backend if backend is not None else load_backend_for(served, "cpu")
    worker = Worker(db, served, backend, WorkerOptions(until_done=True, batch_size="auto"))
    decoder, spent = worker.runner.decoder, [0.0]
    for name in ("frames", "prefetch"):
        setattr(decoder, name, _timed(getattr(decoder, name), spent))
    t0 = time.perf_counter()
    stats = worker.run()
    wall = time.perf_counter() - t0
    worker.frames_s = spent[0]
    db.dispose()
    assert stats.done == report.jobs_total and stats.failed == 0, (stats, report)
    return wall, stats, worker


def _timed(fn, spent: list[float]):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    return timed


class Encoding:
    """Time spent building request bodies (frames to data URLs, JSON), in every request thread."""

    def __init__(self) -> None:
        self.seconds, self.calls = 0.0, 0
        self._body = client.chat_body

    def __enter__(self) -> Encoding:
        @functools.wraps(self._body)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._body(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        client.chat_body = timed
        return self

    def __exit__(self, *exc) -> None:
        client.chat_body = self._body


SERVER = """
import sys
from egoqa.backends.fake import FakeBackend
from egoqa.dev.server import DevServer, Faults
server = DevServer(FakeBackend(), sys.argv[1], Faults(latency_s=float(sys.argv[2])))
print(server.port, flush=True)
server.serve_forever()
"""


def client_side(data, model: str, tmp: Path, concurrency: int, repeats: int) -> list[list]:
    """The server runs in a process of its own: this process's CPU time is the client's."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, model, str(LATENCY_S)], stdout=subprocess.PIPE, text=True
    )
    rows = []
    try:
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        overrides = [
            f'model="{model}"', 'style="baseline"', 'backend="openai"',
            f'openai.base_url="{url}"', f"openai.concurrency={concurrency}",
        ]  # fmt: skip
        config = load_config("demo", overrides)
        for i in range(repeats):
            with Encoding() as enc:
                cpu = time.process_time()
                wall, stats, worker = run_worker(data, config, None, tmp / f"a{i}.db")
                cpu = time.process_time() - cpu
            n = stats.done
            ideal = n * LATENCY_S / concurrency
            per = 1000 / n
            rows.append([
                i + 1, n, f"{wall:.2f}", f"{n / wall:.1f}", f"{concurrency / LATENCY_S:.0f}",
                f"{ideal / wall:.1%}", f"{cpu * per:.2f}", f"{worker.frames_s * per:.2f}",
                f"{(cpu - worker.frames_s) * per:.2f}", f"{stats.prepare_s * per:.2f}",
                f"{enc.seconds * 1000 / max(1, enc.calls):.2f}", f"{stats.record_s * per:.2f}",
            ])  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def protocol(data, model: str, tmp: Path, repeats: int) -> list[list]:
    from egoqa.backends.registry import load_backend

    tiny = load_backend("transformers", model=model, dtype="float32", device="cpu")
    server = DevServer(tiny, model).start()
    base = [f'model="{model}"', 'style="baseline"', "generation.do_sample=false"]
    remote = base + ['backend="openai"', f'openai.base_url="{server.base_url}"']
    systems = {
        "in process, batches of 8": (load_config("demo", base), tiny),
        "in process, one at a time": (load_config("demo", [*base, "batch.size=1"]), tiny),
        "dev server (JPEG)": (load_config("demo", remote), None),
        "dev server (PNG)": (load_config("demo", [*remote, 'openai.image_format="png"']), None),
    }
    walls: dict[str, list[float]] = {name: [] for name in systems}
    jobs = 0
    try:
        for i in range(repeats):
            for k, (name, (config, backend)) in enumerate(systems.items()):  # side by side
                wall, stats, _ = run_worker(data, config, backend, tmp / f"b{i}-{k}.db")
                walls[name].append(wall / stats.done)
                jobs = stats.done
    finally:
        server.close()
    one = statistics.median(walls["in process, one at a time"])
    return [
        [name, jobs, f"{1000 * min(w):.0f} / {1000 * statistics.median(w):.0f}",
         f"{statistics.median(w) / one:.2f}"]
        for name, w in walls.items()
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small dataset, one run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    clips, per_clip, repeats = (2, 4, 1) if args.quick else (8, 10, args.repeats)
    print(banner("openai_backend", argv), flush=True)
    import torch

    from egoqa.dev.tinymodel import build_tiny_model

    # One intra-op thread everywhere: a thread the server answers on starts with one, and on a
    # busy 2-core machine two threads in the worker's main thread were 5x slower than one.
    torch.set_num_threads(1)
    model = str(build_tiny_model(CACHE / "tiny-qwen2.5-vl"))
    data = write_synth_dataset(
        CACHE / f"synth-{clips}x{per_clip}", clips=clips, queries_per_clip=per_clip
    )
    small = write_synth_dataset(CACHE / "synth-2x2", clips=2, queries_per_clip=2)
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        rows = client_side(data, model, Path(tmp), args.concurrency, repeats)
        head = [
            "run", "jobs", "wall s", "jobs/s", "ideal jobs/s", "of ideal", "client CPU ms/job",
            "frames ms/job", "CPU without frames ms/job", "prepare ms/job", "encode ms/request",
            "record ms/job",
        ]  # fmt: skip
        title = (
            f"Client side against a {1000 * LATENCY_S:.0f} ms server, concurrency "
            f"{args.concurrency}"
        )
        print(table(title, head, rows), flush=True)
        rows = protocol(small, model, Path(tmp), repeats)
        head = ["engine", "jobs", "ms/job min / median", "÷ in process one at a time"]
        print(table("Tiny model: through the dev server vs in process", head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
