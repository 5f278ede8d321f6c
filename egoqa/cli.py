"""The `egoqa` command line: thin commands that parse, call one core function, and render.

Data goes to stdout (rich tables, or --json / --csv); logs and progress go to stderr. Only
`EgoqaError`s are turned into one-line messages; anything else is a bug and shows a traceback.
Heavy modules (torch, transformers, decord) are imported by `work` and `dev` alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from egoqa import __version__
from egoqa.cli_common import (
    STATE,
    CsvOpt,
    JsonOpt,
    PlainFlagsGroup,
    RunOpt,
    VerboseOpt,
    configure_logging,
    emit_table,
    open_database,
    rich_console,
)
from egoqa.errors import ConfigError, EgoqaError

app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Multi-turn prompting of Qwen2.5-VL over Ego4D NLQ, as a resumable job system.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Create, upgrade and inspect the database schema.",
    no_args_is_help=True,
)
dev_app = typer.Typer(
    cls=PlainFlagsGroup,
    help="Build the offline inputs: a tiny Qwen2.5-VL and a synthetic dataset.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"egoqa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    db: Annotated[
        str | None,
        typer.Option("--db", envvar="EGOQA_DB", help="Database path or URL (default ./egoqa.db)."),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "-v",
            "--verbose",
            count=True,
            show_default=False,
            help="More logging on stderr (-vv for debug).",
        ),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Plan with `enqueue`, run with `work`, watch with `status`, read with `report` and `sql`."""
    STATE.db = db
    configure_logging(verbose)


# --- enqueue ---------------------------------------------------------------------------------


@app.command()
def enqueue(
    annotations: Annotated[
        Path, typer.Option("--annotations", "-a", help="Ego4D NLQ file (nlq_val.json, ...).")
    ],
    videos: Annotated[
        Path,
        typer.Option(
            "--videos", help="Directory of <clip_uid>.mp4 (or <video_uid>.mp4 full videos)."
        ),
    ],
    config: Annotated[
        str,
        typer.Option(
            "--config",
            "-c",
            help="Preset name (baseline, coarse, dense, coarse_cot, demo), TOML file, or prior:NAME.",
        ),
    ],
    metadata: Annotated[
        Path | None, typer.Option("--metadata", help="Optional ego4d.json metadata.")
    ] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Run name (default: the config's name).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set sampler.frames=16."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Take only the first N usable queries.")
    ] = None,
    recompute: Annotated[
        bool,
        typer.Option(
            "--recompute", help="Re-queue this plan's existing jobs (old results kept as history)."
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = 0,
    fit: Annotated[
        Path | None,
        typer.Option(
            "--fit", help="Training annotations a prior learns from (prior:length_prior)."
        ),
    ] = None,
) -> None:
    """Plan a run: read the annotations, write clips, queries and jobs. Idempotent.

    `--config prior:whole_clip|uniform_random|length_prior` computes a prior-only baseline now.
    """
    if config.startswith("prior:") or fit is not None:
        from egoqa.cli_report import enqueue_prior

        enqueue_prior(
            annotations, videos, config, metadata, run, set_, limit, recompute, fit, as_json
        )
        return
    from egoqa.config import load_config
    from egoqa.dataset import load_nlq, require_queries
    from egoqa.plan import enqueue_run
    from egoqa.prompts import load_style

    cfg = load_config(config, set_ or ())
    style = load_style(cfg.style)
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
    _show_skipped(dataset.skipped)
    require_queries(dataset, annotations, videos)  # before a database (or a run) is made
    db = open_database(create=True)
    name = run or Path(config).stem
    report = enqueue_run(
        db, dataset, cfg, style, name, annotations=str(annotations), recompute=recompute
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
    turns = ", ".join(f"{k} {v}" for k, v in report.per_turn.items())
    typer.echo(
        f"run {report.run}: {report.queries} queries on {report.clips} clips "
        f"(skipped: {skipped})\n"
        f"jobs: {report.jobs_total} planned, {report.jobs_new} new, {report.jobs_reused} reused"
        f"{f', {report.recomputed} re-queued' if recompute else ''} — per turn: {turns}"
    )
    if report.replanned:
        typer.echo(f"re-planned run {report.run}: {report.replanned}", err=True)
    if report.repointed:
        typer.echo(
            f"{report.repointed} queries now point at new jobs (their inputs or the plan "
            "changed); their earlier answers stay as history",
            err=True,
        )


def _show_skipped(skipped: list, shown: int = 5) -> None:
    """The first few skipped records, each named so it can be found in the file."""
    for s in skipped[:shown]:
        typer.echo(f"  skipped {s.reason} ({s.where()}): {s.detail}", err=True)
    if len(skipped) > shown:
        typer.echo(f"  ... and {len(skipped) - shown} more skipped records", err=True)


# --- status / runs / sql / retry -------------------------------------------------------------


@app.command()
def status(run: RunOpt = None, as_json: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Jobs by run × turn × state, engines, and the leases workers hold now."""
    from egoqa.store import read as st
    from egoqa.store import workers as registry

    db = open_database(readonly=True)
    table, engines = st.progress(db, run), st.engines(db)
    held = [
        {"worker": w, "host": h, "pid": p, "jobs": n, "lease_ends_in_s": round(max(0.0, t or 0))}
        for w, h, p, n, t in registry.held_jobs(db)
    ]
    if as_json:
        doc = {"progress": table.records(), "jobs": st.job_states(db)}
        doc |= {"engines": engines.records(), "held": held, "zoom_stops": st.zoom_stops(db)}
        typer.echo(json.dumps(doc, indent=2))
        return
    emit_table("progress (distinct jobs; per-clip turns counted once)", table.columns, table.rows)
    emit_table("engines (egoqa work --engine ID serves one)", engines.columns, engines.rows)
    if held:
        emit_table("held by workers now", list(held[0]), [tuple(h.values()) for h in held])
    stops = st.zoom_stops(db)
    if stops:
        title = "zooms that stopped short of their window (the failures view lists each)"
        emit_table(title, ["reason", "levels"], list(stops.items()))
    states = st.job_states(db)
    typer.echo("all jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"))


@app.command()
def runs(as_json: JsonOpt = False, as_csv: CsvOpt = False, verbose: VerboseOpt = 0) -> None:
    """The runs in this database."""
    from egoqa.store import read as st

    t = st.runs(open_database(readonly=True))
    emit_table("runs", t.columns, t.rows, as_json=as_json, as_csv=as_csv)


@app.command()
def sql(
    statement: Annotated[
        str, typer.Argument(help='One SQL statement, e.g. "SELECT * FROM progress".')
    ],
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, help="Cancel the statement after this many seconds."),
    ] = None,
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Run a read-only SQL query (the database refuses writes); Ctrl-C cancels it."""
    from egoqa.store import read as st
    from egoqa.store.sqlrole import open_sql_db

    t = st.read_only_sql(open_sql_db(open_database(readonly=True)), statement, timeout)
    emit_table(None, t.columns, t.rows, as_json=as_json, as_csv=as_csv)


@app.command()
def retry(run: RunOpt = None, verbose: VerboseOpt = 0) -> None:
    """Re-queue failed jobs (and the dependents they failed); release dead workers' jobs."""
    from egoqa.store import graph
    from egoqa.store import read as st

    db = open_database()
    _release_dead_workers(db)
    n = graph.retry(db, st.failed_job_ids(db, run))
    typer.echo(f"re-queued {n} failed job(s)")


# --- work -----------------------------------------------------------------------------------


@app.command()
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
    if model is not None and model.startswith("prior:"):
        raise EgoqaError(f"{model} is a prior baseline, computed at enqueue: it needs no worker")
    if gpus is not None and not single:
        _refuse_gpus_in_use(gpus)  # first: other workers on this host may hold them
    groups = _check_work_options(gpus, gpus_per_worker, device, workers, batch_size, single)
    choice = (model, engine)
    if single or (gpus is None and workers == 1):
        _work_single(choice, batch_size, device, until_done, lease, max_batches, supervised=single)
        return
    _work_many(groups, device, workers, choice, batch_size, until_done, lease, max_batches)


def _check_work_options(gpus, gpus_per_worker, device, workers, batch_size, single):
    """Refuse bad options before a database is opened or a worker started (so also when
    nothing is pending); returns the GPU groups of --gpus, if given."""
    from egoqa import devices
    from egoqa import supervisor as sv

    if batch_size != "auto" and (not batch_size.isdigit() or int(batch_size) < 1):
        raise typer.BadParameter("--batch-size takes 'auto' or a positive number")
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
    from egoqa.progress import ProgressView
    from egoqa.stopping import die_with_supervisor
    from egoqa.supervisor import WORKER_CANNOT_START
    from egoqa.worker import Worker, WorkerOptions

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


def _start_worker(choice, device):
    """Open the database and load the engine's model: (db, served engine, backend), or None."""
    from egoqa.worker import load_backend_for, resolve_engine

    db = open_database()
    served = resolve_engine(db, *choice)
    if served is None:
        return None
    threads = os.environ.get("EGOQA_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if served.spec.get("backend") == "transformers" and STATE.verbose == 0:
        quiet_hugging_face()
    return db, served, load_backend_for(served, device)


def _work_many(groups, device, workers, choice, batch_size, until_done, lease, max_batches) -> None:
    from egoqa import supervisor as sv
    from egoqa.progress import ProgressView
    from egoqa.worker import resolve_engine

    db = open_database()
    served = resolve_engine(db, *choice)
    if served is None:
        typer.echo("nothing to do: no pending jobs (run `egoqa enqueue` first)", err=True)
        return
    name = served.model
    _release_dead_workers(db)
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
    if supervisor.stop_signal:
        raise typer.Exit(128 + supervisor.stop_signal)
    if code:
        gave_up = sum(s.gave_up for s in slots)
        raise EgoqaError(
            f"{gave_up} of {len(slots)} worker(s) gave up (their errors are above): fix that and "
            "run `egoqa work` again; finished jobs are kept"
        )


def _release_dead_workers(db) -> None:
    """Jobs of workers that died (`kill -9`, a crashed node) go back to the queue at once."""
    from egoqa.scoring import score_items
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
    from egoqa import supervisor as sv
    from egoqa.store import workers as registry
    from egoqa.store.db import resolve_url, sqlite_path

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


@db_app.command("upgrade")
def db_upgrade(verbose: VerboseOpt = 0) -> None:
    """Create the schema or upgrade it to this egoqa's version (and, on PostgreSQL, the
    read-only role `egoqa sql` runs as)."""
    from egoqa.store.db import open_db, schema_state, shown_url
    from egoqa.store.sqlrole import ensure_reader

    db = open_db(STATE.db, create=True)
    reader = ensure_reader(db)
    where = f"; egoqa sql runs as the read-only role {reader}" if reader else ""
    typer.echo(f"{shown_url(db.url)}: schema at {schema_state(db.engine).current}{where}")


@db_app.command("current")
def db_current(verbose: VerboseOpt = 0) -> None:
    """Show the database's schema revision and this egoqa's."""
    from egoqa.store.db import friendly_errors, make_engine, resolve_url, schema_state, shown_url

    url = resolve_url(STATE.db)
    with friendly_errors(url):
        s = schema_state(make_engine(url, readonly=True))
    if s.ok:
        hint = ""
    elif s.newer:
        hint = " — newer than this egoqa: upgrade egoqa (pip install -U egoqa) to use it"
    else:
        hint = " — run `egoqa db upgrade`"
    typer.echo(f"{shown_url(url)}: schema {s.current or 'none'}, egoqa head {s.head}{hint}")


from egoqa.cli_dev import register as _register_dev  # noqa: E402
from egoqa.cli_report import register as _register_report  # noqa: E402

_register_dev(app, dev_app)
_register_report(app)


def main() -> None:
    """Console entry point: the error boundary for the project's own errors."""
    try:
        app()
    except EgoqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
