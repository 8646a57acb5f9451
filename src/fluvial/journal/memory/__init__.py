"""The in-memory backend: a journal and snapshot store in a process's memory, for tests and
examples (nothing survives the process). The modules here are private; these are the public
names."""

from fluvial.journal.memory._journal import MemoryJournal as MemoryJournal

__all__ = ["MemoryJournal"]
