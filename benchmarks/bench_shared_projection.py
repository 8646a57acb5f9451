"""An exactly-once projection shared by 1, 2 and 3 processes (`serve_shared_projection`, 8
ranges) on one PostgreSQL schema, catching up on a prefilled journal, against the raw driver
doing the same work in one process, in one run.

Each process is this script (`node` mode): it opens the journal, says it is ready, and on "go"
runs its node; the parent times from "go" until the projection has caught up
(`wait_until_caught_up`, polling every 50 ms), so the figure includes the nodes' first rounds,
in which they split the ranges. The handler (`GroupedExactlyOnce`, groups of up to 4,000)
inserts one row per event into the read model with one executemany per group.
Raw: psycopg alone, one process: reads the events in timestamp order in pages of 4,000 and
inserts the same rows, one transaction per page. Where the time goes: beside the wall time, the
CPU seconds of the node processes and of the server backends serving them (/proc, Linux),
read once the projection has caught up; the rest of the cores' time went to waiting (commits,
locks, the polls) and to the machine's other work.

Needs PostgreSQL at 127.0.0.1:5432 (or FLUVIAL_PG_DSN) with a database `test`.
Run: .venv/bin/python benchmarks/bench_shared_projection.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import trio
from _table import print_table
from psycopg import sql

from fluvial import EventEnvelope, GroupedExactlyOnce, Projection, SourceSettings
from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.postgres import open_postgres_journal
from fluvial.projection import serve_shared_projection

DSN = os.environ.get("FLUVIAL_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_shared"
ENTITIES = 400
EVENTS_PER_ENTITY = 150
RANGES = 8
PAGE = 4000
Connection = psycopg.Connection[Any]
REGISTRY = SerializerRegistry()  # the handler needs no decoding beyond the envelope's own
REGISTRY.register(bytes, "bench.Event")


def _projection(name: str) -> Projection[bytes, Connection]:
    table = sql.Identifier(f"applied_{name}")

    def create(conn: Connection) -> None:
        conn.execute(sql.SQL("CREATE TABLE {} (pid text, seq_nr bigint)").format(table))

    insert = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(table)

    def handle(conn: Connection, envelopes: Sequence[EventEnvelope[bytes]]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(insert, [(e.persistence_id, e.seq_nr) for e in envelopes])

    return Projection(
        name=name,
        entity_type="Bench",
        handler=GroupedExactlyOnce(handle, max_size=PAGE, max_wait=0.05, migrations=[create]),
        lease_duration=3.0,
        source=SourceSettings(backtracking_interval=None),
    )


async def node(name: str) -> None:
    async with (
        open_postgres_journal(DSN, schema=SCHEMA, poll_interval=0.05) as journal,
        trio.open_nursery() as nursery,
    ):
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        await nursery.start(serve_shared_projection, journal, REGISTRY, _projection(name), RANGES)
        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()


async def _prefill() -> int:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    payload = REGISTRY.encode(b"x" * 40)
    async with open_postgres_journal(DSN, schema=SCHEMA) as journal:
        for entity in range(ENTITIES):
            pid = PersistenceId("Bench", f"b{entity}")
            await journal.append(
                [
                    EventRecord(str(pid), seq_nr, "Bench", pid.slice, payload)
                    for seq_nr in range(1, EVENTS_PER_ENTITY + 1)
                ]
            )
    return ENTITIES * EVENTS_PER_ENTITY


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process `pid` has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu_seconds() -> float:
    """CPU seconds of the server's backends serving this schema's journals (the nodes' and
    the parent's connections, by `application_name`), since they connected. A node opens
    connections as its work needs them: those opened after "go" count whole, which is right."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (f"fluvial:{SCHEMA}",),
        ).fetchall()
    return sum(_cpu_seconds(pid) for (pid,) in pids)


async def _shared(processes: int) -> tuple[float, float, float]:
    """Seconds until `processes` nodes have caught up on the journal; the CPU seconds the
    nodes used, and those of the server's backends serving them."""
    name = f"p{processes}"
    children = []
    for _ in range(processes):
        child = await trio.lowlevel.open_process(
            [sys.executable, __file__, "node", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        said = b""
        while not said.endswith(b"\n"):
            said += await child.stdout.receive_some()
        children.append(child)
    async with open_postgres_journal(DSN, schema=SCHEMA, poll_interval=0.05) as journal:
        store = journal.offset_store()
        await store.register(name, "Bench")
        # The CPU the nodes spent starting (imports, opening the journal) is not the work.
        nodes_before = sum(_cpu_seconds(child.pid) for child in children)
        server_before = await trio.to_thread.run_sync(_server_cpu_seconds)
        start = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            await child.stdin.send_all(b"go\n")
        await store.wait_until_caught_up(name)
        took = time.perf_counter() - start
        nodes_cpu = sum(_cpu_seconds(child.pid) for child in children) - nodes_before
        server_cpu = await trio.to_thread.run_sync(_server_cpu_seconds) - server_before
    for child in children:
        assert child.stdin is not None
        await child.stdin.send_all(b"stop\n")
        await child.wait()
    return took, nodes_cpu, server_cpu


def _raw() -> float:
    """Seconds for psycopg alone to read every event by timestamp and insert its row."""
    with psycopg.connect(DSN, options=f"-c search_path={SCHEMA}") as conn:
        conn.execute("CREATE TABLE applied_raw (pid text, seq_nr bigint)")
        conn.commit()
        start = time.perf_counter()
        after = -1
        while True:
            rows = conn.execute(
                "SELECT persistence_id, seq_nr, db_timestamp, payload FROM event_journal "
                "WHERE entity_type = 'Bench' AND db_timestamp > %s "
                "ORDER BY db_timestamp, persistence_id, seq_nr LIMIT %s",
                (after, PAGE),
            ).fetchall()
            if not rows:
                break
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO applied_raw VALUES (%s, %s)", [(r[0], r[1]) for r in rows]
                )
            conn.commit()
            after = rows[-1][2]
        return time.perf_counter() - start


async def main() -> None:
    events = await _prefill()
    raw = await trio.to_thread.run_sync(_raw)
    rows = []
    load_before = os.getloadavg()
    for processes in (1, 2, 3):
        took, nodes_cpu, server_cpu = await _shared(processes)
        rows.append(
            (
                f"{processes} process{'es' if processes > 1 else ''}, {RANGES} ranges",
                events / took,
                events / raw,
                f"{raw / took:.2f}",
                f"{took:.2f}",
                f"{nodes_cpu:.2f}",
                f"{server_cpu:.2f}",
            )
        )
    load_after = os.getloadavg()
    print_table(
        f"An exactly-once projection catching up on {events:,} events (events/s; wall and CPU "
        f"seconds; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after)",
        [
            "shape",
            "serve_shared_projection",
            "raw psycopg, 1 process",
            "ratio",
            "wall s",
            "nodes' CPU s",
            "server's CPU s",
        ],
        rows,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        trio.run(node, sys.argv[2])
    else:
        trio.run(main)
