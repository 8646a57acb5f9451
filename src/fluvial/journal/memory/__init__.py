"""The in-memory backend: a journal and snapshot store in a process's memory, and an offset
store of projections beside it, for tests and examples (nothing survives the process). The
modules here are private; these are the public names."""

from fluvial.journal.memory._journal import MemoryJournal as MemoryJournal
from fluvial.journal.memory._offset_store import MemoryOffsetStore as MemoryOffsetStore
from fluvial.journal.memory._transaction import MemoryTransaction as MemoryTransaction

__all__ = ["MemoryJournal", "MemoryOffsetStore", "MemoryTransaction"]
