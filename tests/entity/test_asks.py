"""Asks: typed replies, the order of one entity's commands, concurrency between entities,
backpressure, and commands sent to the wrong entity."""

from __future__ import annotations

from typing import assert_type

import pytest
import trio
import trio.testing

from entity.entity_fixtures import (
    REGISTRY,
    GatedJournal,
    Note,
    Notebook,
    SnappyCart,
    Storage,
    stored_events,
    stored_texts,
)
from fluvial.core.ids import slice_for
from fluvial.entity import CommandTypeError, UnknownEntityType, open_entities
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CheckedOut,
    Checkout,
    EmptyCart,
    Get,
    ItemUpdated,
    RemoveItem,
    ShoppingCart,
    Summary,
)
from fluvial.journal.api import MAX_SEQ_NR
from fluvial.testing import MemoryJournal


async def test_asks_return_typed_replies_and_store_events(storage: Storage) -> None:
    async with storage.open() as journal, open_entities(journal, REGISTRY, [ShoppingCart]) as ents:
        cart = ents.ref(ShoppingCart, "cart-1")
        added = await cart.ask(AddItem("apple", 2))
        assert_type(added, Summary)
        assert added == Summary({"apple": 2}, False)
        assert await cart.ask(RemoveItem("apple", 1)) == Summary({"apple": 1}, False)
        assert await cart.ask(Get()) == Summary({"apple": 1}, False)
        assert await cart.ask(Checkout()) == Summary({"apple": 1}, True)

        pid = "ShoppingCart|cart-1"
        records = await journal.read_events(pid, 1, MAX_SEQ_NR, 100)
        assert [r.seq_nr for r in records] == [1, 2, 3]
        assert {(r.entity_type, r.slice) for r in records} == {("ShoppingCart", slice_for(pid))}
        assert [r.tags for r in records] == [frozenset(), frozenset(), frozenset({"checkout"})]
        assert await stored_events(journal, pid) == [
            ItemUpdated("apple", 2),
            ItemUpdated("apple", -1),
            CheckedOut(),
        ]


async def test_a_closed_cart_refuses_changes_with_cart_closed() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart]) as entities:
        cart = entities.ref(ShoppingCart, "closed")
        with pytest.raises(EmptyCart):
            await cart.ask(Checkout())
        await cart.ask(AddItem("apple", 1))
        await cart.ask(Checkout())
        for command in (AddItem("pear", 1), RemoveItem("apple", 1), Checkout()):
            with pytest.raises(CartClosed):
                await cart.ask(command)
        assert await cart.ask(Get()) == Summary({"apple": 1}, True)
    assert await stored_events(journal, "ShoppingCart|closed") == [
        ItemUpdated("apple", 1),
        CheckedOut(),
    ]


@pytest.mark.parametrize("mailbox_size", [64, 2])
async def test_commands_to_one_entity_are_handled_one_after_another_in_order(
    mailbox_size: int,
) -> None:
    journal = MemoryJournal()
    sent: list[str] = []
    replies: dict[str, Summary] = {}
    async with open_entities(journal, REGISTRY, [ShoppingCart], mailbox_size=mailbox_size) as ents:
        cart = ents.ref(ShoppingCart, "busy")

        async def caller(item: str) -> None:
            # With room in the mailbox, ask queues the command before its first checkpoint, so
            # this is the order of sending (trio runs the callers in a shuffled order).
            sent.append(item)
            replies[item] = await cart.ask(AddItem(item, 1))

        async with trio.open_nursery() as nursery:
            for k in range(40):
                nursery.start_soon(caller, f"item-{k:02}")

    order = [e.item_id for e in await stored_events(journal, "ShoppingCart|busy")]
    assert sorted(order) == sorted(sent)
    if mailbox_size == 64:  # never full: nobody waited for room
        assert order == sent
    # Each command saw exactly the commands stored before it: they ran one at a time.
    for position, item in enumerate(order):
        assert replies[item] == Summary(dict.fromkeys(order[: position + 1], 1), False)


async def test_different_entities_run_concurrently() -> None:
    journal = GatedJournal()
    journal.hold("ShoppingCart|slow")
    slow_replies: list[Summary] = []
    async with (
        open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
        trio.open_nursery() as nursery,
    ):

        async def slow_caller() -> None:
            slow_replies.append(await entities.ref(ShoppingCart, "slow").ask(AddItem("a", 1)))

        nursery.start_soon(slow_caller)
        await trio.testing.wait_all_tasks_blocked()
        assert journal.held == 1

        with trio.fail_after(5):  # would hang if entities shared one task
            fast = await entities.ref(ShoppingCart, "fast").ask(AddItem("b", 1))
        assert fast == Summary({"b": 1}, False)
        assert slow_replies == []
        assert entities.live_count == 2
        journal.release()
    assert slow_replies == [Summary({"a": 1}, False)]


async def test_a_full_mailbox_makes_further_callers_wait() -> None:
    journal = GatedJournal()
    replies: dict[str, tuple[str, ...]] = {}
    third = trio.CancelScope()
    async with (
        open_entities(journal, REGISTRY, [Notebook], mailbox_size=1) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        async def send(text: str) -> None:
            replies[text] = await notes.ask(Note((text,)))

        async def send_third() -> None:
            with third:
                await send("3")

        journal.hold()
        nursery.start_soon(send, "1")  # taken by the entity, whose write is held
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "2")  # fills the mailbox
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send_third)  # must wait for room
        await trio.testing.wait_all_tasks_blocked()
        assert (journal.held, replies) == (1, {})
        # Cancelled while waiting for room, the third command was never sent: had it been
        # queued, the entity would carry it out although its caller gave up.
        third.cancel()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, "4")
        await trio.testing.wait_all_tasks_blocked()
        journal.release()

    assert third.cancelled_caught
    assert replies == {"1": ("1",), "2": ("1", "2"), "4": ("1", "2", "4")}
    assert await stored_texts(journal, "n") == ["1", "2", "4"]


async def test_a_command_of_another_entity_type_is_refused() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart, Notebook]) as entities:
        cart = entities.ref(ShoppingCart, "c")
        with pytest.raises(CommandTypeError):
            await cart.ask(Note(("x",)))  # type: ignore[arg-type]  # mypy refuses it too
        untyped = entities.ref_by_type("Notebook", "n")
        with pytest.raises(CommandTypeError):
            await untyped.ask(Get())
        assert entities.live_count == 0
        assert await untyped.ask(Note(("x",))) == ("x",)


async def test_an_entity_type_not_given_to_open_entities_is_unknown() -> None:
    journal = MemoryJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart]) as entities:
        with pytest.raises(UnknownEntityType):
            entities.ref(Notebook, "n")
        with pytest.raises(UnknownEntityType):
            entities.ref(SnappyCart, "c")  # same name, but not the behavior that was given
        with pytest.raises(UnknownEntityType):
            entities.ref_by_type("Notebook", "n")
        by_name = entities.ref_by_type("ShoppingCart", "c")
        assert await by_name.ask(AddItem("apple", 1)) == Summary({"apple": 1}, False)
