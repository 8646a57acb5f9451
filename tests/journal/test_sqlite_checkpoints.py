"""The SQLite journal's WAL checkpoints: the bulk in a thread of its own while writes go on,
the rest by the writer when idle, so that the WAL keeps restarting; and a close during one.

The threshold is lowered to `PAGES` so that a test crosses it many times in a few thousand
small appends (the real one is tested in test_sqlite_writer.py)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.journal.sqlite import _checkpoints
from fluvial.journal.sqlite._checkpoints import WalCheckpoints
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal
from fluvial.testing.journal_contract import current_by_slices, events

PAGES = 100
PID = PersistenceId("SqliteCheckpoints", "entity")
FRAME = 4096 + 24  # a page and its frame header


@pytest.fixture(autouse=True)
def low_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_checkpoints, "CHECKPOINT_PAGES", PAGES)


def wal_restarts(path: Path) -> int:
    """The checkpoint sequence number in the WAL's header: SQLite counts each time it has
    started writing the WAL from its beginning again."""
    with open(f"{path}-wal", "rb") as wal:
        return int.from_bytes(wal.read(16)[12:16], "big")


def wal_frames(path: Path) -> int:
    """How many frames the WAL file holds room for: its high-water mark (a restart writes
    over the old frames and does not shrink the file)."""
    return Path(f"{path}-wal").stat().st_size // FRAME


async def append_one_by_one(journal: SqliteJournal, first_seq_nr: int, count: int) -> int:
    """Append `count` events of PID, one commit each; the next seq nr."""
    for seq_nr in range(first_seq_nr, first_seq_nr + count):
        await journal.append(events(PID, seq_nr, 1))
    return first_seq_nr + count


class HeldBulkPass:
    """Holds the checkpointer's first bulk pass inside a SQLite call on its own connection
    (a function of the statement it runs) until `release` is set, then lets it checkpoint."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        checkpoint = WalCheckpoints._bulk_pass

        def bulk_pass(checkpoints: WalCheckpoints, conn: sqlite3.Connection) -> None:
            conn.create_function("held", 0, self._held)
            conn.execute("SELECT held()")
            checkpoint(checkpoints, conn)
            self.finished.set()

        monkeypatch.setattr(WalCheckpoints, "_bulk_pass", bulk_pass)

    def _held(self) -> None:
        self.entered.set()
        self.release.wait(timeout=5)  # a bound, should the writer wait for it after all

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 5), "no bulk pass began"


async def test_the_wal_starts_again_from_its_beginning_under_a_steady_stream_of_writes(
    tmp_path: Path,
) -> None:
    """The writer backfills the rest of each bulk pass when idle, so that the next write finds
    the whole WAL copied and starts it again: the WAL stays a few thresholds long, however
    much is written (a checkpointer alone, racing the writes, never let it restart).

    One append a millisecond, as on the live path: appends one after the other with no pause
    would let the trio thread hand over the next one before the writer finds its queue empty,
    now and then for hundreds of commits on a loaded machine, which only defers the rest."""
    path = tmp_path / "journal.db"
    async with open_sqlite_journal(path) as journal:
        # ~4,000 pages by the writer's count (40 thresholds), ~3,500 frames: SQLite's backstop
        # (16,000) does not checkpoint.
        for seq_nr in range(1, 1001):
            await journal.append(events(PID, seq_nr, 1))
            await trio.sleep(0.001)
        restarts, frames = wal_restarts(path), wal_frames(path)
    assert restarts >= 10, f"{restarts} restarts, {frames} frames"
    assert frames < 10 * PAGES, f"{restarts} restarts, {frames} frames"


async def test_writes_commit_while_the_checkpointer_is_inside_its_bulk_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldBulkPass(monkeypatch)
    async with open_sqlite_journal(tmp_path / "journal.db") as journal:
        next_seq_nr = await append_one_by_one(journal, 1, PAGES)
        await held.wait_entered()
        with trio.fail_after(3):
            next_seq_nr = await append_one_by_one(journal, next_seq_nr, 50)
        assert not held.finished.is_set(), "the writes waited for the bulk pass"
        held.release.set()
        assert await trio.to_thread.run_sync(held.finished.wait, 5)
        stored = await current_by_slices(journal, PID.entity_type, SliceRange.all())
    assert [record.seq_nr for record in stored] == list(range(1, next_seq_nr))


async def test_closing_during_a_bulk_pass_waits_for_it_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The close ends the checkpointer thread after its pass, which closes its connection: the
    last connection then checkpoints the whole WAL into the file and deletes it."""
    path = tmp_path / "journal.db"
    held = HeldBulkPass(monkeypatch)

    async def release_soon() -> None:
        await trio.sleep(0.1)
        held.release.set()

    with caplog.at_level(logging.WARNING, logger="fluvial.journal"):
        async with trio.open_nursery() as nursery:
            async with open_sqlite_journal(path) as journal:
                next_seq_nr = await append_one_by_one(journal, 1, PAGES)
                await held.wait_entered()
                next_seq_nr = await append_one_by_one(journal, next_seq_nr, 20)
                nursery.start_soon(release_soon)
            assert held.finished.is_set(), "closed before the bulk pass ended"
    assert not [thread for thread in threading.enumerate() if "checkpointer" in thread.name]
    assert not caplog.records
    assert not await trio.Path(f"{path}-wal").exists()
    async with open_sqlite_journal(path) as journal:
        stored = await current_by_slices(journal, PID.entity_type, SliceRange.all())
    assert [record.seq_nr for record in stored] == list(range(1, next_seq_nr))
