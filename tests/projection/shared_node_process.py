"""One node of a projection shared by several processes on one PostgreSQL schema.

Run by test_shared_postgres_processes.py: `python shared_node_process.py DSN SCHEMA NODE`
serves the exactly-once projection `shared-model` with `serve_shared_projection` (8 ranges,
short leases) over the PostgreSQL journal of SCHEMA. Its handler inserts a row
(persistence id, seq nr, NODE) per event into `applied`, a table without a key, in the
transaction that stores the offsets: an event applied twice would show as two rows. It prints
"ready" once its first round is done, and stops cleanly (giving its leases up) when its
standard input closes.
"""

from __future__ import annotations

import sys
from typing import Any

import attrs
import psycopg
import trio

from fluvial import EventEnvelope, ExactlyOnce, Projection, SerializerRegistry, SourceSettings
from fluvial.journal.postgres import open_postgres_journal
from fluvial.projection import serve_shared_projection

NAME = "shared-model"
ENTITY_TYPE = "Tally"
RANGES = 8
# Short, so that a killed node's ranges move within a few seconds; renewed every third.
LEASE_DURATION = 1.5
POLL_INTERVAL = 0.05


@attrs.frozen
class Counted:
    n: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Counted, "tally.Counted")

Connection = psycopg.Connection[Any]


def create_tables(conn: Connection) -> None:
    conn.execute("CREATE TABLE applied (pid text NOT NULL, seq_nr bigint NOT NULL, node int)")


def shared_projection(node: int) -> Projection[Counted, Connection]:
    def handle(conn: Connection, envelope: EventEnvelope[Counted]) -> None:
        conn.execute(
            "INSERT INTO applied VALUES (%s, %s, %s)",
            (envelope.persistence_id, envelope.seq_nr, node),
        )

    return Projection(
        name=NAME,
        entity_type=ENTITY_TYPE,
        handler=ExactlyOnce(handle, migrations=[create_tables]),
        lease_duration=LEASE_DURATION,
        # One writer process appending one event at a time: timestamps are commit order.
        source=SourceSettings(backtracking_interval=None),
    )


async def main(dsn: str, schema: str, node: int) -> None:
    async with (
        open_postgres_journal(dsn, schema=schema, poll_interval=POLL_INTERVAL) as journal,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            serve_shared_projection, journal, REGISTRY, shared_projection(node), RANGES
        )
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    print("stopped", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
