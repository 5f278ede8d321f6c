"""The `report` and `export` commands: parse, call egoqa.report, render (rich tables or JSON).

Both read the database only (`--rescore` aside) and never import torch, transformers or decord.
`egoqa.cli` is imported inside the commands: it imports this module while it is being built.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

RunName = Annotated[str, typer.Option("--run", help="The run (see `egoqa runs`).")]


class ExportFormat(enum.StrEnum):
    NLQ = "nlq"


class Scoring(enum.StrEnum):
    EGOQA = "egoqa"
    ORIGINAL = "original"


def report(
    run: RunName,
    compare: Annotated[
        list[str] | None,
        typer.Option("--compare", help="Another run to show side by side (repeat for more)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write results.json, results.csv and PNG charts here."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary and breakdowns as JSON.")
    ] = False,
    rescore: Annotated[
        bool,
        typer.Option("--rescore", help="Recompute scores from the stored responses first."),
    ] = False,
    scoring: Annotated[
        Scoring,
        typer.Option(
            "--scoring",
            help="egoqa: coverage and the official NLQ metrics; original: the original "
            "pipeline's coverage exactly (its segment pattern, whole seconds, its categories).",
        ),
    ] = Scoring.EGOQA,
) -> None:
    """A run's metrics: overall, by query type, by template, outcomes, failures (every query counts)."""
    from egoqa import report as rp
    from egoqa.cli import emit_table, open_database

    if scoring is Scoring.ORIGINAL:
        _report_original(run, compare, out, as_json)
        return
    db = open_database(readonly=not rescore)
    if rescore:
        typer.echo(f"rescored {rp.rescore(db, run)} queries of run {run}", err=True)
    built = rp.build(db, run, compare or ())
    if out is not None:
        for path in rp.write(db, built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(built, indent=2))
    else:
        for title, columns, rows in rp.tables(built):
            emit_table(title, columns, rows)
    if built["summary"].get("unscored"):
        typer.echo(
            f"{built['summary']['unscored']} finished queries are not scored yet (counted as "
            f"misses): run `egoqa report --run {run} --rescore`",
            err=True,
        )


def _report_original(run: str, compare, out: Path | None, as_json: bool) -> None:
    from egoqa import original
    from egoqa.cli import emit_table, open_database
    from egoqa.errors import EgoqaError

    if compare:
        raise EgoqaError("--compare goes with the default scoring: drop it or --scoring original")
    built = original.build(open_database(readonly=True), run)
    if out is not None:
        for path in original.write(built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in built.items() if k != "instances"}, indent=2))
        return
    for title, columns, rows in original.tables(built):
        emit_table(title, columns, rows)


def export(
    run: RunName,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="nlq: the official Ego4D NLQ prediction file.")
    ] = ExportFormat.NLQ,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
) -> None:
    """Write a run's predictions for the official evaluation (every query; misses as [[0.0, 0.0]])."""
    from egoqa import report as rp
    from egoqa.cli import open_database

    predictions = rp.export_nlq(open_database(readonly=True), run)
    text = json.dumps(predictions) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    results = predictions["results"]
    misses = sum(1 for p in results if p["predicted_times"] == [[0.0, 0.0]])
    typer.echo(
        f"wrote {len(results)} predictions ({misses} misses) of run {run} to {output}", err=True
    )


def register(app: typer.Typer) -> None:
    """Add `report` and `export` to the egoqa app."""
    app.command()(report)
    app.command()(export)
