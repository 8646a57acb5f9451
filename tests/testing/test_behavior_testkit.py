"""The behavior test kit gives the runtime's answers, synchronously."""

from __future__ import annotations

import itertools
from typing import assert_type

import attrs
import pytest

from fluvial.core.behavior import Effect, EventSourcedBehavior, SnapshotPolicy
from fluvial.core.serialization import SerializerRegistry, UnregisteredType
from fluvial.entity import open_entities
from fluvial.entity._errors import CommandFailed, CommandTypeError, MissingReply, UnhandledCommand
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartCommand,
    CartEvent,
    CartState,
    CheckedOut,
    Checkout,
    EmptyCart,
    Get,
    ItemUpdated,
    RemoveItem,
    ShoppingCart,
    Summary,
    register_cart,
)
from fluvial.testing import BehaviorTestKit, CommandResult, MemoryJournal
from notes_behavior import (
    BadReply,
    Crash,
    Forget,
    Halt,
    Ignore,
    Note,
    Notebook,
    Noted,
    Notes,
    NotesCommand,
)


def cart_kit() -> BehaviorTestKit[CartCommand, CartEvent, CartState]:
    return BehaviorTestKit(ShoppingCart, register_cart(SerializerRegistry()))


def test_a_persisting_command_returns_events_state_and_reply() -> None:
    kit = cart_kit()
    result = kit.run_command(AddItem("apple", 2))
    assert_type(result, CommandResult[CartEvent, CartState, Summary])
    assert result.events == (ItemUpdated("apple", 2),)
    assert result.state == CartState({"apple": 2})
    assert result.reply == Summary({"apple": 2}, False)
    assert result.error is None
    assert not result.stopped
    assert result.unwrap() == Summary({"apple": 2}, False)
    assert kit.state == CartState({"apple": 2})
    assert kit.seq_nr == 1
    assert kit.persisted_events == (ItemUpdated("apple", 2),)


def test_events_accumulate_in_order() -> None:
    kit = cart_kit()
    kit.run_command(AddItem("apple", 2))
    kit.run_command(RemoveItem("apple", 1))
    result = kit.run_command(Checkout())
    assert result.unwrap() == Summary({"apple": 1}, True)
    assert kit.persisted_events == (ItemUpdated("apple", 2), ItemUpdated("apple", -1), CheckedOut())
    assert kit.seq_nr == 3


def test_a_read_only_command_persists_nothing() -> None:
    kit = cart_kit()
    kit.run_command(AddItem("apple", 2))
    result = kit.run_command(Get())
    assert result.events == ()
    assert result.reply == Summary({"apple": 2}, False)
    assert kit.seq_nr == 1


def test_a_rejected_command_gives_the_typed_error_and_changes_nothing() -> None:
    kit = cart_kit()
    empty = kit.run_command(Checkout())
    assert isinstance(empty.error, EmptyCart)
    kit.run_command(AddItem("apple", 2))
    kit.run_command(Checkout())
    before = kit.state
    result = kit.run_command(AddItem("pear", 1))
    assert isinstance(result.error, CartClosed)
    assert result.reply is None
    assert result.events == ()
    assert result.state == before == kit.state
    assert kit.seq_nr == 2
    with pytest.raises(CartClosed):
        result.unwrap()


def test_a_command_of_another_entity_type_is_refused() -> None:
    kit = cart_kit()
    with pytest.raises(CommandTypeError):
        kit.run_command(Note(("x",)))  # type: ignore[arg-type]  # mypy refuses it too
    assert kit.seq_nr == 0


def test_restart_recovers_the_same_state_through_the_registry() -> None:
    kit = cart_kit()
    for command in (AddItem("apple", 2), AddItem("\U0001f600", 1), Checkout()):
        kit.run_command(command)
    assert kit.restart() == CartState({"apple": 2, "\U0001f600": 1}, checked_out=True)
    assert kit.state == kit.restart()


def test_an_unregistered_event_class_fails_the_command() -> None:
    kit = BehaviorTestKit(ShoppingCart, SerializerRegistry())
    result = kit.run_command(AddItem("apple", 2))
    assert isinstance(result.error, CommandFailed)
    assert not result.error.persisted
    assert isinstance(result.error.__cause__, UnregisteredType)
    assert (kit.seq_nr, kit.state) == (0, CartState())


def notes_registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.register(Noted, "notes.Noted")
    registry.register(Notes, "notes.Notes")
    return registry


def notes_kit() -> BehaviorTestKit[NotesCommand, Noted, Notes]:
    kit = BehaviorTestKit(Notebook, notes_registry())
    kit.run_command(Note(("first",)))
    return kit


def test_a_handler_exception_is_command_failed_and_changes_nothing() -> None:
    kit = notes_kit()
    result = kit.run_command(Crash())
    assert isinstance(result.error, CommandFailed)
    assert not result.error.persisted
    assert isinstance(result.error.__cause__, RuntimeError)
    assert (result.events, result.state) == ((), Notes(("first",)))
    assert kit.seq_nr == 1


def test_an_event_handler_failing_on_the_second_event_applies_neither() -> None:
    kit = notes_kit()
    result = kit.run_command(Note(("fine", "boom")))
    assert isinstance(result.error, CommandFailed)
    assert isinstance(result.error.__cause__, ValueError)
    assert (kit.seq_nr, kit.state) == (1, Notes(("first",)))
    assert kit.persisted_events == (Noted("first"),)


def test_unhandled_is_an_error_and_changes_nothing() -> None:
    kit = notes_kit()
    result = kit.run_command(Ignore())
    assert isinstance(result.error, UnhandledCommand)
    assert (kit.seq_nr, kit.state) == (1, Notes(("first",)))


def test_a_missing_reply_is_an_error_but_the_events_are_persisted() -> None:
    kit = notes_kit()
    result = kit.run_command(Forget())
    assert isinstance(result.error, MissingReply)
    assert result.events == (Noted("forgotten"),)
    assert kit.state == Notes(("first", "forgotten"))


def test_a_failing_reply_function_fails_after_persisting() -> None:
    kit = notes_kit()
    result = kit.run_command(BadReply())
    assert isinstance(result.error, CommandFailed)
    assert result.error.persisted
    assert isinstance(result.error.__cause__, ZeroDivisionError)
    assert kit.seq_nr == 2


def test_stop_is_reported() -> None:
    kit = notes_kit()
    result = kit.run_command(Halt())
    assert (result.stopped, result.reply, result.events) == (True, "halted", ())
    assert kit.restart() == Notes(("first",))


def test_an_empty_persist_all_replies_and_persists_nothing() -> None:
    kit = notes_kit()
    assert kit.run_command(Note(())).unwrap() == ("first",)
    assert kit.seq_nr == 1


def test_restart_fails_when_the_event_handler_is_not_a_function_of_the_events() -> None:
    counter = itertools.count()

    def impure(state: Notes, event: Noted) -> Notes:
        return Notes((*state.texts, f"{event.text}#{next(counter)}"))

    kit = BehaviorTestKit(attrs.evolve(Notebook, event_handler=impure))
    kit.run_command(Note(("a", "b")))
    with pytest.raises(AssertionError, match="recovery from 2 events"):
        kit.restart()


@attrs.frozen
class Loose:
    """A state whose field reads back as another type: a snapshot would not restore it."""

    texts: object = ()


def test_restart_fails_when_the_state_does_not_survive_a_snapshot() -> None:
    def handle(state: Loose, command: Note) -> Effect[Noted, Loose]:
        effect = Effect[Noted, Loose].persist_all(Noted(t) for t in command.texts)
        return effect.then_reply(command, lambda s: ())

    def apply(state: Loose, event: Noted) -> Loose:
        assert isinstance(state.texts, tuple)
        return Loose((*state.texts, event.text))

    registry = SerializerRegistry()
    registry.register(Noted, "notes.Noted")
    registry.register(Loose, "notes.Loose")
    behavior = EventSourcedBehavior[Note, Noted, Loose](
        entity_type="Loose",
        empty_state=Loose(),
        command_handler=handle,
        event_handler=apply,
        command_types=(Note,),
    )
    kit = BehaviorTestKit(behavior, registry)
    kit.run_command(Note(("a",)))
    assert kit.restart() == Loose(("a",))  # no snapshots: the state is never serialized
    snapshotting = BehaviorTestKit(
        attrs.evolve(behavior, snapshot_policy=SnapshotPolicy(every=1)), registry
    )
    snapshotting.run_command(Note(("a",)))
    with pytest.raises(AssertionError, match="reads back from a snapshot"):
        snapshotting.restart()


async def test_the_kit_refuses_and_fails_commands_with_the_runtimes_very_messages() -> None:
    # They differed once (the kit's MissingReply and CommandTypeError said less).
    registry = register_cart(SerializerRegistry())
    registry.register(Noted, "notes.Noted")
    kit = BehaviorTestKit(Notebook, registry, entity_id="n")
    async with open_entities(MemoryJournal(), registry, [Notebook, ShoppingCart]) as entities:
        notes = entities.ref(Notebook, "n")
        for command in (Forget(), Ignore()):
            with pytest.raises(Exception) as raised:
                await notes.ask(command)
            assert str(kit.run_command(command).error) == str(raised.value)
        with pytest.raises(CommandTypeError) as refused:
            await entities.ref_by_type("Notebook", "n").ask(Get())
    with pytest.raises(CommandTypeError) as refused_by_kit:
        kit.run_command(Get())  # type: ignore[arg-type]
    assert str(refused_by_kit.value) == str(refused.value)
