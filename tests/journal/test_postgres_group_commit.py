"""The PostgreSQL journal's group commit: appends made while a transaction is in flight share
the next one, and each is still answered on its own (a conflict, a gap or a row the server
refuses fails only its own append); one entity's appends stay in order; every caller is
answered; followers wake; a cancelled append waiting for its turn did nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import outcome
import psycopg
import pytest
import trio

from fluvial.core.errors import UsageError
from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import AddItem, ShoppingCart, register_cart
from fluvial.journal.api import JournalConflict, JournalGap
from fluvial.journal.postgres import PostgresJournal, open_postgres_journal
from fluvial.testing.journal_contract import entity_ids, event, events, read_all
from postgres_server import DSN, postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 10.0
Connection = psycopg.Connection[tuple[object, ...]]


def _transactions(schema: str) -> dict[str, int]:
    """Each stored event's transaction id ("pid#seq_nr" -> xmin): rows of one transaction
    share it."""
    with psycopg.connect(DSN, autocommit=True, options=f"-c search_path={schema}") as conn:
        rows = conn.execute(
            "SELECT persistence_id, seq_nr, xmin::text FROM event_journal"
        ).fetchall()
    return {f"{pid}#{seq_nr}": int(xmin) for pid, seq_nr, xmin in rows}


class _Answers(dict[str, outcome.Outcome[Sequence[EventRecord]]]):
    """The outcomes of appends by "pid#first seq nr", filled in as they are answered."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self._count = count
        self._all = trio.Event()

    def on_done(self, key: str) -> Callable[[outcome.Outcome[Sequence[EventRecord]]], None]:
        def done(result: outcome.Outcome[Sequence[EventRecord]]) -> None:
            self[key] = result
            if len(self) == self._count:
                self._all.set()

        return done

    async def all(self) -> None:
        with trio.fail_after(TIMEOUT):
            await self._all.wait()


def _append_all_at_once(journal: PostgresJournal, batches: list[list[EventRecord]]) -> _Answers:
    """`append_soon` of each batch in one go (no checkpoint between them, so one writer takes
    them together)."""
    answered = _Answers(len(batches))
    for batch in batches:
        journal.append_soon(batch, answered.on_done(f"{batch[0].persistence_id}#{batch[0].seq_nr}"))
    return answered


async def test_a_conflict_and_a_gap_in_a_batch_fail_only_their_own_appends(
    postgres_schema: str,
) -> None:
    taken, gapped, *others = entity_ids("Pg", SliceRange.all(), 12)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        await journal.append(events(taken, 1, 2))
        batches = [events(pid, 1, 2) for pid in others[:5]]
        batches += [[event(taken, 2, data=b"rival")], events(gapped, 3, 1)]
        batches += [events(pid, 1, 1) for pid in others[5:]]
        answered = _append_all_at_once(journal, batches)
        await answered.all()

        with pytest.raises(JournalConflict) as conflict:
            answered[f"{taken}#2"].unwrap()
        assert (conflict.value.persistence_id, conflict.value.seq_nr) == (str(taken), 2)
        with pytest.raises(JournalGap) as gap:
            answered[f"{gapped}#3"].unwrap()
        assert gap.value.highest_seq_nr == 0
        for pid in others:
            stored = answered[f"{pid}#1"].unwrap()
            assert await read_all(journal, pid) == list(stored)
        assert [r.payload for r in await read_all(journal, taken)] == [
            e.payload for e in events(taken, 1, 2)
        ]  # nothing overwritten
        assert await read_all(journal, gapped) == []
    # The ten stored appends were one transaction: a group commit, not one each.
    transactions = _transactions(postgres_schema)
    assert len({transactions[f"{pid}#1"] for pid in others}) == 1


async def test_a_rival_commit_during_the_batch_fails_only_the_append_it_collides_with(
    postgres_schema: str,
) -> None:
    """Another writer holds seq nr 2 of one entity (uncommitted) while the batch's statement
    inserts it, then commits: the statement fails on the key, and the batch runs again with a
    savepoint around each append, so only the colliding one fails."""
    rivalled, *others = entity_ids("Pg", SliceRange.all(), 6)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        await journal.append(events(rivalled, 1, 1))
        rival = await trio.to_thread.run_sync(_hold_seq_nr, postgres_schema, [str(rivalled)], 2)
        try:
            batches = [events(pid, 1, 1) for pid in others[:2]]
            batches += [events(rivalled, 2, 2)]
            batches += [events(pid, 1, 3) for pid in others[2:]]
            answered = _append_all_at_once(journal, batches)
            await trio.to_thread.run_sync(_until_a_backend_waits_on_a_lock, postgres_schema)
            await trio.to_thread.run_sync(rival.commit)
        finally:
            rival.close()
        await answered.all()
        with pytest.raises(JournalConflict):
            answered[f"{rivalled}#2"].unwrap()
        for pid in others:
            assert await read_all(journal, pid) == list(answered[f"{pid}#1"].unwrap())
        assert [r.write_timestamp for r in await read_all(journal, rivalled)][1:] == [1]


async def test_a_row_the_server_refuses_fails_only_its_own_append(postgres_schema: str) -> None:
    refused, *others = entity_ids("Pg", SliceRange.all(), 4)
    bad = EventRecord(
        persistence_id=str(refused),
        seq_nr=1,
        entity_type=refused.entity_type,
        slice=refused.slice,
        payload=SerializedPayload("a\x00manifest", 1, b"x"),  # text cannot hold NUL
    )
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        batches = [events(others[0], 1, 1), [bad], *(events(pid, 1, 2) for pid in others[1:])]
        answered = _append_all_at_once(journal, batches)
        await answered.all()
        with pytest.raises(psycopg.DataError):
            answered[f"{refused}#1"].unwrap()
        for pid in others:
            assert await read_all(journal, pid) == list(answered[f"{pid}#1"].unwrap())
        assert await read_all(journal, refused) == []


async def test_what_the_batch_carries_comes_back_unchanged(postgres_schema: str) -> None:
    """The batch goes to the server as JSON: text beyond ASCII, tags, any payload bytes."""
    pids = [PersistenceId("Pg", name) for name in ("caf\u00e9", '\U0001f600 "quoted" \\', "plain")]
    batches = [
        [
            EventRecord(
                persistence_id=str(pid),
                seq_nr=seq_nr,
                entity_type=pid.entity_type,
                slice=pid.slice,
                tags=frozenset({"t\u00e9", "b"}) if seq_nr == 1 else frozenset(),
                payload=SerializedPayload("m\u00e4nifest", 7, bytes(range(256)) * seq_nr),
            )
            for seq_nr in (1, 2)
        ]
        for pid in pids
    ]
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        answered = _append_all_at_once(journal, batches)
        await answered.all()
        for pid, batch in zip(pids, batches, strict=True):
            stored = await read_all(journal, pid)
            assert stored == list(answered[f"{pid}#1"].unwrap())
            assert [(r.tags, r.payload) for r in stored] == [(e.tags, e.payload) for e in batch]


async def test_one_entitys_appends_made_at_once_commit_in_order(postgres_schema: str) -> None:
    """Appends of one entity made before the first is answered are not checked against each
    other in one statement: each waits for the transaction after the previous one."""
    ordered, *others = entity_ids("Pg", SliceRange.all(), 4)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        batches = [events(ordered, seq_nr, 1) for seq_nr in range(1, 11)]
        batches += [events(pid, 1, 1) for pid in others]
        batches += [events(ordered, 11, 3)]
        answered = _append_all_at_once(journal, batches)
        await answered.all()
        stored = await read_all(journal, ordered)
        assert [r.seq_nr for r in stored] == list(range(1, 14))
        assert stored == [
            r for n in [*range(1, 11), 11] for r in answered[f"{ordered}#{n}"].unwrap()
        ]
        timestamps = [r.timestamp for r in stored]
        assert timestamps == sorted(set(timestamps))  # strictly increasing with the seq nr


async def test_many_concurrent_appenders_are_all_answered_in_few_transactions(
    postgres_schema: str,
) -> None:
    pids = entity_ids("Pg", SliceRange.all(), 300)
    rounds = 3
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        returned: dict[str, list[EventRecord]] = {str(pid): [] for pid in pids}

        async def appender(pid: object) -> None:
            for seq_nr in range(1, rounds + 1):
                returned[str(pid)] += await journal.append(events(pid, seq_nr, 1))  # type: ignore[arg-type]

        with trio.fail_after(TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for pid in pids:
                    nursery.start_soon(appender, pid)
        for pid in pids:
            assert [r.seq_nr for r in returned[str(pid)]] == [1, 2, 3]
            assert await read_all(journal, pid) == returned[str(pid)]
    transactions = _transactions(postgres_schema)
    assert len(transactions) == len(pids) * rounds
    assert len(set(transactions.values())) <= len(pids)  # ~ one per round, far from 900


async def test_a_group_commit_wakes_followers_at_once(postgres_schema: str) -> None:
    pids = entity_ids("Pg", SliceRange.all(), 20)
    # Polling once a minute: only this process's commit can wake the follower in time.
    async with open_postgres_journal(DSN, schema=postgres_schema, poll_interval=60) as journal:
        seen = journal.append_count()
        woken = trio.Event()

        async def follower() -> None:
            await journal.wait_for_new_events(seen)
            woken.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower)
            await trio.sleep(0.05)  # the follower waits
            answered = _append_all_at_once(journal, [events(pid, 1, 1) for pid in pids])
            with trio.fail_after(TIMEOUT):
                await woken.wait()
        await answered.all()
        assert journal.append_count() > seen


class _Held:
    """The appends `_every_writer_held` made: their entities, and what they stored."""

    def __init__(self, writers: int) -> None:
        self.pids = entity_ids("Held", SliceRange.all(), writers)
        self.stored: list[EventRecord] = []


@contextlib.asynccontextmanager
async def _every_writer_held(
    journal: PostgresJournal, schema: str, writers: int
) -> AsyncIterator[_Held]:
    """Every writer of `journal` held by the server while the block runs: a rival transaction
    holds seq nr 1 of one entity per writer, and an append of each, made one after the other,
    is taken by a writer of its own whose transaction waits for the rival's lock (seen in
    pg_stat_activity). The rival rolls back as the block ends (however it ends, so a failing
    test does not leave writers stuck); the held appends then commit."""
    held = _Held(writers)
    rival = await trio.to_thread.run_sync(_hold_seq_nr, schema, [str(pid) for pid in held.pids], 1)

    async def append(pid: PersistenceId) -> None:
        held.stored.extend(await journal.append(events(pid, 1, 1)))

    try:
        async with trio.open_nursery() as nursery:
            try:
                for count, pid in enumerate(held.pids, start=1):
                    nursery.start_soon(append, pid)
                    await trio.to_thread.run_sync(_until_a_backend_waits_on_a_lock, schema, count)
                yield held
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(rival.rollback)
    finally:
        rival.close()


@pytest.mark.parametrize(
    ("options", "writers"),
    [
        ({"writers": 1}, 1),
        ({"writers": 3}, 3),
        ({"pool_size": 2}, 2),  # the default: 4, or pool_size if smaller
    ],
)
async def test_each_writer_runs_its_own_transaction_at_the_same_time(
    postgres_schema: str, options: dict[str, int], writers: int
) -> None:
    """`writers` transactions are in flight at once (each blocked in the server, so they
    overlap for sure), and no more: an append made while all are held waits for one."""
    (free,) = entity_ids("Free", SliceRange.all(), 1)
    async with open_postgres_journal(DSN, schema=postgres_schema, **options) as journal:
        with trio.fail_after(TIMEOUT):
            async with _every_writer_held(journal, postgres_schema, writers) as held:
                in_transactions = await trio.to_thread.run_sync(_open_transactions, postgres_schema)
                assert in_transactions == writers
                # No writer is free: the append of an entity nobody holds is not taken.
                with trio.move_on_after(0.3) as waited:
                    await journal.append(events(free, 1, 1))
                assert waited.cancelled_caught
        # (Read once the writers let go: with pool_size 2 they hold every connection.)
        assert await read_all(journal, free) == []
        assert sorted(r.persistence_id for r in held.stored) == sorted(map(str, held.pids))
        assert [r.seq_nr for r in await journal.append(events(free, 1, 1))] == [1]


@pytest.mark.parametrize("writers", [1, 2, 4])
async def test_an_append_cancelled_while_it_waits_for_a_writer_did_nothing(
    postgres_schema: str, writers: int
) -> None:
    """Every writer is held by the server; an append behind them, cancelled, is never stored,
    and the writers go on once the rival lets go."""
    (waiting,) = entity_ids("Pg", SliceRange.all(), 1)
    async with open_postgres_journal(DSN, schema=postgres_schema, writers=writers) as journal:
        with trio.fail_after(TIMEOUT):
            async with _every_writer_held(journal, postgres_schema, writers) as held:
                with trio.move_on_after(0.2) as scope:
                    await journal.append(events(waiting, 1, 1))
                assert scope.cancelled_caught
        assert {r.persistence_id for r in held.stored} == set(map(str, held.pids))
        assert await read_all(journal, waiting) == []
        assert [r.seq_nr for r in await journal.append(events(waiting, 1, 1))] == [1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"writers": 0}, "writers must be at least 1"),
        ({"writers": 9}, r"writers \(9\) may not exceed pool_size \(8\)"),
        ({"writers": 3, "pool_size": 2}, r"writers \(3\) may not exceed pool_size \(2\)"),
        ({"max_appends_per_transaction": 0}, "max_appends_per_transaction must be at least 1"),
    ],
)
def test_group_commit_settings_that_cannot_work_raise_usage_error(
    arguments: dict[str, int], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        open_postgres_journal(DSN, **arguments)  # type: ignore[arg-type]


async def test_as_many_writers_as_connections_and_one_append_per_transaction_work(
    postgres_schema: str,
) -> None:
    pids = entity_ids("Pg", SliceRange.all(), 6)
    async with open_postgres_journal(
        DSN, schema=postgres_schema, pool_size=2, writers=2, max_appends_per_transaction=1
    ) as journal:
        answered = _append_all_at_once(journal, [events(pid, 1, 2) for pid in pids])
        await answered.all()
        for pid in pids:
            assert await read_all(journal, pid) == list(answered[f"{pid}#1"].unwrap())
            assert await journal.highest_seq_nr(str(pid)) == 2
    transactions = _transactions(postgres_schema)
    assert len(set(transactions.values())) == len(pids)  # one append per transaction


async def test_appends_waiting_when_the_journal_closes_are_committed_and_answered(
    postgres_schema: str,
) -> None:
    pids = entity_ids("Pg", SliceRange.all(), 50)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        answered = _append_all_at_once(journal, [events(pid, 1, 1) for pid in pids])
    assert len(answered) == len(pids)
    async with open_postgres_journal(DSN, schema=postgres_schema) as journal:
        for pid in pids:
            assert await read_all(journal, pid) == list(answered[f"{pid}#1"].unwrap())


async def test_entities_on_postgres_answer_every_command(postgres_schema: str) -> None:
    registry = register_cart(SerializerRegistry())
    async with (
        open_postgres_journal(DSN, schema=postgres_schema) as journal,
        open_entities(journal, registry, [ShoppingCart], snapshots=journal) as entities,
    ):

        async def shop(n: int) -> None:
            cart = entities.ref(ShoppingCart, f"cart-{n}")
            for quantity in range(1, 4):
                summary = await cart.ask(AddItem("apple", quantity))
                assert summary.items == {"apple": sum(range(1, quantity + 1))}

        with trio.fail_after(TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for n in range(100):
                    nursery.start_soon(shop, n)
        assert await journal.highest_seq_nr("ShoppingCart|cart-7") == 3


def _hold_seq_nr(schema: str, pids: Sequence[str], seq_nr: int) -> Connection:
    conn = psycopg.connect(DSN, options=f"-c search_path={schema}")
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO event_journal (persistence_id, seq_nr, entity_type, slice, db_timestamp)"
            " VALUES (%s, %s, 'Pg', 0, 1)",
            [(pid, seq_nr) for pid in pids],
        )
    return conn  # its transaction stays open


def _open_transactions(schema: str) -> int:
    """How many of the journal's connections are inside a transaction now."""
    with psycopg.connect(DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE xact_start IS NOT NULL "
            "AND application_name = %s",
            (f"fluvial:{schema}",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _until_a_backend_waits_on_a_lock(schema: str, count: int = 1) -> None:
    # Polling the server's view: the append's thread gives trio no signal while it waits.
    deadline = time.monotonic() + TIMEOUT
    with psycopg.connect(DSN, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = %s",
                (f"fluvial:{schema}",),
            ).fetchone()
            if row and row[0] >= count:
                return
            time.sleep(0.005)
    raise AssertionError(f"never {count} appends waiting for the rival's lock")
