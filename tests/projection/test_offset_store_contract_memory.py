"""The offset store contract on the memory store, and what is its own: one store per
journal, and a transaction that is over once its call is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

pytest.register_assert_rewrite("fluvial.testing.offset_store_contract")

from fluvial.core.errors import UsageError  # noqa: E402
from fluvial.core.ids import SliceRange  # noqa: E402
from fluvial.core.offset_tracker import OffsetChanges  # noqa: E402
from fluvial.journal.memory import (  # noqa: E402
    MemoryJournal,
    MemoryOffsetStore,
    MemoryTransaction,
)
from fluvial.projection.api import HasOffsetStore, OffsetStore  # noqa: E402
from fluvial.testing.offset_store_contract import (  # noqa: E402
    ManualClock,
    OffsetStoreContract,
    StoreUnderTest,
)


class TestMemoryOffsetStore(OffsetStoreContract):
    @pytest.fixture
    async def offset_store(self) -> AsyncIterator[StoreUnderTest[MemoryTransaction]]:
        journal = MemoryJournal()
        notes: list[str] = []

        def note(text: str) -> Callable[[MemoryTransaction], None]:
            return lambda txn: txn.on_commit(lambda: notes.append(text))

        async def read_notes() -> list[str]:
            return list(notes)

        clock = ManualClock()
        yield StoreUnderTest(
            store=MemoryOffsetStore(journal, clock=clock),
            journal=journal,
            clock=clock,
            note=note,
            clear_notes=lambda txn: txn.on_commit(notes.clear),
            notes=read_notes,
        )


async def test_a_memory_journal_keeps_one_offset_store() -> None:
    journal = MemoryJournal()
    assert isinstance(journal, HasOffsetStore)
    store: OffsetStore[MemoryTransaction] = journal.offset_store()
    assert journal.offset_store() is store
    await store.register("p", "Counter")
    assert await journal.offset_store().offsets("p") == {}
    assert MemoryJournal().offset_store() is not store


async def test_a_transaction_kept_past_its_call_refuses_writes() -> None:
    store = MemoryJournal().offset_store()
    await store.register("p", "Counter")
    kept: list[MemoryTransaction] = []
    await store.commit("p", SliceRange.all(), OffsetChanges((), {}), kept.append)
    with pytest.raises(UsageError):
        kept[0].on_commit(lambda: None)
