"""The `egoqa` command line: thin commands that parse, call one core function, and render.

Data goes to stdout (rich tables, or --json / --csv); logs and progress go to stderr. Only
`EgoqaError`s are turned into one-line messages; anything else is a bug and shows a traceback.
Heavy modules (torch, transformers, decord) are imported by `work` and `dev` alone.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from egoqa import __version__
from egoqa.errors import EgoqaError

app = typer.Typer(
    help="Multi-turn prompting of Qwen2.5-VL over Ego4D NLQ, as a resumable job system.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Create, upgrade and inspect the database schema.", no_args_is_help=True)
dev_app = typer.Typer(
    help="Build the offline inputs: a tiny Qwen2.5-VL and a synthetic dataset.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
app.add_typer(dev_app, name="dev")


class State:
    db: str | None = None
    verbose: int = 0


STATE = State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run.")]


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
        typer.Option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug)."),
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Plan with `enqueue`, run with `work`, watch with `status`, read with `report` and `sql`."""
    STATE.db, STATE.verbose = db, verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("egoqa").setLevel(min(level, logging.INFO))


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=False)


def emit_table(
    title: str | None,
    columns: list[str],
    rows: list,
    *,
    as_json: bool = False,
    as_csv: bool = False,
) -> None:
    """The one place tables become output: rich on a terminal, or JSON / CSV."""
    if as_json:
        typer.echo(
            json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=2, default=str)
        )
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
        return
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(str(c))
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    _console().print(t)


def open_database(create: bool = False, readonly: bool = False):
    from egoqa.store.db import open_db

    return open_db(STATE.db, create=create, readonly=readonly)


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
            help="Preset name (baseline, coarse, dense, coarse_cot, demo) or TOML file.",
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
) -> None:
    """Plan a run: read the annotations, write clips, queries and jobs. Idempotent."""
    from egoqa.config import load_config
    from egoqa.dataset import load_nlq
    from egoqa.plan import enqueue_run
    from egoqa.prompts import load_style

    cfg = load_config(config, set_ or ())
    style = load_style(cfg.style)
    dataset = load_nlq(annotations, videos, metadata, limit=limit)
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
    for s in dataset.skipped[:5]:
        typer.echo(f"  skipped {s.reason}: {s.detail}", err=True)
    if len(dataset.skipped) > 5:
        typer.echo(f"  ... and {len(dataset.skipped) - 5} more skipped records", err=True)


# --- status / runs / sql / retry -------------------------------------------------------------


@app.command()
def status(run: RunOpt = None, as_json: JsonOpt = False) -> None:
    """Jobs by run × turn × state."""
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
        typer.echo(json.dumps(doc | {"engines": engines.records(), "held": held}, indent=2))
        return
    emit_table("progress (distinct jobs; per-clip turns counted once)", table.columns, table.rows)
    emit_table("engines (egoqa work --engine ID serves one)", engines.columns, engines.rows)
    if held:
        emit_table("held by workers now", list(held[0]), [tuple(h.values()) for h in held])
    states = st.job_states(db)
    typer.echo("all jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"))


@app.command()
def runs(as_json: JsonOpt = False, as_csv: CsvOpt = False) -> None:
    """The runs in this database."""
    from egoqa.store import read as st

    t = st.runs(open_database(readonly=True))
    emit_table("runs", t.columns, t.rows, as_json=as_json, as_csv=as_csv)


@app.command()
def sql(
    statement: Annotated[
        str, typer.Argument(help='One SQL statement, e.g. "SELECT * FROM progress".')
    ],
    as_json: JsonOpt = False,
    as_csv: CsvOpt = False,
) -> None:
    """Run a read-only SQL query (the database refuses writes)."""
    from egoqa.store import read as st
    from egoqa.store.sqlrole import open_sql_db

    t = st.read_only_sql(open_sql_db(open_database(readonly=True)), statement)
    emit_table(None, t.columns, t.rows, as_json=as_json, as_csv=as_csv)


@app.command()
def retry(run: RunOpt = None) -> None:
    """Re-queue failed jobs (and the dependents they failed)."""
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
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
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
) -> None:
    """Run workers: claim batches, generate, write back. Resumable; Ctrl-C releases held jobs."""
    if batch_size != "auto" and not batch_size.isdigit():
        raise typer.BadParameter("--batch-size takes 'auto' or a positive number")
    choice = (model, engine)
    if single or (gpus is None and workers == 1):
        _work_single(choice, batch_size, device, until_done, lease, max_batches, supervised=single)
        return
    _work_many(
        gpus, gpus_per_worker, device, workers, choice, batch_size, until_done, lease, max_batches
    )


def _work_single(
    choice, batch_size, device, until_done, lease, max_batches, supervised=False
) -> None:
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
    stats = worker.run()
    typer.echo(stats.summary(), err=True)
    if (
        worker.signals.exit_code
    ):  # stopped, not finished: 130 / 143, as shells and schedulers expect
        raise typer.Exit(worker.signals.exit_code)


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
    return db, served, load_backend_for(served, device)


def _work_many(
    gpus, gpus_per_worker, device, workers, choice, batch_size, until_done, lease, max_batches
) -> None:
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
    if gpus is not None:
        wanted = sv.parse_gpus(gpus)
        _refuse_gpus_in_use(db, wanted)
        slots = sv.gpu_slots(sv.gpu_groups(wanted, gpus_per_worker))
    else:
        slots = (
            sv.cpu_slots(workers)
            if device in ("cpu", "auto")
            else sv.gpu_slots([[str(i)] for i in range(workers)])
        )
    args = ["--engine", served.engine, "--batch-size", batch_size, "--device", device]
    args += ["--until-done"] if until_done else []
    args += ["--lease", str(lease)] if lease else []
    args += ["--max-batches", str(max_batches)] if max_batches else []
    view = ProgressView(db, served.engine, name, _console(stderr=True))
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


def _refuse_gpus_in_use(db, wanted: list[str]) -> None:
    from egoqa.store import workers as registry

    held = registry.gpus_in_use(db, wanted)
    if held:
        who = ", ".join(f"GPU {g} by pid {pid}" for g, pid, _ in held)
        raise EgoqaError(
            f"--gpus {','.join(wanted)}: live workers of an earlier `egoqa work` on this host "
            f"hold {who}: stop them (kill PID) or choose other --gpus"
        )


# --- demo and dev ----------------------------------------------------------------------------


@dev_app.command("tiny-model")
def dev_tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
) -> None:
    """Build a tiny random Qwen2.5-VL (real processor classes) with save_pretrained, offline."""
    from egoqa.tinymodel import build_tiny_model

    typer.echo(str(build_tiny_model(out, seed=seed)))


@dev_app.command("synth-dataset")
def dev_synth_dataset(
    out: Annotated[
        Path, typer.Argument(help="Directory for annotations/, videos/ and ego4d.json.")
    ],
    clips: Annotated[int, typer.Option(min=1, help="Number of clips.")] = 4,
    queries_per_clip: Annotated[int, typer.Option(min=1, help="Queries per clip.")] = 3,
    duration: Annotated[float, typer.Option(min=2.0, help="Clip length in seconds.")] = 24.0,
    full_scale: Annotated[
        bool, typer.Option(help="Write full videos with clips at offsets.")
    ] = False,
    quirks: Annotated[bool, typer.Option(help="Add the bad records real files contain.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write an Ego4D-format NLQ file and short mp4 clips with timestamps burned in."""
    from egoqa.synth import write_synth_dataset

    paths = write_synth_dataset(
        out,
        clips=clips,
        queries_per_clip=queries_per_clip,
        duration_sec=duration,
        full_scale=full_scale,
        quirks=quirks,
        seed=seed,
    )
    typer.echo(
        f"annotations: {paths.annotations}\nvideos: {paths.videos}\nmetadata: {paths.metadata}"
    )


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the tiny model and synthetic dataset live.")
    ] = Path("egoqa-demo"),
    workers: Annotated[int, typer.Option("--workers", min=1, help="CPU worker processes.")] = 2,
    config: Annotated[
        str, typer.Option("--config", help="Config preset or TOML (model is set to the tiny one).")
    ] = "demo",
) -> None:
    """The offline demo: build the tiny model and synthetic dataset if missing, enqueue, work, report."""
    from egoqa.synth import write_synth_dataset
    from egoqa.tinymodel import build_tiny_model

    t0 = time.time()
    model_dir = build_tiny_model(directory / "tiny-qwen2.5-vl")
    data = write_synth_dataset(directory / "dataset", clips=4, queries_per_clip=3, quirks=True)
    typer.echo(f"tiny model: {model_dir}\nsynthetic dataset: {data.annotations}", err=True)
    enqueue(
        annotations=data.annotations,
        videos=data.videos,
        config=config,
        metadata=data.metadata,
        run="demo",
        set_=[f"model={json.dumps(str(model_dir))}"],
        limit=None,
        recompute=False,
        as_json=False,
    )
    _work_many(None, 1, "cpu", workers, (None, None), "auto", True, None, None)
    status(run="demo", as_json=False)
    _demo_summary()
    typer.echo(f"demo finished in {time.time() - t0:.0f}s; next: egoqa report --run demo", err=True)


def _demo_summary() -> None:
    from egoqa.report import summary_rows

    cols, rows = summary_rows(open_database(readonly=True), "demo")
    emit_table("demo: first summary (random weights: scores are noise)", cols, rows)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the schema or upgrade it to this egoqa's version."""
    from egoqa.store.db import open_db, schema_state
    from egoqa.store.sqlrole import ensure_reader

    db = open_db(STATE.db, create=True)
    reader = ensure_reader(db)
    where = f"; egoqa sql runs as the read-only role {reader}" if reader else ""
    typer.echo(f"{db.redacted_url}: schema at {schema_state(db.engine).current}{where}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and this egoqa's."""
    from egoqa.store.db import friendly_errors, make_engine, resolve_url, schema_state

    url = resolve_url(STATE.db)
    with friendly_errors(url):
        s = schema_state(make_engine(url, readonly=True))
    if s.ok:
        hint = ""
    elif s.newer:
        hint = " — newer than this egoqa: upgrade egoqa (pip install -U egoqa) to use it"
    else:
        hint = " — run `egoqa db upgrade`"
    typer.echo(f"{url}: schema {s.current or 'none'}, egoqa head {s.head}{hint}")


from egoqa.cli_report import register as _register_report  # noqa: E402

_register_report(app)


def main() -> None:
    """Console entry point: the error boundary for the project's own errors."""
    try:
        app()
    except EgoqaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
