"""What the projection tests share: an `Added` counter event, a read model in the journal's
file and an exactly-once handler that records how often each event was applied, an appender,
an at-least-once recorder, and ways to run and wait for projections."""

from __future__ import annotations

import functools
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from typing_extensions import TypeVar as TypeVarWithDefault

from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventEnvelope, EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._handlers import (
    Backoff,
    Handler,
    RecoveryStrategy,
)
from fluvial.projection._runner import Projection, ProjectionFailed, serve_projection
from fluvial.projection._source_settings import SourceSettings

ENTITY_TYPE = "Counter"
NAME = "model"
QUIET = SourceSettings(backtracking_interval=None)  # no timer of its own on the trio clock


@attrs.frozen
class Added:
    amount: int


REGISTRY = SerializerRegistry()
REGISTRY.register(Added, "test.Added")

Envelope = EventEnvelope[Added]
T = TypeVarWithDefault("T", default=object)  # as Projection's: at-least-once runs on any store


MODEL_TABLES = (
    "CREATE TABLE model (pid TEXT NOT NULL, seq_nr INTEGER NOT NULL, amount INTEGER NOT NULL, "
    "times INTEGER NOT NULL, PRIMARY KEY (pid, seq_nr))",
    "CREATE TABLE model_order (n INTEGER PRIMARY KEY AUTOINCREMENT, pid TEXT, seq_nr INTEGER)",
)


def apply_to_model(conn: sqlite3.Connection, envelope: Envelope) -> None:
    """The exactly-once handler: records each event it applies, and how often."""
    conn.execute(
        "INSERT INTO model VALUES (?, ?, ?, 1) ON CONFLICT (pid, seq_nr) "
        "DO UPDATE SET times = times + 1",
        (envelope.persistence_id, envelope.seq_nr, envelope.event.amount),
    )
    conn.execute(
        "INSERT INTO model_order (pid, seq_nr) VALUES (?, ?)",
        (envelope.persistence_id, envelope.seq_nr),
    )


def apply_group_to_model(conn: sqlite3.Connection, envelopes: Sequence[Envelope]) -> None:
    for envelope in envelopes:
        apply_to_model(conn, envelope)


class Appender:
    """Appends `Added` events straight to the journal, numbering each entity's seq nrs."""

    def __init__(self, journal: SqliteJournal) -> None:
        self.journal = journal
        self.seq_nrs: dict[str, int] = defaultdict(int)

    @staticmethod
    def pid(entity_id: str) -> str:
        return f"{ENTITY_TYPE}|{entity_id}"

    async def append(self, entity_id: str, *amounts: int) -> list[EventRecord]:
        return await self.append_payloads(entity_id, *(REGISTRY.encode(Added(a)) for a in amounts))

    async def append_payloads(
        self, entity_id: str, *payloads: SerializedPayload
    ) -> list[EventRecord]:
        pid = self.pid(entity_id)
        first = self.seq_nrs[pid] + 1
        records = [
            EventRecord(pid, first + i, ENTITY_TYPE, slice_for(pid), payload)
            for i, payload in enumerate(payloads)
        ]
        stored = await self.journal.append(records)
        self.seq_nrs[pid] += len(records)
        return list(stored)


async def journal_fold(journal: SqliteJournal) -> dict[tuple[str, int], int]:
    """Every event of the journal: (pid, seq nr) -> amount."""

    def query(conn: sqlite3.Connection) -> list[tuple[str, int, str, int, bytes]]:
        return conn.execute(
            "SELECT persistence_id, seq_nr, manifest, ser_version, payload FROM event_journal "
            "WHERE entity_type = ?",
            (ENTITY_TYPE,),
        ).fetchall()

    fold = {}
    for pid, seq_nr, manifest, version, data in await journal.database.read(query):
        event = REGISTRY.decode(
            SerializedPayload(manifest, version, data), persistence_id=pid, seq_nr=seq_nr
        )
        fold[pid, seq_nr] = event.amount
    return fold


async def read_model(journal: SqliteJournal) -> dict[tuple[str, int], tuple[int, int]]:
    """The read model: (pid, seq nr) -> (amount, times applied)."""

    def query(conn: sqlite3.Connection) -> list[tuple[str, int, int, int]]:
        return conn.execute("SELECT pid, seq_nr, amount, times FROM model").fetchall()

    return {(p, s): (a, t) for p, s, a, t in await journal.database.read(query)}


async def model_order(journal: SqliteJournal) -> dict[str, list[int]]:
    """Each entity's seq nrs in the order the handler applied them."""

    def query(conn: sqlite3.Connection) -> list[tuple[str, int]]:
        return conn.execute("SELECT pid, seq_nr FROM model_order ORDER BY n").fetchall()

    order: dict[str, list[int]] = defaultdict(list)
    for pid, seq_nr in await journal.database.read(query):
        order[pid].append(seq_nr)
    return dict(order)


async def model_size(journal: SqliteJournal) -> int:
    def query(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM model").fetchone()[0])

    return await journal.database.read(query)


async def wait_for_commits_until(
    journal: SqliteJournal, done: Callable[[], Awaitable[bool]], within: float = 15
) -> None:
    """Wait (re-checking after every commit to the journal's file) until `done()`, for at
    most `within` seconds."""
    with trio.fail_after(within):
        while True:
            seen = journal.database.commit_count()
            if await done():
                return
            await journal.database.wait_for_commit(seen)


async def wait_for_model(journal: SqliteJournal, size: int) -> None:
    """Wait until the read model holds `size` events."""

    async def done() -> bool:
        return await model_size(journal) >= size

    await wait_for_commits_until(journal, done)


async def wait_for_stored(journal: SqliteJournal, pid: str, seq_nr: int) -> None:
    """Wait until `pid` is stored as handled to `seq_nr`."""

    async def done() -> bool:
        return await stored_seq_nr(journal, pid) >= seq_nr

    await wait_for_commits_until(journal, done, within=30)


async def assert_model_is_the_fold(journal: SqliteJournal) -> None:
    """Every event of the journal applied exactly once, in seq nr order per entity."""
    fold = await journal_fold(journal)
    assert await read_model(journal) == {key: (amount, 1) for key, amount in fold.items()}
    order = await model_order(journal)
    for pid, seq_nrs in order.items():
        assert seq_nrs == list(range(1, len(seq_nrs) + 1)), pid
    assert sum(len(s) for s in order.values()) == len(fold)


class Recorder:
    """An at-least-once handler that records (pid, seq nr, amount, virtual time) per call and
    wakes waiters; `fail_when(envelope, attempt)` makes a call raise."""

    def __init__(self, fail_when: Callable[[Envelope, int], bool] | None = None) -> None:
        self.calls: list[tuple[str, int, int, float]] = []
        self.groups: list[list[tuple[str, int]]] = []
        self.fail_when = fail_when
        self._attempts: dict[tuple[str, int], int] = defaultdict(int)
        self._changed = trio.Event()

    def _record(self, envelope: Envelope) -> None:
        key = (envelope.persistence_id, envelope.seq_nr)
        attempt = self._attempts[key]
        self._attempts[key] += 1
        self.calls.append((*key, envelope.event.amount, trio.current_time()))
        self._changed.set()
        self._changed = trio.Event()
        if self.fail_when is not None and self.fail_when(envelope, attempt):
            raise ValueError(f"handler fails on {key[0]}#{key[1]} (attempt {attempt})")

    async def handle(self, envelope: Envelope) -> None:
        self._record(envelope)

    async def handle_group(self, envelopes: Sequence[Envelope]) -> None:
        self.groups.append([(e.persistence_id, e.seq_nr) for e in envelopes])
        for envelope in envelopes:
            self._record(envelope)

    def seen(self) -> set[tuple[str, int]]:
        return {(pid, seq_nr) for pid, seq_nr, _, _ in self.calls}

    async def wait_until(self, done: Callable[[], bool]) -> None:
        with trio.fail_after(15):
            while not done():
                await self._changed.wait()

    async def wait_for(self, *keys: tuple[str, int]) -> None:
        await self.wait_until(lambda: set(keys) <= self.seen())


def projection(
    handler: Handler[Added, T],
    *,
    recovery: RecoveryStrategy | None = None,
    backoff: Backoff | None = None,
    source: SourceSettings | None = None,
    name: str = NAME,
    window: float = 300.0,
    lease_duration: float = 10.0,
) -> Projection[Added, T]:
    return Projection(
        name=name,
        entity_type=ENTITY_TYPE,
        handler=handler,
        recovery=recovery or RecoveryStrategy.fail(),
        backoff=backoff or Backoff(),
        source=source or SourceSettings(),
        window=window,
        lease_duration=lease_duration,
    )


async def start(
    nursery: trio.Nursery,
    journal: SqliteJournal,
    projection_: Projection[Added, sqlite3.Connection],
    slices: SliceRange | None = None,
    offsets: SqliteOffsetStore | None = None,
) -> None:
    await nursery.start(
        functools.partial(serve_projection, offsets=offsets),
        journal,
        REGISTRY,
        projection_,
        slices,
    )


async def run_until_failed(
    journal: SqliteJournal,
    projection_: Projection[Added, sqlite3.Connection],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> ProjectionFailed:
    """Run `projection_` until it raises ProjectionFailed, and `meanwhile` to its end."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            if meanwhile is not None:
                nursery.start_soon(meanwhile)
            try:
                await serve_projection(journal, REGISTRY, projection_)
            except ProjectionFailed as exc:
                return exc  # once `meanwhile` is done too
    raise AssertionError("serve_projection returned")


def trio_clock() -> Callable[[], float]:
    """The trio clock (virtual under `virtual_clock`) as an offset store's `clock`: the store
    reads it in the journal's writer thread, inside its writes."""
    token = trio.lowlevel.current_trio_token()
    return lambda: trio.from_thread.run_sync(trio.current_time, trio_token=token)


def exactly(seconds: float) -> Any:
    """`seconds` of virtual time, up to float rounding (0.2 + 0.4 != 0.6)."""
    return pytest.approx(seconds, abs=1e-9)


class StallableQuery:
    """Wraps the journal's events-by-slices query; once `stall` is set, new calls never
    return, so only the live path (and replays by persistence id) can deliver."""

    def __init__(self, journal: SqliteJournal, monkeypatch: pytest.MonkeyPatch) -> None:
        self.journal = journal
        self.stall = False
        self.stalled = trio.Event()
        self.completed = 0
        self.delivered: list[EventRecord] = []
        self.replays: list[tuple[str, int, int]] = []
        read_by_slices, read_events = journal.read_events_by_slices, journal.read_events

        async def by_slices(*args: Any, **kwargs: Any) -> list[EventRecord]:
            if self.stall:
                self.stalled.set()
                await trio.sleep_forever()
            page = await read_by_slices(*args, **kwargs)
            self.completed += 1
            self.delivered.extend(page)
            return page

        async def events(pid: str, from_seq_nr: int, to_seq_nr: int, limit: int) -> Any:
            self.replays.append((pid, from_seq_nr, to_seq_nr))
            return await read_events(pid, from_seq_nr, to_seq_nr, limit)

        monkeypatch.setattr(journal, "read_events_by_slices", by_slices)
        monkeypatch.setattr(journal, "read_events", events)

    async def stall_now(self) -> None:
        """Stall, and wait until the query is parked (a read already under way finishes)."""
        self.stall = True
        with trio.fail_after(5):
            while not self.stalled.is_set():
                await self.journal.database.write(lambda txn: None)  # wakes the query
                with trio.move_on_after(0.05):
                    await self.stalled.wait()


class SaveLog:
    """Records when the offset store saves, on the trio clock, and what."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.saves: list[tuple[float, dict[str, int]]] = []
        save = SqliteOffsetStore.save

        async def logging_save(
            store: SqliteOffsetStore, name: str, slices: SliceRange, changes: Any
        ) -> None:
            await save(store, name, slices, changes)
            if changes.entities:
                self.saves.append(
                    (trio.current_time(), {e.persistence_id: e.seq_nr for e in changes.entities})
                )

        monkeypatch.setattr(SqliteOffsetStore, "save", logging_save)


def management_calls(
    store: SqliteOffsetStore, name: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each management call of the offset store on projection `name`, by its name (the
    writes: `set_offset` to the start, `skip_event` of Counter|a #1, `reset`)."""
    return {
        "offsets": lambda: store.offsets(name),
        "backlog": lambda: store.backlog(name, ENTITY_TYPE, SliceRange.all()),
        "set_offset": lambda: store.set_offset(name, SliceRange.all(), TimestampOffset.start()),
        "skip_event": lambda: store.skip_event(name, "Counter|a", 1),
        "reset": lambda: store.reset(name),
        "wait_until_caught_up": lambda: store.wait_until_caught_up(name),
    }


async def stored_seq_nr(journal: SqliteJournal, pid: str, name: str = NAME) -> int:
    """The seq nr stored as handled for `pid` (read with SQL: tests patch the store)."""

    def query(conn: sqlite3.Connection) -> int:
        row = conn.execute(
            "SELECT seq_nr FROM projection_entity WHERE projection_name = ? AND persistence_id = ?",
            (name, pid),
        ).fetchone()
        return int(row[0]) if row else 0

    return await journal.database.read(query)
