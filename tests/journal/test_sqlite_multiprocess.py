"""Two processes appending to one entity in one file: each append is checked against what is
really stored, so neither sees a gap that is not there, and nothing is lost or overwritten."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from journal_rival_writer import SHARED, append_all

from fluvial.journal.queries import events_by_persistence_id
from fluvial.journal.sqlite._journal import open_sqlite_journal

RIVAL = Path(__file__).with_name("journal_rival_writer.py")


@pytest.mark.slow
async def test_two_processes_appending_to_one_entity_keep_it_gapless(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    count = 150
    async with open_sqlite_journal(path) as journal:
        with trio.fail_after(60):
            rival = await trio.lowlevel.open_process(
                [sys.executable, str(RIVAL), str(path), "rival", str(count)],
                stdout=subprocess.PIPE,
            )
            try:
                assert rival.stdout is not None
                said = b""
                while not said.startswith(b"ready\n"):
                    said += await rival.stdout.receive_some()
                await append_all(journal, "here", count)
                await rival.wait()
                said += await rival.stdout.receive_some()
            finally:
                rival.kill()
        assert (rival.returncode, said) == (0, b"ready\nok\n")
        stored = [r async for r in events_by_persistence_id(journal, str(SHARED))]
    assert [r.seq_nr for r in stored] == list(range(1, 2 * count + 1))
    writers = [r.payload.data for r in stored if r.payload is not None]
    assert writers.count(b"here") == writers.count(b"rival") == count
    switches = sum(1 for a, b in itertools.pairwise(writers) if a != b)
    assert switches > 2, "the two processes did not append at the same time"
