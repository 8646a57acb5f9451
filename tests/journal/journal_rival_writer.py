"""A process that appends to one entity that another process appends to as well.

Run by test_sqlite_multiprocess.py: `python journal_rival_writer.py FILE NAME COUNT` appends
COUNT events to the entity "Rival|shared", each at the highest stored seq nr + 1, retrying
after a JournalConflict (the other process took that seq nr). It prints "ready" once the
journal is open, then "ok", or the error that stopped it.
"""

from __future__ import annotations

import sys

import trio

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.api import JournalConflict
from fluvial.journal.sqlite._journal import SqliteJournal, open_sqlite_journal

SHARED = PersistenceId("Rival", "shared")


def shared_event(seq_nr: int, writer: str) -> EventRecord:
    return EventRecord(
        persistence_id=str(SHARED),
        seq_nr=seq_nr,
        entity_type=SHARED.entity_type,
        slice=SHARED.slice,
        payload=SerializedPayload("rival.Event", 1, writer.encode()),
    )


async def append_all(journal: SqliteJournal, writer: str, count: int) -> int:
    """Append `count` events of `writer` to the shared entity; the conflicts it met."""
    conflicts = 0
    for _ in range(count):
        while True:
            seq_nr = await journal.highest_seq_nr(str(SHARED)) + 1
            try:
                await journal.append([shared_event(seq_nr, writer)])
                break
            except JournalConflict:
                conflicts += 1
    return conflicts


async def main(path: str, writer: str, count: int) -> None:
    async with open_sqlite_journal(path) as journal:
        print("ready", flush=True)
        await append_all(journal, writer, count)


if __name__ == "__main__":
    path, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        trio.run(main, path, writer, count)
    except BaseException as exc:  # the parent reports whatever it was
        print(f"{type(exc).__module__}.{type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    print("ok", flush=True)
