"""Instructions of an exactly-once projection's transactions, for comparing two versions under
callgrind (instruction counts do not depend on the machine's load).

`commit N`: N exactly-once transactions of one event each, straight through the SQLite offset
store (`SqliteOffsetStore.commit`: the offset rows, the handler's one row, the commit), as the
consumer of a followed event makes them (a live event: its entity's row; `--query`: its
slice's offset too); what one costs in the writer thread shows with `--separate-threads=yes`
(the writer is a thread of its own; its file is the one whose totals grow with N).

`burst N`: an exactly-once consumer drains N one-event batches that all wait in its channel
(as after a stall), N / 3 events each of three entities; the difference of two runs divided by
the difference of their N is what one waiting batch costs, transactions included::

    export PYTHONHASHSEED=0
    for n in 220 20; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/callgrind_exactly_once.py burst $n 2>&1 | grep Collected
    done

It prints how many transactions the consumer committed.
"""

from __future__ import annotations

import argparse
import functools
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializerRegistry
from fluvial.journal.sqlite import open_sqlite_journal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection import ExactlyOnce, Projection
from fluvial.projection._exactly_once import consume_exactly_once
from fluvial.projection._instance import Instance
from fluvial.projection.api import SourceMessage


@attrs.frozen
class Tick:
    n: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Tick, "bench.Tick")
NAME, ENTITY_TYPE = "ticks", "Ticker"
PIDS = [f"{ENTITY_TYPE}|{name}" for name in "abc"]
ALL = SliceRange.all()


def create_model(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE ticks (pid TEXT, seq_nr INTEGER, n INTEGER)")


def apply(conn: sqlite3.Connection, envelope: EventEnvelope[Tick]) -> None:
    conn.execute(
        "INSERT INTO ticks VALUES (?, ?, ?)",
        (envelope.persistence_id, envelope.seq_nr, envelope.event.n),
    )


def records(count: int) -> list[EventRecord]:
    """`count` events, the entities of PIDS in turn, timestamps 1, 2, ..."""
    seq_nrs = dict.fromkeys(PIDS, 0)
    made = []
    for n in range(count):
        pid = PIDS[n % len(PIDS)]
        seq_nrs[pid] += 1
        payload = REGISTRY.encode(Tick(n))
        made.append(
            EventRecord(pid, seq_nrs[pid], ENTITY_TYPE, slice_for(pid), payload, timestamp=n + 1)
        )
    return made


class NoSource:
    """What admission asks of a source, for records that never need it."""

    first_sight = FirstSight.QUERY_IN_COMMIT_ORDER

    async def replay(self, *args: Any) -> list[EventRecord]:
        raise AssertionError("no gap")

    async def load_event(self, *args: Any) -> EventRecord | None:
        raise AssertionError("no placeholder")

    async def event_timestamp(self, *args: Any) -> int | None:
        raise AssertionError("no first sight above seq nr 1")


async def main(mode: str, count: int, source: EnvelopeSource) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with open_sqlite_journal(Path(tmp) / "consumer.db") as journal:
            store = SqliteOffsetStore(journal.database)
            await store.register(NAME, ENTITY_TYPE)
            await store.migrate_read_model(NAME, [create_model])
            events = records(count)
            if mode == "commit":
                tracker = await store.load(NAME, ALL, window=300 * 1_000_000)
                for record in events:
                    tracker.validate(record, source)
                    tracker.accept(record)
                    tracker.passed(record, source)  # a slice offset to write, from the query
                    envelope = EventEnvelope.of(record, Tick(0), source)
                    write = functools.partial(apply, envelope=envelope)
                    await store.commit(NAME, ALL, tracker.take_changes(), write)
                return
            await _burst(journal, store, events, source)


async def _burst(
    journal: Any, store: SqliteOffsetStore, events: list[EventRecord], source: EnvelopeSource
) -> None:
    applied: list[int] = []  # by the handler, in the writer thread
    drained = trio.Event()

    class Counting(SqliteOffsetStore):
        """Sets `drained` once a commit has applied every event (no reads to find out)."""

        async def commit(self, *args: Any) -> Any:
            result = await super().commit(*args)
            if len(applied) >= len(events):
                drained.set()
            return result

    def counted(conn: sqlite3.Connection, envelope: EventEnvelope[Tick]) -> None:
        apply(conn, envelope)
        applied.append(1)

    handler = ExactlyOnce(counted)
    instance: Instance[Tick, sqlite3.Connection] = Instance(
        NoSource(),  # type: ignore[arg-type]
        REGISTRY,
        Counting(store.database),
        Projection(NAME, ENTITY_TYPE, handler),
        ALL,
    )
    await instance.reload()
    send, receive = trio.open_memory_channel[SourceMessage](len(events) or 1)
    for record in events:
        send.send_nowait(([record], source))
    first = journal.database.commit_count()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume_exactly_once, instance, receive, handler)
        await drained.wait()
        nursery.cancel_scope.cancel()
    print(f"transactions: {journal.database.commit_count() - first}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["commit", "burst"])
    parser.add_argument("count", type=int)
    parser.add_argument(
        "--query",
        action="store_true",
        help="events from the query (LIVE otherwise): each "
        "transaction also writes its slice's offset",
    )
    args = parser.parse_args()
    trio.run(
        main, args.mode, args.count, EnvelopeSource.QUERY if args.query else EnvelopeSource.LIVE
    )
