"""The offline commands: `egoqa demo` (the whole real path on the tiny model and a synthetic
dataset) and `egoqa dev` (build those inputs); `egoqa.cli.app` adds them (`register`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from egoqa.cli.common import STATE, VerboseOpt, emit_table, open_database


def dev_tiny_model(
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    seed: Annotated[int, typer.Option(help="Initialisation seed.")] = 0,
    verbose: VerboseOpt = 0,
) -> None:
    """Build a tiny random Qwen2.5-VL (real processor classes) with save_pretrained, offline."""
    from egoqa.cli.work import quiet_hugging_face
    from egoqa.dev.tinymodel import build_tiny_model

    if STATE.verbose == 0:
        quiet_hugging_face()
    typer.echo(str(build_tiny_model(out, seed=seed)))


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
    test_split: Annotated[
        bool,
        typer.Option(
            "--test-split", help="Also write nlq_test_unannotated.json (no answer windows)."
        ),
    ] = False,
    cuts: Annotated[
        int,
        typer.Option(
            "--cuts", min=0, help="Hard cuts per clip, at random times (for the shots sampler)."
        ),
    ] = 0,
    proposals: Annotated[
        bool,
        typer.Option(
            "--proposals",
            help="Also write proposals.json: 5 candidate windows per query (one near the answer),"
            " for `egoqa proposals import`.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    verbose: VerboseOpt = 0,
) -> None:
    """Write an Ego4D-format NLQ file and short mp4 clips with timestamps burned in."""
    from egoqa.dev.synth import write_synth_dataset, write_synth_proposals

    paths = write_synth_dataset(
        out,
        clips=clips,
        queries_per_clip=queries_per_clip,
        duration_sec=duration,
        full_scale=full_scale,
        quirks=quirks,
        test_split=test_split,
        cuts_per_clip=cuts,
        seed=seed,
    )
    typer.echo(
        f"annotations: {paths.annotations}\nvideos: {paths.videos}\nmetadata: {paths.metadata}"
    )
    if paths.test_annotations is not None:
        typer.echo(f"test split: {paths.test_annotations}")
    if proposals:
        written = write_synth_proposals(paths.annotations, out / "proposals.json", seed=seed)
        typer.echo(f"proposals: {written}")


def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the tiny model and synthetic dataset live.")
    ] = Path("egoqa-demo"),
    workers: Annotated[int, typer.Option("--workers", min=1, help="CPU worker processes.")] = 2,
    config: Annotated[
        str, typer.Option("--config", help="Config preset or TOML (model is set to the tiny one).")
    ] = "demo",
    verbose: VerboseOpt = 0,
) -> None:
    """The offline demo: synthetic dataset + tiny model → enqueue, work, report, explorer.

    Builds the tiny model and the synthetic dataset where missing; the explorer's path is the
    last line printed.
    """
    from egoqa.cli.queue import enqueue, status
    from egoqa.cli.work import quiet_hugging_face, work_many
    from egoqa.dev.synth import write_synth_dataset
    from egoqa.dev.tinymodel import build_tiny_model

    t0 = time.time()
    if STATE.verbose == 0:
        quiet_hugging_face()
    model_dir = build_tiny_model(directory / "tiny-qwen2.5-vl")
    data = write_synth_dataset(directory / "dataset", clips=4, queries_per_clip=3, quirks=True)
    typer.echo(f"tiny model: {model_dir}\nsynthetic dataset: {data.annotations}", err=True)
    typer.echo(
        "the synthetic annotation file holds bad records on purpose (no query text, windows "
        "outside the clip, a missing video): the demo shows how egoqa skips and reports them",
        err=True,
    )
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
    _enqueue_baselines(data)
    work_many(None, "cpu", workers, (None, None), "auto", True, None, None)
    status(run="demo", as_json=False)
    _demo_summary()
    from egoqa.cli.report import demo_explorer

    page = demo_explorer(directory, BASELINES)
    typer.echo(
        f"demo finished in {time.time() - t0:.0f}s; next: egoqa report --run demo, and open "
        f"{page} in a browser",
        err=True,
    )


# What the demo's run is compared with: the model-free baselines and a synthetic grounding
# model's proposals scored as they are (all computed at enqueue).
PROPOSALS = "synth"
BASELINES = ("prior:whole_clip", "prior:uniform_random", f"proposals:{PROPOSALS}")


def _enqueue_baselines(data) -> None:
    from egoqa.cli.proposals import enqueue_proposals
    from egoqa.cli.report import enqueue_prior
    from egoqa.dev.synth import write_synth_proposals
    from egoqa.plan.proposals import import_file

    for prior in BASELINES[:2]:
        enqueue_prior(
            data.annotations, data.videos, prior, data.metadata, prior, [], None, False, None, False
        )
    made = write_synth_proposals(data.annotations, data.root / "proposals.json")
    import_file(open_database(create=True), made, PROPOSALS)
    enqueue_proposals(data.annotations, data.videos, BASELINES[2], data.metadata, None, None, False)


def _demo_summary() -> None:
    from egoqa.report.summary import build
    from egoqa.report.tables import paired_tables, summary_rows

    db = open_database(readonly=True)
    cols, rows = summary_rows(db, "demo")
    emit_table("demo: first summary (random weights: scores are noise)", cols, rows)
    pairs = [p for p in build(db, "demo", BASELINES)["paired"] if p["a"] == "demo"]
    for t in paired_tables(pairs):
        emit_table(f"demo against the baselines — {t.title}", t.columns, t.rows, fit_first=True)


def dev_serve(
    model_dir: Annotated[Path, typer.Argument(help="A local checkpoint (e.g. the tiny model).")],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any).")] = 8000,
    served_model_name: Annotated[
        str | None,
        typer.Option(help="The model name clients ask for (default: the directory's full path)."),
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto, bfloat16, float16 or float32.")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    max_pixels: Annotated[int | None, typer.Option(help="Per-frame pixel limit.")] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Require the key held by this environment variable (default: none)."),
    ] = None,
    latency: Annotated[float, typer.Option(min=0, help="Seconds added to every request.")] = 0.0,
    error_every: Annotated[int, typer.Option(min=0, help="Every Nth request fails.")] = 0,
    error_status: Annotated[
        int, typer.Option(help="The status it fails with (429, 500, ...).")
    ] = 429,
    retry_after: Annotated[
        float | None, typer.Option(min=0, help="Retry-After seconds sent with those failures.")
    ] = None,
    hang_every: Annotated[int, typer.Option(min=0, help="Every Nth request never answers.")] = 0,
    drop_every: Annotated[
        int, typer.Option(min=0, help="Every Nth request's connection is dropped.")
    ] = 0,
    garble_every: Annotated[
        int, typer.Option(min=0, help="Every Nth request gets a reply that is not JSON.")
    ] = 0,
    empty_every: Annotated[
        int, typer.Option(min=0, help="Every Nth request gets an empty answer.")
    ] = 0,
    max_model_len: Annotated[
        int | None, typer.Option(min=1, help="Refuse prompts longer than this many tokens.")
    ] = None,
    verbose: VerboseOpt = 0,
) -> None:
    """Serve a local model over an OpenAI-compatible API on 127.0.0.1 (for backend = "openai")."""
    from egoqa.backends.registry import load_backend
    from egoqa.cli.work import quiet_hugging_face
    from egoqa.dev.server import DevServer, Faults

    if STATE.verbose == 0:
        quiet_hugging_face()
    path = model_dir.expanduser().resolve()
    backend = load_backend(
        "transformers", model=str(path), dtype=dtype, device=device, max_pixels=max_pixels
    )
    faults = Faults(
        latency_s=latency,
        error_every=error_every,
        error_status=error_status,
        retry_after_s=retry_after,
        hang_every=hang_every,
        drop_every=drop_every,
        garble_every=garble_every,
        empty_every=empty_every,
        max_model_len=max_model_len,
    )
    name = served_model_name or str(path)
    try:
        server = DevServer(backend, name, faults, api_key_env, port)
    except OSError as exc:
        from egoqa.errors import EgoqaError

        raise EgoqaError(
            f"cannot listen on 127.0.0.1:{port} ({exc}): choose another --port"
        ) from None
    typer.echo(f"serving {name} at {server.base_url} (Ctrl-C stops)", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def register(app: typer.Typer, dev_app: typer.Typer) -> None:
    """Add `demo` to the egoqa app and `tiny-model`, `synth-dataset`, `serve` to its `dev` group."""
    dev_app.command("serve")(dev_serve)
    dev_app.command("tiny-model")(dev_tiny_model)
    dev_app.command("synth-dataset")(dev_synth_dataset)
    app.command()(demo)
