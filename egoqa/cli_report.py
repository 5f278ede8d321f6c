"""The `report` and `export` commands: parse, call egoqa.report / egoqa.export, render.

Both read the database only (`--rescore` aside) and never import torch, transformers or decord.
`egoqa.cli` is imported inside the commands: it imports this module while it is being built.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from egoqa.cli_common import VerboseOpt

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
    verbose: VerboseOpt = 0,
) -> None:
    """A run's metrics: overall, by query type, by template, outcomes, failures (every query counts)."""
    from egoqa import report as rp
    from egoqa.cli import emit_table, open_database
    from egoqa.report_files import write
    from egoqa.report_tables import tables

    if scoring is Scoring.ORIGINAL:
        _report_original(run, compare, out, as_json)
        return
    db = open_database(readonly=not rescore)
    if rescore:
        typer.echo(f"rescored {rp.rescore(db, run)} queries of run {run}", err=True)
    built = rp.build(db, run, compare or ())
    if out is not None:
        for path in write(db, built, out):
            typer.echo(f"wrote {path}", err=True)
    if as_json:
        typer.echo(json.dumps(built, indent=2))
    else:
        for t in tables(built):
            emit_table(t.title, t.columns, t.rows, fit_first=t.fit_first)
    _notes(built["summary"], run)


def _notes(summary: dict, run: str) -> None:
    if summary.get("unscored"):
        typer.echo(
            f"{summary['unscored']} finished queries are not scored yet (counted as "
            f"misses): run `egoqa report --run {run} --rescore`",
            err=True,
        )
    if summary.get("ground_truth") is False:
        typer.echo(
            f"run {run} has no ground truth (a test split): there is nothing to score; "
            f"`egoqa export --run {run} -o predictions.json` writes the file to submit",
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
    only_enqueued: Annotated[
        bool,
        typer.Option(
            "--only-enqueued",
            help="Leave out the queries that were skipped when the run was enqueued.",
        ),
    ] = False,
    verbose: VerboseOpt = 0,
) -> None:
    """Write a run's predictions for the evaluation server (every query; misses as [[0.0, 0.0]]).

    Every query of the run's annotation file is written: the ones that could not be enqueued
    count as misses too, so the score is not inflated by leaving them out.
    """
    from egoqa.cli import open_database
    from egoqa.export import export_nlq
    from egoqa.output import check_file_target, write_text

    if output is not None:
        check_file_target(output, "-o")  # before any work is done for it
    done = export_nlq(open_database(readonly=True), run, only_enqueued=only_enqueued)
    text = json.dumps(done.predictions) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_text(output, text, "-o")
    typer.echo(_export_summary(done, run, output), err=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _export_summary(done, run: str, output: Path | None) -> str:
    """What the file holds, and what it does not, in one line."""
    where = f"to {output}" if output is not None else "to stdout"
    line = (
        f"wrote {done.written} predictions of run {run} {where}: {done.enqueued} enqueued "
        f"({done.misses} misses)"
    )
    if done.skipped:
        n = sum(done.skipped.values())
        line += f", {n} skipped when enqueued, written as misses ({_counts(done.skipped)})"
    if done.left_out:
        n = sum(done.left_out.values())
        line += f"; {n} skipped queries left out by --only-enqueued ({_counts(done.left_out)})"
    if done.no_query_id:
        n = sum(done.no_query_id.values())
        line += f"; {n} skipped records carry no query id and cannot be exported"
        line += f" ({_counts(done.no_query_id)})"
    if not done.skips_recorded:
        line += (
            "; this run holds no record of what its annotation file skipped: enqueue it "
            "again (nothing is recomputed) to count those queries"
        )
    return line


def register(app: typer.Typer) -> None:
    """Add `report` and `export` to the egoqa app."""
    app.command()(report)
    app.command()(export)
