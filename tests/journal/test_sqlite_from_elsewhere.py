"""What the SQLite journal's write of events from elsewhere keeps of the writer's guarantees:
group commit, a failing write failing alone with a typed error, and the remembered seq nrs
(read again after another writer of the file)."""

from __future__ import annotations

import threading
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.ids import SliceRange  # noqa: E402
from fluvial.core.records import EventRecord  # noqa: E402
from fluvial.core.serialization import SerializedPayload  # noqa: E402
from fluvial.journal.api import (  # noqa: E402
    EventAlreadyStored,
    EventStored,
    JournalClosed,
    JournalConflict,
    WriteFromElsewhereResult,
)
from fluvial.journal.sqlite._errors import JournalFileError  # noqa: E402
from fluvial.journal.sqlite._journal import open_sqlite_journal  # noqa: E402
from fluvial.journal.sqlite._transaction import WriteTransaction  # noqa: E402
from fluvial.testing.journal_contract import entity_ids, events, read_all  # noqa: E402

ENTITY_TYPE = "SqliteElsewhere"
ALL = SliceRange.all()


def from_elsewhere(records: list[EventRecord]) -> list[EventRecord]:
    return [msgspec.structs.replace(r, write_timestamp=1_000 + r.seq_nr) for r in records]


async def test_writes_from_elsewhere_share_the_transaction_of_the_turns_appends(
    tmp_path: Path,
) -> None:
    pushed, appended = (
        entity_ids(ENTITY_TYPE, ALL, 200)[:100],
        entity_ids(ENTITY_TYPE, ALL, 200)[100:],
    )
    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        commits_before = journal.database.commit_count()
        async with trio.open_nursery() as nursery:
            for push, append in zip(pushed, appended, strict=True):
                nursery.start_soon(journal.write_from_elsewhere, from_elsewhere(events(push, 1, 2)))
                nursery.start_soon(journal.append, events(append, 1, 1))
        assert journal.database.commit_count() - commits_before == 1
        for pid in pushed:
            assert [r.write_timestamp for r in await read_all(journal, pid)] == [1_001, 1_002]


async def test_a_failing_write_from_elsewhere_fails_alone_and_is_forgotten(
    tmp_path: Path,
) -> None:
    """A row SQLite cannot bind fails its write with a JournalFileError; the other writes of
    the transaction commit, and the writer forgets the seq nrs the failed write noted."""
    pid, other = entity_ids(ENTITY_TYPE, ALL, 2)
    unbindable = msgspec.structs.replace(
        from_elsewhere(events(pid, 2, 1))[0],
        payload=SerializedPayload("bad", 1, object()),  # type: ignore[arg-type]
    )
    entered, release = threading.Event(), threading.Event()

    def hold_the_writer(_txn: WriteTransaction) -> None:
        entered.set()
        release.wait(10)

    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        failures: list[Exception] = []
        results: list[list[WriteFromElsewhereResult]] = []

        async def write_bad() -> None:
            try:
                await journal.write_from_elsewhere([*from_elsewhere(events(pid, 1, 1)), unbindable])
            except JournalFileError as exc:
                failures.append(exc)

        async def write_good() -> None:
            results.append(await journal.write_from_elsewhere(from_elsewhere(events(other, 1, 2))))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(journal.database.write, hold_the_writer)
                await trio.to_thread.run_sync(entered.wait)
                nursery.start_soon(write_bad)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(write_good)
                await trio.testing.wait_all_tasks_blocked()
                release.set()

        assert len(failures) == 1
        assert await journal.highest_seq_nr(str(pid)) == 0
        assert [type(r) for r in results[0]] == [EventStored, EventStored]
        # Nothing of the failed write is remembered: pid starts at 1 again.
        again = await journal.write_from_elsewhere(from_elsewhere(events(pid, 1, 2)))
        assert [type(r) for r in again] == [EventStored, EventStored]
    with pytest.raises(JournalClosed):
        await journal.write_from_elsewhere(from_elsewhere(events(pid, 3, 1)))


async def test_the_seq_nrs_of_another_writer_of_the_file_are_read_again(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    (pid,) = entity_ids(ENTITY_TYPE, ALL, 1)
    async with open_sqlite_journal(path) as one, open_sqlite_journal(path) as two:
        await one.write_from_elsewhere(from_elsewhere(events(pid, 1, 1)))  # `one` remembers 1
        await two.append(events(pid, 2, 1))
        results = await one.write_from_elsewhere(from_elsewhere(events(pid, 2, 2)))
        assert results[0] == EventAlreadyStored(str(pid), 2)
        assert isinstance(results[1], EventStored)
        with pytest.raises(JournalConflict):
            await two.append(events(pid, 3, 1))
        assert [r.seq_nr for r in await read_all(two, pid)] == [1, 2, 3]
