"""A process of concurrent writers on one PostgreSQL journal schema, for
test_postgres_concurrent_writers.py.

Run: `python pg_concurrent_writer.py DSN SCHEMA WRITER TASKS SECONDS`. It opens the journal
with `open_postgres_journal` and runs TASKS tasks for SECONDS, each appending one event at a
time to its own entities (`Account|w<WRITER>t<task>e<n>`, round robin, each at its next seq
nr), and one task that, after a pause, appends to two entities whose transactions the test's
trigger slows down: `Account|w<WRITER>-late` (its seq nr 1 commits late, then seq nrs 2 and
3) and `Account|w<WRITER>-tail` (its last event, seq nr 2, commits late). It prints "ok", or
the error that stopped it, and exits 1 on an error.
"""

from __future__ import annotations

import sys

import trio

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal

ENTITY_TYPE = "Account"
ENTITIES_PER_TASK = 4
REGISTRY = SerializerRegistry()
REGISTRY.register(int, "account.Deposited")


def deposited(entity_id: str, seq_nr: int) -> EventRecord:
    pid = PersistenceId(ENTITY_TYPE, entity_id)
    return EventRecord(
        persistence_id=str(pid),
        seq_nr=seq_nr,
        entity_type=ENTITY_TYPE,
        slice=pid.slice,
        payload=REGISTRY.encode(seq_nr),
    )


async def write_for(journal: PostgresJournal, writer: str, task: int, seconds: float) -> None:
    entities = [f"w{writer}t{task}e{n}" for n in range(ENTITIES_PER_TASK)]
    next_seq_nr = dict.fromkeys(entities, 1)
    deadline = trio.current_time() + seconds
    while trio.current_time() < deadline:
        for entity in entities:
            await journal.append([deposited(entity, next_seq_nr[entity])])
            next_seq_nr[entity] += 1


async def write_late_ones(journal: PostgresJournal, writer: str) -> None:
    # While the other tasks write, so that later timestamps commit during the slow ones.
    await trio.sleep(0.2 + 0.2 * int(writer))
    for seq_nr in (1, 2, 3):
        await journal.append([deposited(f"w{writer}-late", seq_nr)])
    for seq_nr in (1, 2):
        await journal.append([deposited(f"w{writer}-tail", seq_nr)])


async def main(dsn: str, schema: str, writer: str, tasks: int, seconds: float) -> None:
    async with (
        open_postgres_journal(dsn, schema=schema, pool_size=tasks + 1) as journal,
        trio.open_nursery() as nursery,
    ):
        for task in range(tasks):
            nursery.start_soon(write_for, journal, writer, task, seconds)
        nursery.start_soon(write_late_ones, journal, writer)


if __name__ == "__main__":
    dsn, schema, writer, tasks, seconds = sys.argv[1:6]
    try:
        trio.run(main, dsn, schema, writer, int(tasks), float(seconds))
    except BaseException as exc:  # the parent reports whatever it was
        print(f"{type(exc).__module__}.{type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("ok", flush=True)
