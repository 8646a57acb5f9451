"""Group commit of an (ungrouped) exactly-once projection: the batches already waiting behind a
source batch commit in its transaction, up to GROUP_COMMIT_RECORDS records, so that a burst
after a stall drains in a few transactions; a lone batch commits at once. Every envelope is
still applied exactly once and in seq nr order per entity, and a handler failure in such a
transaction falls back to a transaction per batch: the batches before it commit, and the
recovery strategy retries, skips or fails the failing batch as without group commit.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.core.first_sight import FirstSight
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offset_tracker import OffsetChanges
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.sqlite._journal import SqliteJournal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore
from fluvial.projection._exactly_once import GROUP_COMMIT_RECORDS, consume_exactly_once
from fluvial.projection._handlers import ExactlyOnce, RecoveryStrategy
from fluvial.projection._instance import HandlerFailed, Instance
from fluvial.projection._runner import serve_projection
from fluvial.projection.api import QueryReached, SourceMessage
from projection.projection_helpers import (
    ENTITY_TYPE,
    NAME,
    REGISTRY,
    Added,
    Envelope,
    apply_to_model,
    model_order,
    projection,
    read_model,
    stored_seq_nr,
    wait_for_commits_until,
)

ALL = SliceRange.all()
PIDS = [f"{ENTITY_TYPE}|{name}" for name in "abc"]
Key = tuple[str, int]


def one_event_batches(count: int) -> list[SourceMessage]:
    """`count` batches of one event each, the entities of PIDS in turn, timestamps 1, 2, ..."""
    seq_nrs = dict.fromkeys(PIDS, 0)
    batches: list[SourceMessage] = []
    for n in range(count):
        pid = PIDS[n % len(PIDS)]
        seq_nrs[pid] += 1
        record = EventRecord(
            pid,
            seq_nrs[pid],
            ENTITY_TYPE,
            slice_for(pid),
            REGISTRY.encode(Added(n)),
            timestamp=n + 1,
        )
        batches.append(([record], EnvelopeSource.QUERY))
    return batches


def keys(batches: Sequence[SourceMessage]) -> list[Key]:
    return [
        (r.persistence_id, r.seq_nr)
        for b in batches
        if not isinstance(b, QueryReached)
        for r in b[0]
    ]


class CountingStore(SqliteOffsetStore):
    """The journal's offset store, keeping what each exactly-once transaction that committed
    applied (the handler notes the envelopes it applies in `applied`)."""

    def __init__(self, journal: SqliteJournal) -> None:
        super().__init__(journal.database)
        self.applied: list[Key] = []
        self.transactions: list[list[Key]] = []

    async def commit(
        self,
        projection: str,
        slices: SliceRange,
        changes: OffsetChanges,
        write: Callable[[sqlite3.Connection], Any] | None,
    ) -> Any:
        start = len(self.applied)
        result = await super().commit(projection, slices, changes, write)
        if write is not None:
            self.transactions.append(self.applied[start:])
        return result

    def handler(
        self, fails: Callable[[Envelope, int], bool] | None = None
    ) -> ExactlyOnce[Added, sqlite3.Connection]:
        """`apply_to_model`, noting each envelope; raises where `fails(envelope, attempt)`."""
        attempts: dict[Key, int] = {}

        def handle(conn: sqlite3.Connection, envelope: Envelope) -> None:
            key = (envelope.persistence_id, envelope.seq_nr)
            attempt = attempts[key] = attempts.get(key, -1) + 1
            if fails is not None and fails(envelope, attempt):
                raise ValueError(f"handler fails on {key} (attempt {attempt})")
            apply_to_model(conn, envelope)
            self.applied.append(key)

        return ExactlyOnce(handle)


def failing_on(key: Key, attempts: list[int]) -> Callable[[Envelope, int], bool]:
    """A `fails` for the handler: always on the envelope `key`, noting each attempt at it."""

    def fails(envelope: Envelope, attempt: int) -> bool:
        if (envelope.persistence_id, envelope.seq_nr) != key:
            return False
        attempts.append(attempt)
        return True

    return fails


class NoSource:
    """What admission asks of a source, for records that never need it."""

    first_sight = FirstSight.QUERY_IN_COMMIT_ORDER

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> list[EventRecord]:
        raise AssertionError("no gap to replay")

    async def load_event(self, persistence_id: str, seq_nr: int) -> EventRecord | None:
        raise AssertionError("every record has its payload")

    async def event_timestamp(self, persistence_id: str, seq_nr: int) -> int | None:
        raise AssertionError("no first sight above seq nr 1")


class Waiting:
    """An exactly-once consumer's instance, its handler and offset store, and a channel in
    which all of `messages` already wait."""

    def __init__(
        self,
        store: CountingStore,
        messages: Sequence[SourceMessage],
        fails: Callable[[Envelope, int], bool] | None,
        recovery: RecoveryStrategy | None,
        source: NoSource | None = None,
    ) -> None:
        self.store = store
        self.handler = store.handler(fails)
        self.instance: Instance[Added, sqlite3.Connection] = Instance(
            source or NoSource(),  # type: ignore[arg-type]  # admission needs no more of it
            REGISTRY,
            store,
            projection(self.handler, recovery=recovery),
            ALL,
        )
        send, self.receive = trio.open_memory_channel[SourceMessage](len(messages))
        for message in messages:
            send.send_nowait(message)

    @classmethod
    async def open(
        cls,
        journal: SqliteJournal,
        messages: Sequence[SourceMessage],
        *,
        fails: Callable[[Envelope, int], bool] | None = None,
        recovery: RecoveryStrategy | None = None,
        source: NoSource | None = None,
    ) -> Waiting:
        store = CountingStore(journal)
        await store.register(NAME, ENTITY_TYPE)
        waiting = cls(store, messages, fails, recovery, source)
        await waiting.instance.reload()
        return waiting

    async def consume(self) -> None:
        await consume_exactly_once(self.instance, self.receive, self.handler)


async def consume_waiting(
    journal: SqliteJournal,
    messages: Sequence[SourceMessage],
    *,
    fails: Callable[[Envelope, int], bool] | None = None,
    recovery: RecoveryStrategy | None = None,
) -> CountingStore:
    """Run an exactly-once consumer over a channel in which all of `messages` already wait,
    until every entity's last event is stored as handled."""
    waiting = await Waiting.open(journal, messages, fails=fails, recovery=recovery)
    last: dict[str, int] = {}
    for pid, seq_nr in keys(messages):
        last[pid] = max(last.get(pid, 0), seq_nr)

    async def done() -> bool:
        return all([await stored_seq_nr(journal, pid) == n for pid, n in last.items()])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting.consume)
        await wait_for_commits_until(journal, done)
        nursery.cancel_scope.cancel()
    return waiting.store


async def assert_applied_once_in_order(journal: SqliteJournal, expected: list[Key]) -> None:
    """The read model holds `expected` (in seq nr order per entity), each applied once, each
    entity's in that order."""
    model = await read_model(journal)
    assert sorted(model) == sorted(expected)
    assert {times for _, times in model.values()} == {1}
    order = await model_order(journal)
    assert order == {pid: [s for p, s in expected if p == pid] for pid in order}


async def test_batches_waiting_behind_a_batch_commit_in_its_transaction(
    journal: SqliteJournal,
) -> None:
    burst = one_event_batches(20)
    store = await consume_waiting(journal, burst)
    assert store.transactions == [keys(burst)]  # one transaction, in arrival order
    await assert_applied_once_in_order(journal, keys(burst))


async def test_a_transaction_takes_waiting_batches_up_to_the_bound(journal: SqliteJournal) -> None:
    burst = one_event_batches(2 * GROUP_COMMIT_RECORDS + 10)
    store = await consume_waiting(journal, burst)
    assert [len(t) for t in store.transactions] == [GROUP_COMMIT_RECORDS] * 2 + [10]
    assert [k for t in store.transactions for k in t] == keys(burst)
    await assert_applied_once_in_order(journal, keys(burst))


async def test_a_lone_batch_commits_without_waiting_for_the_next(
    journal: SqliteJournal,
) -> None:
    # Through serve_projection: the source sends a batch, and the next only once the first
    # is stored as handled.
    first, second = one_event_batches(2)
    store = CountingStore(journal)
    handler = store.handler()
    stored = trio.Event()

    class OneThenAnother(NoSource):
        def source(self, entity_type: str, slices: SliceRange, settings: Any) -> OneThenAnother:
            return self

        async def run(
            self,
            offset: TimestampOffset,
            send: trio.MemorySendChannel[SourceMessage],
            *,
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            task_status.started()
            await send.send(first)
            await stored.wait()
            await send.send(second)
            await trio.sleep_forever()

    async def first_stored() -> bool:
        return await stored_seq_nr(journal, PIDS[0]) == 1

    async def both_stored() -> bool:
        return await stored_seq_nr(journal, PIDS[1]) == 1

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(serve_projection, offsets=store),
                OneThenAnother(),
                REGISTRY,
                projection(handler),
            )
            await wait_for_commits_until(journal, first_stored)
            stored.set()
            await wait_for_commits_until(journal, both_stored)
            nursery.cancel_scope.cancel()
    assert store.transactions == [keys([first]), keys([second])]


async def test_a_failure_in_a_group_commits_each_batch_alone_as_without_group_commit(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    # The handler fails once on the fifth envelope: the batches before it commit, and its
    # own batch is retried (here it succeeds), as if each batch had been a transaction.
    burst = one_event_batches(10)
    poisoned = keys(burst)[4]
    store = await consume_waiting(
        journal,
        burst,
        fails=lambda e, attempt: (e.persistence_id, e.seq_nr) == poisoned and attempt == 0,
        recovery=RecoveryStrategy.retry_and_fail(1),
    )
    assert store.transactions == [[key] for key in keys(burst)]
    await assert_applied_once_in_order(journal, keys(burst))


async def test_under_fail_the_batches_before_the_failing_one_of_a_group_commit(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    burst = one_event_batches(10)
    poisoned = keys(burst)[4]
    waiting = await Waiting.open(
        journal, burst, fails=lambda e, attempt: (e.persistence_id, e.seq_nr) == poisoned
    )
    with pytest.raises(HandlerFailed) as failed:
        await waiting.consume()
    assert (failed.value.persistence_id, failed.value.seq_nr) == poisoned
    assert waiting.store.transactions == [[key] for key in keys(burst)[:4]]


@pytest.mark.parametrize("retries", [0, 2])
async def test_a_batch_that_fails_in_a_group_has_the_attempts_it_has_alone(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock, retries: int
) -> None:
    # The group's failure is the failing batch's first attempt: under retry_and_fail(n) the
    # handler runs on the failing envelope n + 1 times in all, as without group commit.
    burst = one_event_batches(10)
    poisoned = keys(burst)[4]
    attempts: list[int] = []
    recovery = RecoveryStrategy.retry_and_fail(retries)
    waiting = await Waiting.open(
        journal, burst, fails=failing_on(poisoned, attempts), recovery=recovery
    )
    with pytest.raises(HandlerFailed):
        await waiting.consume()
    assert attempts == list(range(retries + 1))
    assert waiting.store.transactions == [[key] for key in keys(burst)[:4]]


class Replaying(NoSource):
    """A source whose replays answer from `records`."""

    def __init__(self, records: Sequence[EventRecord]) -> None:
        self.records = records

    async def replay(
        self, persistence_id: str, from_seq_nr: int, to_seq_nr: int
    ) -> list[EventRecord]:
        return [
            r
            for r in self.records
            if r.persistence_id == persistence_id and from_seq_nr <= r.seq_nr <= to_seq_nr
        ]


async def test_a_replayed_event_that_fails_in_a_group_has_the_attempts_it_has_alone(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    # The third batch holds a#3 and a gap: a#2 is replayed into its plan, and fails always.
    # The group's attempt is the first of that batch, whose records do not hold a#2.
    a, b, _ = PIDS
    journal_records = [
        EventRecord(
            pid, seq_nr, ENTITY_TYPE, slice_for(pid), REGISTRY.encode(Added(n)), timestamp=n
        )
        for n, (pid, seq_nr) in enumerate([(a, 1), (b, 1), (a, 2), (a, 3)], start=1)
    ]
    delivered = [journal_records[i] for i in (0, 1, 3)]
    poisoned = (a, 2)
    attempts: list[int] = []
    waiting = await Waiting.open(
        journal,
        [([r], EnvelopeSource.QUERY) for r in delivered],
        fails=failing_on(poisoned, attempts),
        recovery=RecoveryStrategy.retry_and_fail(1),
        source=Replaying(journal_records),
    )
    with pytest.raises(HandlerFailed) as failed:
        await waiting.consume()
    assert (failed.value.persistence_id, failed.value.seq_nr) == poisoned
    assert attempts == [0, 1]
    assert waiting.store.transactions == [[(a, 1)], [(b, 1)]]


async def test_a_duplicate_of_the_failing_event_later_in_the_group_is_not_a_failed_attempt(
    journal: SqliteJournal,
    virtual_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The fifth event fails once, in the group; alone, its batch's retry succeeds. The same
    # event comes again three batches later (the query after the live path): that batch's
    # first attempt is its own, with the event dropped as a duplicate, and nothing retries it.
    burst = one_event_batches(10)
    poisoned = keys(burst)[4]
    with_duplicate = [*burst[:8], burst[4], *burst[8:]]
    store = await consume_waiting(
        journal,
        with_duplicate,
        fails=lambda e, attempt: (e.persistence_id, e.seq_nr) == poisoned and attempt == 0,
        recovery=RecoveryStrategy.retry_and_fail(1),
    )
    await assert_applied_once_in_order(journal, keys(burst))
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 1, retries
    assert store.transactions[4] == [poisoned]


async def test_skipping_in_a_group_skips_only_the_envelope_that_fails_alone(
    journal: SqliteJournal,
    virtual_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    burst = one_event_batches(10)
    poisoned = keys(burst)[4]
    store = await consume_waiting(
        journal,
        burst,
        fails=lambda e, attempt: (e.persistence_id, e.seq_nr) == poisoned,
        recovery=RecoveryStrategy.retry_and_skip(1),
    )
    everything_else = [k for k in keys(burst) if k != poisoned]
    await assert_applied_once_in_order(journal, everything_else)
    # Found alone: the others committed one by one, the poisoned one as skipped.
    assert [k for t in store.transactions for k in t] == everything_else
    assert await stored_seq_nr(journal, poisoned[0]) == max(
        s for p, s in keys(burst) if p == poisoned[0]
    )
    skipped = [r.getMessage() for r in caplog.records if "skipping 1 envelope(s)" in r.getMessage()]
    assert len(skipped) == 1
    assert f"{poisoned[0]}#{poisoned[1]}" in skipped[0]


async def test_a_query_reached_taken_with_a_group_counts_again_after_a_failed_attempt(
    journal: SqliteJournal, virtual_clock: trio.testing.MockClock
) -> None:
    # A backtracking record moves its slice only once the query has passed it in this run;
    # here a QueryReached waiting before it says so. A failed attempt reloads the tracker:
    # the retry must count that QueryReached again, in its place, to store what a first
    # attempt that did not fail would have.
    a, b = PIDS[0], PIDS[1]
    by_query = EventRecord(a, 1, ENTITY_TYPE, slice_for(a), REGISTRY.encode(Added(1)), timestamp=10)
    late = EventRecord(b, 1, ENTITY_TYPE, slice_for(b), REGISTRY.encode(Added(2)), timestamp=20)
    messages: list[SourceMessage] = [
        ([by_query], EnvelopeSource.QUERY),
        QueryReached(30),
        ([late], EnvelopeSource.BACKTRACKING),
    ]
    store = await consume_waiting(
        journal,
        messages,
        fails=lambda e, attempt: e.persistence_id == b and attempt == 0,
        recovery=RecoveryStrategy.retry_and_fail(1),
    )
    assert store.transactions == [[(a, 1)], [(b, 1)]]
    offsets = await store.offsets(NAME)
    assert offsets[slice_for(a)] == TimestampOffset(10, {a: 1})
    assert offsets[slice_for(b)] == TimestampOffset(20, {b: 1})


async def test_under_fail_the_batches_taken_before_one_that_cannot_be_admitted_commit(
    journal: SqliteJournal,
) -> None:
    # Admission fails on the fifth waiting batch (its event cannot be decoded, under fail()):
    # the four taken before it commit, each alone as without group commit, before the error.
    burst = one_event_batches(10)
    records, source = burst[4]  # type: ignore[misc]  # a batch, not a QueryReached
    corrupt = SerializedPayload("test.Added", 1, b"\xc1 not msgpack")
    burst[4] = ([msgspec.structs.replace(records[0], payload=corrupt)], source)
    waiting = await Waiting.open(journal, burst)
    with pytest.raises(HandlerFailed) as failed:
        await waiting.consume()
    assert (failed.value.persistence_id, failed.value.seq_nr) == keys(burst)[4]
    assert waiting.store.transactions == [[key] for key in keys(burst)[:4]]
    await assert_applied_once_in_order(journal, keys(burst)[:4])
