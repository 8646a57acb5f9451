"""The child process of test_crash: appends to a SQLite journal until it is killed.

    python journal_crash_writer.py PATH SEED

One trio task per entity appends batches of 1-5 events with the real journal API, so that many
appends share each group commit. After each append returns, it prints
``acked <persistence id> <last seq nr>`` (flushed), so the parent knows what was committed
before it killed this process. Every event's payload names its batch (`batch_events`), so the
parent can check that no batch was stored in part.
"""

from __future__ import annotations

import random
import sys

import trio

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.sqlite._journal import open_sqlite_journal

PIDS = [PersistenceId("Crash", f"entity-{n}") for n in range(6)]


def batch_events(pid: PersistenceId, first_seq_nr: int, count: int) -> list[EventRecord]:
    """One append's events; each payload is ``b"{first seq nr}+{count}"`` of its batch."""
    marker = f"{first_seq_nr}+{count}".encode()
    return [
        EventRecord(
            persistence_id=str(pid),
            seq_nr=seq_nr,
            entity_type=pid.entity_type,
            slice=pid.slice,
            payload=SerializedPayload("crash.Event", 1, marker),
        )
        for seq_nr in range(first_seq_nr, first_seq_nr + count)
    ]


async def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    async with open_sqlite_journal(path) as journal:

        async def append_forever(pid: PersistenceId) -> None:
            next_seq_nr = await journal.highest_seq_nr(str(pid)) + 1
            while True:
                count = rng.randint(1, 5)
                await journal.append(batch_events(pid, next_seq_nr, count))
                next_seq_nr += count
                print(f"acked {pid} {next_seq_nr - 1}", flush=True)

        async with trio.open_nursery() as nursery:
            for pid in PIDS:
                nursery.start_soon(append_forever, pid)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
