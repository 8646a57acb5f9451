"""A process that opens new journal files at agreed moments and appends to its own entity.

Run by test_sqlite_opening.py: `python journal_opener.py DIRECTORY NAME START ROUNDS` opens
DIRECTORY/journal-<r>.db for r in 0..ROUNDS-1, each when the wall clock reads START + r/4
(seconds since the epoch), so that several processes open each new file at the same moment.
It prints "ok", or the errors it got.
"""

from __future__ import annotations

import os
import sys
import time

import trio

from fluvial.core.ids import PersistenceId
from fluvial.core.records import EventRecord
from fluvial.core.serialization import SerializedPayload
from fluvial.journal.sqlite._journal import open_sqlite_journal

ROUND_INTERVAL = 0.25


async def open_and_append(path: str, name: str) -> None:
    pid = PersistenceId("Opener", name)
    record = EventRecord(
        persistence_id=str(pid),
        seq_nr=1,
        entity_type=pid.entity_type,
        slice=pid.slice,
        payload=SerializedPayload("opener.Event", 1, name.encode()),
    )
    async with open_sqlite_journal(path) as journal:
        await journal.append([record])


def main(directory: str, name: str, start: float, rounds: int) -> list[str]:
    errors: list[str] = []
    for round_ in range(rounds):
        time.sleep(max(0.0, start + round_ * ROUND_INTERVAL - time.time()))
        path = os.path.join(directory, f"journal-{round_}.db")
        try:
            trio.run(open_and_append, path, name)
        except BaseException as exc:  # the parent reports whatever it was
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            errors.append(f"round {round_}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
    return errors


if __name__ == "__main__":
    directory, name, start, rounds = sys.argv[1:]
    errors = main(directory, name, float(start), int(rounds))
    print("\n".join(errors) if errors else "ok", flush=True)
