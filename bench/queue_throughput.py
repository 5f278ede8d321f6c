"""Queue throughput: claim + complete cycles per second, 1 and 4 processes, batches of 1, 8, 64.

Systems, each handed the same N ready jobs (a realistic ~1.5 KB job spec each) in a fresh copy
of its database, all SQLite files in WAL mode:

- egoqa: `egoqa.store.queue.claim` + `queue.complete` (the worker's path: SQLAlchemy-pooled
  connection, `BEGIN IMMEDIATE`, the spec decoded, a result-history row, children promoted);
- raw sqlite3, egoqa's SQL: the statements `queue` runs, issued straight through `sqlite3`
  (same schema and indexes, WAL, synchronous NORMAL, `BEGIN IMMEDIATE`): the overhead floor;
- raw sqlite3, minimal: the claim plus one guarded `UPDATE … state='done'` per job
  (executemany) — the notes' baseline SQL, no history row, no promotion;
- huey `SqliteStorage`: `dequeue` (deletes the task: at-most-once) + `put_data` (the result),
  with its default synchronous=FULL and with synchronous=NORMAL; it has no batch API, so a
  "batch" of n is n single calls;
- litequeue 0.9: `pop` + `done` (no lease owner or token), n single calls per batch;
- with `--postgres URL`: egoqa and raw psycopg on PostgreSQL (`FOR UPDATE SKIP LOCKED`).

`--children` gives every job a blocked child, as a multi-turn plan has: completing a job then
promotes its child, and the table holds as many blocked jobs as ready ones (egoqa and the raw
SQL only).

Workers run until the queue is empty or `--seconds` have passed (litequeue is far too slow to
drain N jobs); the rate is unique jobs completed ÷ wall time from a common start signal to
the last worker's end. `dup` counts jobs claimed (or completed) more than once — must be 0.
Reported: median (best) of `--repeats` runs.

Reproduce: `.venv/bin/python bench/queue_throughput.py` (about 5 minutes on 2 cores);
`--quick` for a smoke run; `--postgres postgresql://user@host/db` adds PostgreSQL (its tables
are emptied first: use a scratch database).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import multiprocessing as mp
import queue as queue_module
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import banner, table

from egoqa.store import graph
from egoqa.store.db import POSTGRES_NOW, SQLITE_NOW, in_list

MODEL = "bench/model"
LEASE_S = 600.0


# --- the jobs ------------------------------------------------------------------------------------


def realistic_spec() -> str:
    """A real per-query job spec (stage_analysis' answer turn under the `coarse` preset)."""
    from egoqa.plan.config import load_config
    from egoqa.plan.dataset import Clip, Query
    from egoqa.plan.jobs import canonical, turn_spec
    from egoqa.plan.styles import load_style

    config, style = load_config("coarse"), load_style("stage_analysis")
    clip = Clip("clip-0", "video-0", Path("clip-0.mp4"), 0.0, 480.0, "val")
    query = Query("clip-0", "ann-0", 0, "Where did I put the red knife?", None, 1.0, 5.0, {})
    turn = style.turn("answer")
    spec = turn_spec(turn, config, clip, "1234-" + "ab" * 10, query, {"segments": "f" * 64})
    return canonical({**spec, "turn": turn.name, "turn_index": 3, "graded": False})


def job_key(i: int) -> str:
    return hashlib.sha256(f"bench-job-{i}".encode()).hexdigest()


def egoqa_template(
    path: Path, n: int, spec: str, url: str | None = None, children: bool = False
) -> None:
    """An egoqa database (migrated schema) holding n ready jobs of MODEL (each with a blocked
    child job when `children`: the shape of a multi-turn plan)."""
    from egoqa.store import queue
    from egoqa.store.db import open_db

    db = open_db(url or path, create=True)
    with db.write() as cur:
        if url:  # a scratch PostgreSQL database: start from empty tables
            cur.execute(
                "TRUNCATE job_results, job_deps, item_jobs, run_items, jobs, queries, clips"
            )
        cur.execute(
            "INSERT INTO clips (clip_uid, video_path, offset_sec, duration_sec, identity) "
            "VALUES ('clip-0', 'clip-0.mp4', 0, 480, 'x')"
        )
        clip_id = cur.one("SELECT id FROM clips WHERE clip_uid = 'clip-0'")
        jobs = []
        for i in range(n):
            jobs.append(
                queue.NewJob(job_key(i), MODEL, MODEL, "segments", 2, clip_id, None, spec, "none")
            )
            if children:
                parent = (job_key(i),)
                jobs.append(
                    queue.NewJob(job_key(n + i), MODEL, MODEL, "answer", 3, clip_id, None, spec, "none",
                                 parent_keys=parent)
                )  # fmt: skip
        queue.enqueue(cur, jobs)
    db.dispose()
    if url is None:
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def huey_template(path: Path, n: int, spec: str) -> None:
    from huey.storage import SqliteStorage

    storage = SqliteStorage(name="bench", filename=str(path))
    with storage.db(commit=True) as cur:
        cur.executemany(
            "INSERT INTO task (queue, data, priority) VALUES ('bench', ?, 0)",
            [(f"{i}:{spec}".encode(),) for i in range(n)],
        )
    storage.close()


def litequeue_template(path: Path, n: int, spec: str) -> None:
    from litequeue import LiteQueue

    q = LiteQueue(str(path), queue_name="bench")
    with q.transaction():
        for i in range(n):
            q.put(f"{i}:{spec}")
    q.conn.close()


# --- the workers: each returns (ids claimed, ids completed) --------------------------------------


Cycle = Callable[[int], tuple[list[int], list[int]]]  # batch size -> (ids claimed, completed)


def egoqa_worker(target: str) -> Cycle:
    from egoqa.store import queue
    from egoqa.store.db import open_db

    db = open_db(target)
    owner = f"bench-{mp.current_process().pid}"

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        c = queue.claim(db, owner, MODEL, batch, LEASE_S)
        if not c.jobs:
            return [], []
        won = queue.complete(db, c, [queue.Completion(j.id, "ok", ["ok"]) for j in c.jobs])
        return [j.id for j in c.jobs], sorted(won)

    return cycle


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    for pragma in ("busy_timeout = 30000", "foreign_keys = ON", "temp_store = MEMORY"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def _raw_claim(conn, owner: str, batch: int, sql: str) -> tuple[str, list[tuple]]:
    from egoqa.store import queue

    token = queue.new_token()
    params = {"owner": owner, "token": token, "lease": LEASE_S, "media_key": "none"}
    conn.execute("BEGIN IMMEDIATE")
    rows = conn.execute(sql, {**params, "engine": MODEL, "n": batch}).fetchall()
    conn.execute("COMMIT")
    return token, rows


def raw_worker(target: str) -> Cycle:
    """egoqa's statements, straight through sqlite3 (see `complete_raw` for the write)."""
    from egoqa.store import queue

    conn, owner = _connect(target), f"raw-{mp.current_process().pid}"
    claim_sql = queue.CLAIM.format(lock="", now=SQLITE_NOW)

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        token, rows = _raw_claim(conn, owner, batch, claim_sql)
        ids = [r[0] for r in rows]
        return ids, complete_raw(conn, owner, token, ids) if ids else []

    return cycle


RESULT_COLUMNS = {
    "prompt": None,
    "finish_reason": None,
    "latency_s": None,
    "prompt_tokens": None,
    "visual_tokens": None,
    "completion_tokens": None,
    "batch_size": None,
    "device": None,
    "dtype": None,
    "note": None,
    "stop_reason": None,
    "served_model": None,
    "system_fingerprint": None,
}


def complete_raw(conn, owner: str, token: str, ids: list[int]) -> list[int]:
    """What `queue.complete` does, with the fewest round trips plain sqlite3 allows."""
    from egoqa.store import queue

    now = time.time()
    rows = [
        {
            **RESULT_COLUMNS,
            "job_id": i,
            "response": "ok",
            "responses": '["ok"]',
            "token": token,
            "owner": owner,
            "now": now,
        }
        for i in ids
    ]
    marks = ", ".join("?" * len(ids))
    conn.execute("BEGIN IMMEDIATE")
    gens = dict(
        conn.execute(
            f"SELECT id, generation FROM jobs WHERE id IN ({marks}) AND state = 'running' "
            "AND lease_token = ?",
            [*ids, token],
        ).fetchall()
    )
    won = [r for r in rows if r["job_id"] in gens]
    conn.executemany(queue.COMPLETE.format(now=SQLITE_NOW), won)
    record = queue.RECORD.format(now=SQLITE_NOW)
    conn.executemany(record, [{**r, "generation": gens[r["job_id"]]} for r in won])
    children = [
        r[0] for r in conn.execute(f"SELECT job_id FROM job_deps WHERE parent_id IN ({marks})", ids)
    ]
    if children:
        frag, params = in_list("j", children)
        conn.execute(graph.PROMOTE.format(ids=frag, state="+state"), params)
    conn.execute("COMMIT")
    return [r["job_id"] for r in won]


def raw_min_worker(target: str) -> Cycle:
    from egoqa.store import queue

    conn, owner = _connect(target), f"min-{mp.current_process().pid}"
    claim_sql = queue.CLAIM.format(lock="", now=SQLITE_NOW)
    done_sql = (
        "UPDATE jobs SET state = 'done', response = ?, finished_at = ?, lease_token = NULL "
        "WHERE id = ? AND state = 'running' AND lease_token = ?"
    )

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        token, rows = _raw_claim(conn, owner, batch, claim_sql)
        if rows:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(done_sql, [("ok", now, r[0], token) for r in rows])
            conn.execute("COMMIT")
        ids = [r[0] for r in rows]
        return ids, ids

    return cycle


def _huey_worker(target: str, normal: bool) -> Cycle:
    from huey.storage import SqliteStorage

    storage = SqliteStorage(name="bench", filename=target, create_tables=False)
    if normal:
        storage.conn.execute("PRAGMA synchronous = NORMAL")

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        got = []
        for _ in range(batch):
            data = storage.dequeue()
            if data is None:
                break
            got.append(int(bytes(data).split(b":", 1)[0]))
        for i in got:
            storage.put_data(f"result:{i}", b"ok")
        return got, got

    return cycle


def huey_worker(target: str) -> Cycle:
    return _huey_worker(target, normal=False)


def huey_normal_worker(target: str) -> Cycle:
    return _huey_worker(target, normal=True)


def litequeue_worker(target: str) -> Cycle:
    from litequeue import LiteQueue

    q = LiteQueue(target, queue_name="bench", timeout=30)

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        got = []
        for _ in range(batch):
            message = q.pop()
            if message is None:
                break
            got.append(message)
        for m in got:
            q.done(m.message_id)
        ids = [int(m.data.split(":", 1)[0]) for m in got]
        return ids, ids

    return cycle


def pg_raw_worker(target: str) -> Cycle:
    """egoqa's statements through psycopg (named parameters converted as egoqa does)."""
    import psycopg

    from egoqa.store import queue
    from egoqa.store.db import Database

    sql = Database.sql.__get__(_PgDialect())
    url = target.replace("postgresql+psycopg://", "postgresql://")
    conn, owner = psycopg.connect(url, autocommit=True), f"pg-{mp.current_process().pid}"
    claim_sql = sql(queue.CLAIM.format(lock=" FOR UPDATE SKIP LOCKED", now=POSTGRES_NOW))
    done_sql = sql(queue.COMPLETE.format(now=POSTGRES_NOW))
    record_sql = sql(queue.RECORD.format(now=POSTGRES_NOW))

    def cycle(batch: int) -> tuple[list[int], list[int]]:
        token = queue.new_token()
        params = {"owner": owner, "token": token, "lease": LEASE_S, "media_key": "none"}
        with conn.transaction():
            ids = [r[0] for r in conn.execute(claim_sql, {**params, "engine": MODEL, "n": batch})]
        if not ids:
            return [], []
        rows = [
            {**RESULT_COLUMNS, "job_id": i, "response": "ok", "responses": '["ok"]', **params}
            for i in ids
        ]
        with conn.transaction(), conn.cursor() as cur:
            held = dict(
                cur.execute(
                    "SELECT id, generation FROM jobs WHERE id = ANY(%s) AND state = 'running' "
                    "AND lease_token = %s FOR UPDATE",
                    (ids, token),
                ).fetchall()
            )
            won = [{**r, "generation": held[r["job_id"]]} for r in rows if r["job_id"] in held]
            cur.executemany(done_sql, won)
            cur.executemany(record_sql, won)
            cur.execute("SELECT job_id FROM job_deps WHERE parent_id = ANY(%s)", (ids,))
        return ids, [r["job_id"] for r in won]

    return cycle


class _PgDialect:
    """Just enough of a `Database` for its `sql()` to convert `:name` to `%(name)s`."""

    is_sqlite = False

    def __init__(self) -> None:
        self._converted: dict[str, str] = {}


# --- running one measurement ---------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str
    worker: Callable
    template: Callable | None  # (path, n, spec) -> None; None: PostgreSQL (one shared database)
    needs: str | None = None  # the module it needs (from the `bench` extra)
    suffix: str = ".db"


SYSTEMS = [
    System("egoqa (store API)", egoqa_worker, egoqa_template),
    System("raw sqlite3, egoqa's SQL", raw_worker, egoqa_template),
    System("raw sqlite3, minimal SQL", raw_min_worker, egoqa_template),
    System("huey SqliteStorage (default: synchronous FULL)", huey_worker, huey_template, "huey"),
    System("huey SqliteStorage, synchronous NORMAL", huey_normal_worker, huey_template, "huey"),
    System("litequeue 0.9", litequeue_worker, litequeue_template, "litequeue"),
]


def _child(worker, target, batch, ready, start, seconds, out) -> None:
    cycle = worker(target)  # connect (and import) before the clock starts
    ready.put(1)
    start.wait()
    deadline = time.monotonic() + seconds
    claimed, done = [], []
    while time.monotonic() < deadline:
        got, won = cycle(batch)
        if not got:
            break
        claimed += got
        done += won
    out.put((claimed, done, time.monotonic()))


@dataclass(frozen=True)
class Measurement:
    rate: float
    jobs: int
    dups: int


def measure(worker, target: str, procs: int, batch: int, seconds: float) -> Measurement:
    ctx = mp.get_context("spawn")
    ready, out, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = [
        ctx.Process(target=_child, args=(worker, target, batch, ready, start, seconds, out))
        for _ in range(procs)
    ]
    for c in children:
        c.start()
    for _ in children:
        ready.get(timeout=120)
    t0 = time.monotonic()
    start.set()
    results = []
    while len(results) < len(children):
        try:
            results.append(out.get(timeout=1.0))
        except queue_module.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                for c in children:
                    c.kill()
                code = dead[0].exitcode
                raise RuntimeError(f"a {worker.__name__} process failed (exit {code})") from None
    for c in children:
        c.join()
    claimed = [i for r in results for i in r[0]]
    done = [i for r in results for i in r[1]]
    dups = (len(claimed) - len(set(claimed))) + (len(done) - len(set(done)))
    wall = max(r[2] for r in results) - t0
    return Measurement(len(set(done)) / wall, len(set(done)), dups)


def run_all(systems: list[System], workdir: Path, spec: str, args) -> dict[str, dict]:
    """{system: {(procs, batch): [Measurement per repeat]}}; systems interleaved in every repeat,
    so load from elsewhere on the machine hits them alike."""
    templates = {}
    for system in systems:
        templates[system.name] = workdir / f"{system.worker.__name__}.template{system.suffix}"
        if system.template is not None:
            if system.template is egoqa_template:
                egoqa_template(templates[system.name], args.jobs, spec, children=args.children)
            else:
                system.template(templates[system.name], args.jobs, spec)
    results: dict[str, dict] = {s.name: {} for s in systems}
    for procs in args.procs:
        for batch in args.batches:
            for _ in range(args.repeats):
                for system in systems:
                    target = _fresh_copy(system, templates[system.name], workdir, spec, args)
                    m = measure(system.worker, target, procs, batch, args.seconds)
                    results[system.name].setdefault((procs, batch), []).append(m)
            print(f"  measured batch {batch}, {procs} process(es)", file=sys.stderr, flush=True)
    return results


def _fresh_copy(system: System, template: Path, workdir: Path, spec: str, args) -> str:
    if system.template is None:  # PostgreSQL: refill the scratch database
        egoqa_template(template, args.jobs, spec, url=args.postgres, children=args.children)
        return args.postgres
    target = workdir / f"run{system.suffix}"
    for extra in ("-wal", "-shm"):
        Path(f"{target}{extra}").unlink(missing_ok=True)
    shutil.copyfile(template, target)
    return str(target)


def summarize(name: str, results, args) -> list:
    row: list = [name]
    for procs in args.procs:
        for batch in args.batches:
            ms = results[(procs, batch)]
            rates = [m.rate for m in ms]
            row.append(f"{statistics.median(rates):,.0f} ({max(rates):,.0f})")
    row.append(sum(m.dups for ms in results.values() for m in ms))
    return row


def ratios(all_results: dict[str, dict], args) -> list[list]:
    """egoqa's rate over each other system's on the same database engine: median (min–max) of
    the per-repeat ratios."""
    rows = []
    for name, results in all_results.items():
        if name.startswith("egoqa"):
            continue
        ours_name = "egoqa on PostgreSQL" if "psycopg" in name else "egoqa (store API)"
        ours = all_results.get(ours_name)
        if ours is None:
            continue
        row: list = [f"{ours_name} ÷ {name}"]
        for procs in args.procs:
            for batch in args.batches:
                pairs = zip(ours[(procs, batch)], results[(procs, batch)], strict=True)
                r = [a.rate / b.rate for a, b in pairs if b.rate]
                row.append(f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})" if r else "–")
        rows.append(row)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N, one repeat")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs in the queue (N)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time limit per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", help="also measure on this PostgreSQL")
    parser.add_argument("--only", help="measure only systems whose name contains this")
    parser.add_argument(
        "--children",
        action="store_true",
        help="give every job a blocked child (completing it promotes the child); egoqa and "
        "raw SQL only, since huey and litequeue have no dependencies",
    )
    args = parser.parse_args(argv)
    args.procs, args.batches = [1, 4], [1, 8, 64]
    if args.quick:
        args.jobs, args.seconds, args.repeats, args.procs, args.batches = 400, 0.3, 1, [2], [8]
    print(banner("queue_throughput", argv))
    spec = realistic_spec()
    systems = [s for s in SYSTEMS if not args.only or args.only in s.name]
    missing = [s for s in systems if s.needs and importlib.util.find_spec(s.needs) is None]
    for s in missing:
        print(f"skipped {s.name}: {s.needs} is not installed (pip install 'egoqa[bench]')")
    systems = [s for s in systems if s not in missing]
    if args.children:
        systems = [s for s in systems if s.template is egoqa_template and "minimal" not in s.name]
    if args.postgres:
        systems += [
            System("egoqa on PostgreSQL", egoqa_worker, None),
            System("raw psycopg, egoqa's SQL", pg_raw_worker, None),
        ]
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        all_results = run_all(systems, Path(tmp), spec, args)
    cols = [f"batch {b}, {p} proc{'s' if p > 1 else ''}" for p in args.procs for b in args.batches]
    print(
        f"\nN = {args.jobs:,} ready jobs"
        + (f", each with a blocked child ({2 * args.jobs:,} jobs)" if args.children else "")
        + f" (spec {len(spec):,} bytes), runs of at most "
        f"{args.seconds:g} s, {args.repeats} repeat(s); jobs/s, median (best)\n"
    )
    print(
        table(
            "Claim + complete, jobs/s",
            ["system", *cols, "dup"],
            [summarize(name, results, args) for name, results in all_results.items()],
        )
    )
    if len(all_results) > 1:
        print()
        print(
            table(
                "egoqa's rate ÷ each system's, paired by repeat: median (min–max)",
                ["", *cols],
                ratios(all_results, args),
            )
        )
    dups = sum(m.dups for r in all_results.values() for ms in r.values() for m in ms)
    print(f"\nduplicates over all runs: {dups}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
