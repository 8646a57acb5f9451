"""fluvial's public test kit: an in-memory journal and a synchronous behavior harness."""

from fluvial.testing.behavior_testkit import BehaviorTestKit as BehaviorTestKit
from fluvial.testing.behavior_testkit import CommandResult as CommandResult
from fluvial.testing.memory_journal import MemoryJournal as MemoryJournal

__all__ = [
    "BehaviorTestKit",
    "CommandResult",
    "MemoryJournal",
]
