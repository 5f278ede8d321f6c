"""`egoqa work`: start worker processes (one per GPU group, or on the CPU), supervise them, and
show their progress; or run one worker in this process.

`egoqa.cli.app` adds it (`register`); torch and the backends load only when a worker starts.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Annotated

import typer

from egoqa.cli.common import (
    STATE,
    VerboseOpt,
    open_database,
    rich_console,
)
from egoqa.errors import ConfigError, EgoqaError


def work(
    gpus: Annotated[
        str | None, typer.Option("--gpus", help="GPU ids, e.g. 0-7: one worker per GPU group.")
    ] = None,
    gpus_per_worker: Annotated[
        int,
        typer.Option(
            "--gpus-per-worker", min=1, help="GPUs per worker (device_map=auto across them)."
        ),
    ] = 1,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, help="Worker processes (with --device cpu, or without --gpus)."
        ),
    ] = 1,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Serve this model (default: the one with most pending jobs)."),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine", help="Serve this engine (model + dtype + ...; its id is in `egoqa status`)."
        ),
    ] = None,
    batch_size: Annotated[
        str, typer.Option("--batch-size", help="auto, or a fixed number of requests per batch.")
    ] = "auto",
    until_done: Annotated[
        bool,
        typer.Option(
            "--until-done", help="Exit when nothing for this model is ready, running or blocked."
        ),
    ] = False,
    lease: Annotated[
        float | None,
        typer.Option("--lease", min=1.0, help="Lease seconds (default: the run config's)."),
    ] = None,
    max_batches: Annotated[int | None, typer.Option("--max-batches", hidden=True)] = None,
    single: Annotated[
        bool, typer.Option("--single", hidden=True, help="Run one worker in this process.")
    ] = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run workers: claim batches, generate, write back. Resumable; Ctrl-C releases held jobs."""
    from egoqa.work import waits

    waits.check()  # $EGOQA_*_S settings: a bad one stops here, not in every worker
    if model is not None and model.startswith("prior:"):
        raise EgoqaError(f"{model} is a prior baseline, computed at enqueue: it needs no worker")
    if gpus is not None and not single:
        _refuse_gpus_in_use(gpus)  # first: other workers on this host may hold them
    groups = _check_work_options(gpus, gpus_per_worker, device, workers, batch_size, single)
    choice = (model, engine)
    if single or (gpus is None and workers == 1):
        _work_single(choice, batch_size, device, until_done, lease, max_batches, supervised=single)
        return
    work_many(groups, device, workers, choice, batch_size, until_done, lease, max_batches)


def _check_work_options(gpus, gpus_per_worker, device, workers, batch_size, single):
    """Refuse bad options before a database is opened or a worker started (so also when
    nothing is pending); returns the GPU groups of --gpus, if given."""
    from egoqa.work import devices
    from egoqa.work import supervisor as sv

    if batch_size != "auto" and (not batch_size.isdigit() or not 1 <= int(batch_size) <= 4096):
        raise typer.BadParameter(
            "--batch-size takes 'auto' or a positive number (at most 4096, a config's batch.size)"
        )
    index = devices.check_device(device)
    groups = None
    if gpus is not None:
        if device == "cpu":
            raise ConfigError(
                f"--gpus {gpus} and --device cpu contradict each other: drop --gpus to run on "
                "the CPU, or drop --device cpu"
            )
        groups = sv.gpu_groups(sv.parse_gpus(gpus), gpus_per_worker)
    if single:  # started by a supervisor that checked the machine; it sees only its own GPUs
        return groups
    if groups is not None:
        devices.require_gpus(f"--gpus {gpus}", 1 + max(int(g) for grp in groups for g in grp))
    elif index is not None:
        many = workers > 1
        asked = f"--device {device}" + (f" --workers {workers}" if many else "")
        devices.require_gpus(asked, workers if many else index + 1)
    return groups


def _work_single(
    choice, batch_size, device, until_done, lease, max_batches, supervised=False
) -> None:
    from egoqa.work.progress import ProgressView
    from egoqa.work.stopping import die_with_supervisor
    from egoqa.work.supervisor import WORKER_CANNOT_START
    from egoqa.work.worker import Worker, WorkerOptions

    if supervised:
        die_with_supervisor()
    try:
        started = _start_worker(choice, device)
    except EgoqaError as exc:
        if supervised:  # bad model path, schema mismatch, ...: restarting will not fix it
            exc.exit_code = WORKER_CANNOT_START
        raise
    if started is None:
        typer.echo("nothing to do: no pending jobs (run `egoqa enqueue` first)", err=True)
        return
    db, served, backend = started
    opts = WorkerOptions(
        batch_size=batch_size if batch_size == "auto" else int(batch_size),
        device=device,
        until_done=until_done,
        lease_s=lease,
        max_batches=max_batches,
    )
    worker = Worker(db, served, backend, opts)
    # A supervised worker leaves the display to its supervisor, which shows all of them.
    console = rich_console(stderr=True)
    view = None if supervised else ProgressView(db, served.engine, served.model, console)
    stats = _run_with_progress(worker, view)
    typer.echo(stats.summary(), err=True)
    if not supervised:
        waiting_note(db, served.engine)
    if (
        worker.signals.exit_code
    ):  # stopped, not finished: 130 / 143, as shells and schedulers expect
        raise typer.Exit(worker.signals.exit_code)


def _run_with_progress(worker, view):
    """Run the worker here; tick the progress display from a side thread meanwhile."""
    if view is None:
        return worker.run()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            try:
                view.tick()
            except EgoqaError:  # a busy or full database: the next tick may succeed
                continue

    ticker = threading.Thread(target=tick, name="egoqa-progress", daemon=True)
    ticker.start()
    try:
        return worker.run()
    finally:
        stop.set()
        ticker.join(timeout=5)
        # A database that stopped the worker may stop the display too: its error is the one shown.
        with contextlib.suppress(EgoqaError):
            view.close()


def quiet_hugging_face() -> None:
    """No "Loading weights" / "Writing model shards" bars or advisories at default verbosity."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def waiting_note(db, served: str, before: bool = False) -> None:
    """Jobs of other engines are not this worker's: say they wait, and how to serve them."""
    from egoqa.store.work import pending_engines

    others = [(e, m, n) for e, m, n in pending_engines(db) if e != served]
    if others:
        listed = ", ".join(f"{e} ({m}) {n}" for e, m, n in others)
        when = "also pending" if before else "still waiting for another engine"
        typer.echo(f"note: jobs {when}: {listed}; `egoqa work --engine ID` serves one", err=True)


def _start_worker(choice, device):
    """Open the database and load the engine's model: (db, served engine, backend), or None."""
    from egoqa.backends.modelpath import check_model_path
    from egoqa.work.worker import load_backend_for, resolve_engine

    db = open_database()
    served = resolve_engine(db, *choice)
    if served is None:
        return None
    if served.spec.get("backend") not in ("fake", "openai"):  # a served name is not a path
        check_model_path(served.model)  # before torch and transformers: a wrong path fails fast
    if choice == (None, None):  # chosen by most pending jobs: a tie or a second model is said
        waiting_note(db, served.engine, before=True)
    threads = os.environ.get("EGOQA_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if served.spec.get("backend") == "transformers" and STATE.verbose == 0:
        quiet_hugging_face()
    return db, served, load_backend_for(served, device)


def work_many(groups, device, workers, choice, batch_size, until_done, lease, max_batches) -> None:
    from egoqa.work import supervisor as sv
    from egoqa.work.progress import ProgressView
    from egoqa.work.worker import resolve_engine

    db = open_database()
    served = resolve_engine(db, *choice)
    if served is None:
        typer.echo("nothing to do: no pending jobs (run `egoqa enqueue` first)", err=True)
        return
    if choice == (None, None):
        waiting_note(db, served.engine, before=True)
    name = served.model
    release_dead_workers(db)
    if groups is not None:
        slots = sv.gpu_slots(groups)
    else:
        slots = (
            sv.cpu_slots(workers)
            if device in ("cpu", "auto")
            else sv.gpu_slots([[str(i)] for i in range(workers)])
        )
    args = ["--engine", served.engine, "--batch-size", batch_size, "--device", device]
    args += ["-v"] * STATE.verbose
    args += ["--until-done"] if until_done else []
    args += ["--lease", str(lease)] if lease else []
    args += ["--max-batches", str(max_batches)] if max_batches else []
    view = ProgressView(db, served.engine, name, rich_console(stderr=True))
    supervisor = sv.Supervisor(sv.worker_command(args), slots, sv.db_env(db.url), view.tick)
    code = supervisor.run()
    c = view.close()
    typer.echo(f"{c.done} done, {c.failed} failed of {c.total} jobs for {name}", err=True)
    waiting_note(db, served.engine)
    if supervisor.stop_signal:
        raise typer.Exit(128 + supervisor.stop_signal)
    if code:
        gave_up = sum(s.gave_up for s in slots)
        raise EgoqaError(
            f"{gave_up} of {len(slots)} worker(s) gave up (their errors are above): fix that and "
            "run `egoqa work` again; finished jobs are kept"
        )


def release_dead_workers(db) -> None:
    """Jobs of workers that died (`kill -9`, a crashed node) go back to the queue at once."""
    from egoqa.answers.scoring import score_items
    from egoqa.store import workers as registry

    released = registry.release_dead(db)
    score_items(db, job_ids=released.failed)
    if released.workers:
        typer.echo(
            f"released {released.requeued} job(s) of {len(released.workers)} dead worker(s)",
            err=True,
        )


def _refuse_gpus_in_use(gpus: str) -> None:
    """GPUs that live workers of an earlier `egoqa work` on this host still hold are refused."""
    from egoqa.store import workers as registry
    from egoqa.store.db import resolve_url, sqlite_path
    from egoqa.work import supervisor as sv

    wanted = sv.parse_gpus(gpus)
    path = sqlite_path(resolve_url(STATE.db))
    if path is not None and not path.exists():
        return  # no database yet: nothing can hold a GPU (and none is created here)
    held = registry.gpus_in_use(open_database(), wanted)
    if held:
        who = ", ".join(f"GPU {g} by pid {pid}" for g, pid, _ in held)
        raise EgoqaError(
            f"--gpus {','.join(wanted)}: live workers of an earlier `egoqa work` on this host "
            f"hold {who}: stop them (kill PID) or choose other --gpus"
        )


# --- db ---------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    app.command()(work)
