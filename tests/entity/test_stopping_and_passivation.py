"""An entity leaves memory when idle (passivation) or when an effect stops it, and comes back
with its state."""

from __future__ import annotations

import trio
import trio.testing

from entity.entity_fixtures import (
    REGISTRY,
    GatedJournal,
    Halt,
    Note,
    Notebook,
    NotesCommand,
    Read,
    Storage,
    stored_texts,
)
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import AddItem, Get, ShoppingCart, Summary


async def test_an_idle_entity_leaves_memory_and_comes_back_with_its_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = GatedJournal()
    async with open_entities(journal, REGISTRY, [ShoppingCart], passivate_after=60) as entities:
        cart = entities.ref(ShoppingCart, "idle")
        await trio.sleep(7)
        await cart.ask(AddItem("apple", 2))
        # Activity keeps it: 50 s later, another command restarts the idle time.
        await trio.sleep(50)
        await cart.ask(AddItem("pear", 1))
        last = trio.current_time()

        await trio.sleep_until(last + 60 - 0.001)
        assert entities.live_count == 1  # never before 60 s of idleness
        # Idle entities are looked for every quarter of passivate_after.
        await trio.sleep_until(last + 60 * 1.25 + 0.001)
        assert entities.live_count == 0
        assert len(journal.reads) == 1

        assert await cart.ask(Get()) == Summary({"apple": 2, "pear": 1}, False)
        assert entities.live_count == 1
        assert len(journal.reads) == 2  # it was recovered from the journal again


async def test_an_entity_busy_with_a_command_is_not_passivated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = GatedJournal()
    async with (
        open_entities(journal, REGISTRY, [ShoppingCart], passivate_after=10) as entities,
        trio.open_nursery() as nursery,
    ):
        cart = entities.ref(ShoppingCart, "busy")
        await cart.ask(AddItem("apple", 1))
        journal.hold()
        nursery.start_soon(cart.ask, AddItem("pear", 1))
        await trio.sleep(100)  # its append waits all this time
        assert entities.live_count == 1
        journal.release()
        await trio.sleep(1)
        assert await cart.ask(Get()) == Summary({"apple": 1, "pear": 1}, False)
        assert len(journal.reads) == 1


async def test_after_stop_the_next_command_starts_a_new_incarnation() -> None:
    journal = GatedJournal()
    async with open_entities(journal, REGISTRY, [Notebook]) as entities:
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("a",)))
        assert await notes.ask(Halt()) == "halted"
        await trio.testing.wait_all_tasks_blocked()
        assert entities.live_count == 0
        assert await notes.ask(Read()) == ("a",)
        assert await notes.ask(Note(("b",))) == ("a", "b")
        assert entities.live_count == 1
    assert len(journal.reads) == 2
    assert await stored_texts(journal, "n") == ["a", "b"]


async def test_an_entity_that_persists_then_stops_comes_back_with_those_events(
    storage: Storage,
) -> None:
    async with (
        storage.open() as journal,
        open_entities(journal, REGISTRY, [Notebook]) as entities,
    ):
        notes = entities.ref(Notebook, "n")
        await notes.ask(Note(("a",)))
        assert await notes.ask(Halt(last_words="b")) == "halted"
        assert entities.live_count == 0
        assert await notes.ask(Read()) == ("a", "b")
        assert await notes.ask(Note(("c",))) == ("a", "b", "c")
        assert await stored_texts(journal, "n") == ["a", "b", "c"]


async def test_commands_queued_behind_a_stop_go_to_the_next_incarnation_in_order() -> None:
    journal = GatedJournal()
    replies: dict[str, object] = {}
    async with (
        open_entities(journal, REGISTRY, [Notebook]) as entities,
        trio.open_nursery() as nursery,
    ):
        notes = entities.ref(Notebook, "n")

        async def send(name: str, command: NotesCommand) -> None:
            replies[name] = await notes.ask(command)

        journal.hold()
        # "a" is held in its write; the rest queue behind it and are taken as one batch.
        queued: list[tuple[str, NotesCommand]] = [
            ("a", Note(("a",))),
            ("halt", Halt()),
            ("b", Note(("b",))),
            ("read", Read()),
        ]
        for name, command in queued:
            nursery.start_soon(send, name, command)
            await trio.testing.wait_all_tasks_blocked()
        journal.release()

    assert replies == {"a": ("a",), "halt": "halted", "b": ("a", "b"), "read": ("a", "b")}
    assert len(journal.reads) == 2  # "b" and "read" were handled by a recovered incarnation
