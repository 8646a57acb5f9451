"""Opening journal files the way real deployments do: several processes, locks held elsewhere,
in-memory names, bad arguments."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.register_assert_rewrite("fluvial.testing.journal_contract")

from fluvial.core.errors import UsageError  # noqa: E402
from fluvial.core.ids import SliceRange  # noqa: E402
from fluvial.journal.sqlite._database import open_sqlite_database  # noqa: E402
from fluvial.journal.sqlite._errors import JournalBusy  # noqa: E402
from fluvial.journal.sqlite._journal import open_sqlite_journal  # noqa: E402
from fluvial.testing.journal_contract import current_by_slices, entity_ids, events  # noqa: E402

OPENER = Path(__file__).with_name("journal_opener.py")
ENTITY_TYPE = "Opening"
ALL = SliceRange.all()


@pytest.mark.slow
def test_processes_opening_new_journal_files_at_the_same_moment_all_succeed(
    tmp_path: Path,
) -> None:
    """Each round, several processes open one new file at once; the switch to WAL and the
    schema migration of a new file race there (a raw `database is locked` once, about one
    opening in a hundred)."""
    processes, rounds = 8, 10
    start = time.time() + 2.0  # after every process has imported fluvial
    started = [
        subprocess.Popen(
            [sys.executable, str(OPENER), str(tmp_path), f"p{n}", str(start), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(processes)
    ]
    try:
        outputs = [process.communicate(timeout=60) for process in started]
    finally:
        for process in started:
            process.kill()
    for (stdout, stderr), process in zip(outputs, started, strict=True):
        assert (process.returncode, stdout.strip()) == (0, "ok"), stderr


def _file_with_events(path: Path) -> None:
    async def write() -> None:
        async with open_sqlite_journal(path) as journal:
            await journal.append(events(entity_ids(ENTITY_TYPE, ALL, 1)[0], 1, 1))

    trio.run(write)


@contextlib.asynccontextmanager
async def write_lock_held_by_another_process(path: Path) -> AsyncIterator[None]:
    holder = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", holder, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        said = b""
        with trio.fail_after(30):
            while not said.endswith(b"\n"):
                said += await process.stdout.receive_some()
        assert said == b"locked\n"
        yield
    finally:
        process.kill()
        await process.wait()


async def test_opening_while_another_process_holds_the_write_lock_is_journal_busy(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    await trio.to_thread.run_sync(_file_with_events, path)
    async with write_lock_held_by_another_process(path):
        started = time.monotonic()
        with pytest.raises(JournalBusy) as busy:
            async with open_sqlite_journal(path, busy_timeout=0.2):
                pytest.fail("opened while another process held the write lock")
        assert time.monotonic() - started < 5
    assert str(path) in str(busy.value)
    assert "busy timeout" in str(busy.value)
    async with open_sqlite_journal(path) as journal:
        assert len(await current_by_slices(journal, ENTITY_TYPE, ALL)) == 1


async def test_a_write_waits_for_another_processs_lock_no_longer_than_the_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.db"
    pid, other = entity_ids(ENTITY_TYPE, ALL, 2)
    async with open_sqlite_journal(path, busy_timeout=0.2) as journal:
        stored = list(await journal.append(events(pid, 1, 1)))
        async with write_lock_held_by_another_process(path):
            started = time.monotonic()
            with pytest.raises(JournalBusy) as busy:
                await journal.append(events(pid, 2, 1))
            assert time.monotonic() - started < 5
            assert str(path) in str(busy.value)
            assert "nothing of the write was stored" in str(busy.value)
        # The lock is gone: the same append goes through, and the entity goes on.
        stored += await journal.append(events(pid, 2, 1))
        stored += await journal.append(events(other, 1, 1))
        assert await current_by_slices(journal, ENTITY_TYPE, ALL) == stored


@pytest.mark.parametrize("name", [":memory:", ""])
async def test_an_in_memory_name_is_refused_with_what_to_use_instead(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(UsageError) as refused:
        open_sqlite_journal(name)
    assert "MemoryJournal" in str(refused.value)
    assert "temporary directory" in str(refused.value)


@pytest.mark.parametrize(
    "arguments",
    [
        {"durability": "power"},
        {"durability": None},
        {"readers": 0},
        {"readers": 1.5},
        {"poll_interval": 0},
        {"poll_interval": -1},
        {"poll_interval": math.nan},
        {"busy_timeout": -0.1},
        {"busy_timeout": math.inf},
        {"busy_timeout": "5"},
    ],
    ids=repr,
)
async def test_bad_arguments_are_refused_at_the_call_before_the_file_is_touched(
    tmp_path: Path, arguments: dict[str, Any]
) -> None:
    path = tmp_path / "journal.db"
    with pytest.raises(UsageError) as refused:
        open_sqlite_journal(path, **arguments)
    (name,) = arguments
    assert name in str(refused.value)
    with pytest.raises(UsageError):
        open_sqlite_database(path, **arguments)
    assert not path.exists()
