"""`ask` and cancellation: a cancelled `ask` did nothing until its command was in the mailbox;
from then on the command is carried out to completion, reply or no reply.

On the memory journal and on a real SQLite file: the SQLite journal answers an append through
a callback (`append_soon`), the memory journal in the entity task, and both must agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from entity.entity_fixtures import REGISTRY, GatedJournal, Note, Notebook
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import AddItem, Get, ItemUpdated, ShoppingCart
from fluvial.journal.api import MAX_SEQ_NR, Journal
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing import MemoryJournal

PID = "ShoppingCart|c"


@pytest.fixture(params=["memory", "sqlite"])
def open_journal(
    request: pytest.FixtureRequest, tmp_path: Path
) -> contextlib.AbstractAsyncContextManager[Journal]:
    @contextlib.asynccontextmanager
    async def memory() -> AsyncIterator[Journal]:
        yield MemoryJournal()

    if request.param == "memory":
        return memory()
    return open_sqlite_journal(tmp_path / "journal.db")


async def stored(journal: Journal) -> list[object]:
    records = await journal.read_events(PID, 1, MAX_SEQ_NR, 100)
    return [
        REGISTRY.decode(r.payload, persistence_id=PID, seq_nr=r.seq_nr)
        for r in records
        if r.payload is not None
    ]


@pytest.mark.parametrize("live", [False, True], ids=["new entity", "live entity"])
async def test_an_ask_cancelled_before_it_starts_persists_nothing(
    open_journal: contextlib.AbstractAsyncContextManager[Journal], live: bool
) -> None:
    async with open_journal as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "c")
        if live:  # the entity task runs, so the command would go straight into its mailbox
            await cart.ask(AddItem("apple", 1))
        with trio.move_on_after(0) as scope:
            await cart.ask(AddItem("pear", 1))
        assert scope.cancelled_caught
        # The next command sees the state without the cancelled one, and so does the journal.
        summary = await cart.ask(Get())
        assert summary.items == ({"apple": 1} if live else {})
        assert await stored(journal) == ([ItemUpdated("apple", 1)] if live else [])


async def test_an_ask_cancelled_while_waiting_for_its_reply_is_still_carried_out(
    open_journal: contextlib.AbstractAsyncContextManager[Journal],
) -> None:
    async with open_journal as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "c")
        await cart.ask(AddItem("apple", 1))
        with trio.CancelScope() as scope:

            async def cancel_soon() -> None:
                scope.cancel()

            # The command is in the mailbox before `ask` first waits; the cancellation comes
            # while it waits for the reply.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_soon)
                await cart.ask(AddItem("pear", 1))
        assert scope.cancelled_caught
        assert (await cart.ask(Get())).items == {"apple": 1, "pear": 1}
        assert await stored(journal) == [ItemUpdated("apple", 1), ItemUpdated("pear", 1)]


async def test_a_caller_cancelled_while_the_journal_holds_its_write_sees_it_carried_out() -> None:
    journal = GatedJournal()
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")
        journal.hold()
        impatient = trio.CancelScope()

        async def send() -> None:
            with impatient:
                await notes.ask(Note(("a",)))

        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        impatient.cancel()
        await trio.testing.wait_all_tasks_blocked()
        journal.release()
        assert await notes.ask(Note(("b",))) == ("a", "b")
    assert impatient.cancelled_caught
