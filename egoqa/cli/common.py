"""What every `egoqa` command shares: the global options' state, logging, the shared option
types, `--help` without value types on flags, and the one place tables become output."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup


def _plain_flags(params) -> None:
    # A flag takes no value: its help line shows none (Typer would print `<bool>`).
    for p in params:
        if (getattr(p, "is_flag", False) or getattr(p, "count", False)) and p.metavar is None:
            p.metavar = ""


class PlainFlagsGroup(TyperGroup):
    """Every command's flags show no value type in `--help`."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_flags(params)
        return params

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _plain_flags(command.get_params(ctx))
        return command


class State:
    """The root options, for the commands that run after it: --db and how verbose."""

    db: str | None = None
    verbose: int = 0


STATE = State()


def configure_logging(verbose: int) -> None:
    """Warnings and errors by default; -v adds one INFO line per job and event, -vv debug."""
    STATE.verbose = verbose
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger().setLevel(level)
    logging.getLogger("egoqa").setLevel(level)
    # Alembic's start-up chatter (plugins, context) only at -vv.
    logging.getLogger("alembic").setLevel(logging.WARNING if verbose < 2 else level)


def _more_verbose(value: int) -> int:
    if value:  # -v after the subcommand adds to any given before it
        configure_logging(STATE.verbose + value)
    return value


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Only this run.")]
# Accepted after the subcommand too (`egoqa work -v`); adds to a -v given before it.
VerboseOpt = Annotated[
    int,
    typer.Option(
        "-v",
        "--verbose",
        count=True,
        callback=_more_verbose,
        expose_value=False,
        help="More logging on stderr (-vv for debug).",
        show_default=False,
    ),
]


def rich_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=False)


def _json_value(value):
    """JSON has no infinity or NaN: such a float is written as null (a bare `Infinity` is not
    JSON, and every strict reader refuses it)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def emit_table(
    title: str | None,
    columns: list[str],
    rows: list,
    *,
    as_json: bool = False,
    as_csv: bool = False,
    fit_first: bool = False,
) -> None:
    """The one place tables become output: rich on a terminal, or JSON / CSV.

    With `fit_first` the table is drawn compact, one line per row, and its first column is cut
    short (with an ellipsis) where the terminal is too narrow for the rest.
    """
    if as_json:
        records = [dict(zip(columns, map(_json_value, r), strict=True)) for r in rows]
        typer.echo(json.dumps(records, indent=2, default=str, allow_nan=False))
        return
    if as_csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
        return
    from rich.markup import escape

    # Data, not markup: a template name or a label in [brackets] must print as written.
    cells = [[escape("" if v is None else str(v)) for v in r] for r in rows]
    title = None if title is None else escape(title)
    columns = [escape(str(c)) for c in columns]
    console = rich_console()
    table = _fitted_table(title, columns, cells, console.width) if fit_first else None
    if table is None:
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for c in columns:
            table.add_column(str(c))
    for r in cells:
        table.add_row(*r)
    console.print(table)


def _fitted_table(title, columns: list[str], cells: list[list[str]], width: int):
    from rich import box
    from rich.table import Table

    table = Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True
    )
    # Two spaces between columns; what the others need is left to the first.
    widths = [max([len(str(c)), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    first = max(12, width - sum(widths[1:]) - 2 * (len(columns) - 1))
    table.add_column(str(columns[0]), no_wrap=True, overflow="ellipsis", max_width=first)
    for c in columns[1:]:
        table.add_column(str(c), no_wrap=True, justify="right")
    return table


def open_database(create: bool = False, readonly: bool = False):
    from egoqa.store.db import open_db

    return open_db(STATE.db, create=create, readonly=readonly)


def echo_finished_run(plan, source: str, as_json: bool) -> None:
    """What a run needing no model (a prior, a proposal set) says once written and scored."""
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=2))
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(plan.skipped.items())) or "none"
    typer.echo(
        f"run {plan.run}: {plan.queries} queries on {plan.clips} clips (skipped: {skipped})\n"
        f"{source}: {plan.jobs_new} predictions written, {plan.jobs_reused} already there; "
        f"scored now, no worker needed — see `egoqa report --run {plan.run}`"
    )
