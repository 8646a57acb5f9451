"""fluvial's public test kit: an in-memory journal and offset store, a synchronous behavior
harness, and the contract suites of journals (`fluvial.testing.journal_contract`), projection
sources (`fluvial.testing.source_contract`) and offset stores
(`fluvial.testing.offset_store_contract`)."""

from fluvial.journal.memory import MemoryJournal as MemoryJournal
from fluvial.journal.memory import MemoryOffsetStore as MemoryOffsetStore
from fluvial.journal.memory import MemoryTransaction as MemoryTransaction
from fluvial.testing._behavior_testkit import BehaviorTestKit as BehaviorTestKit
from fluvial.testing._behavior_testkit import CommandResult as CommandResult

__all__ = [
    "BehaviorTestKit",
    "CommandResult",
    "MemoryJournal",
    "MemoryOffsetStore",
    "MemoryTransaction",
]
