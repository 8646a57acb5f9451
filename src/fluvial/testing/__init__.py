"""fluvial's public test kit: an in-memory journal and a synchronous behavior harness."""

from fluvial.journal.memory import MemoryJournal as MemoryJournal
from fluvial.testing._behavior_testkit import BehaviorTestKit as BehaviorTestKit
from fluvial.testing._behavior_testkit import CommandResult as CommandResult

__all__ = [
    "BehaviorTestKit",
    "CommandResult",
    "MemoryJournal",
]
