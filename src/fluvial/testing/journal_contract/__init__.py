"""The contract every Journal + SnapshotStore implementation passes (SQLite, memory, PostgreSQL).

Use it by subclassing `JournalContract` in a test module, in a class whose name starts with
``Test``, and giving that class a ``journal`` fixture that yields an open, empty journal::

    pytest.register_assert_rewrite("fluvial.testing.journal_contract")
    from fluvial.testing.journal_contract import JournalContract, JournalUnderTest

    class TestMyJournal(JournalContract):
        @pytest.fixture
        async def journal(self) -> AsyncIterator[JournalUnderTest]:
            async with open_my_journal() as journal:
                yield journal

pytest then collects every contract test for that journal. The tests need pytest-trio in
``trio_mode``. Registering the module for assertion rewriting (before importing it) makes
pytest show the compared values when a contract test fails.

What the contract promises users: appends are atomic and never overwrite (a taken seq nr raises
`JournalConflict` and stores nothing of its batch), never leave a gap (a first seq nr beyond the
entity's highest stored + 1 raises `JournalGap` and stores nothing), reads return exactly what
was stored (replication metadata and write timestamps included), the events-by-slices queries
return one entity type and slice range in timestamp order (up to a timestamp, without payloads
or without one origin's), and resuming from any offset yields exactly the events not seen yet,
then follows new ones; one event loads by seq nr, and a slice range's latest event timestamp is
its newest event's; snapshots keep their event's timestamp and tags, and the newest of each
entity come by slices in their events' order; events written from elsewhere keep their identity
and are answered stored, already stored or gap (docs/event-model.md).
"""

from __future__ import annotations

from fluvial.testing.journal_contract._appends import AppendContract
from fluvial.testing.journal_contract._from_elsewhere import FromElsewhereContract
from fluvial.testing.journal_contract._lookups import LookupContract
from fluvial.testing.journal_contract._records import JournalUnderTest as JournalUnderTest
from fluvial.testing.journal_contract._records import current_by_slices as current_by_slices
from fluvial.testing.journal_contract._records import entity_ids as entity_ids
from fluvial.testing.journal_contract._records import event as event
from fluvial.testing.journal_contract._records import events as events
from fluvial.testing.journal_contract._records import read_all as read_all
from fluvial.testing.journal_contract._records import snapshot as snapshot
from fluvial.testing.journal_contract._records import timestamp_order as timestamp_order
from fluvial.testing.journal_contract._slices import SliceQueryContract
from fluvial.testing.journal_contract._snapshots import SnapshotContract

__all__ = [
    "JournalContract",
    "JournalUnderTest",
    "current_by_slices",
    "entity_ids",
    "event",
    "events",
    "read_all",
    "snapshot",
    "timestamp_order",
]


class JournalContract(
    AppendContract, SliceQueryContract, LookupContract, SnapshotContract, FromElsewhereContract
):
    """The contract tests. Subclass in a ``Test*`` class that defines a ``journal`` fixture."""
