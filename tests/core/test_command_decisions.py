"""The pure decision for a batch of commands: speculative state, seq nrs, failures, stop, and
which commands share a failed append's error. No runtime, no trio: values in, values out."""

from __future__ import annotations

from typing import Any

import attrs

from fluvial.core.behavior import Command, Effect, EventSourcedBehavior
from fluvial.core.command_decisions import BatchDecision, answer, decide_commands, foreign_command
from fluvial.core.command_errors import CommandFailed, MissingReply, UnhandledCommand
from fluvial.core.entity_context import EntityContext
from fluvial.core.ids import PersistenceId
from fluvial.core.serialization import SerializerRegistry
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartState,
    CheckedOut,
    Checkout,
    Get,
    ItemUpdated,
    ShoppingCart,
    Summary,
    register_cart,
)

REGISTRY = register_cart(SerializerRegistry())
PID = "ShoppingCart|c"


@attrs.frozen
class Crash(Command[None]):
    pass


@attrs.frozen
class Ignore(Command[None]):
    pass


@attrs.frozen
class Halt(Command[str]):
    pass


@attrs.frozen
class Forget(Command[None]):
    pass


@attrs.frozen
class BadReply(Command[int]):
    pass


@attrs.frozen
class Unencodable(Command[None]):
    pass


@attrs.frozen
class Unregistered(ItemUpdated):
    pass


TestCommand = AddItem | Checkout | Get | Crash | Ignore | Halt | Forget | BadReply | Unencodable
TestEffect = Effect[ItemUpdated | CheckedOut, CartState]


def handle(state: CartState, command: TestCommand) -> TestEffect:
    match command:
        case Crash():
            raise RuntimeError("bug")
        case Ignore():
            return TestEffect.unhandled()
        case Halt():
            return TestEffect.stop().then_reply(command, lambda _s: "halted")
        case Forget():
            return TestEffect.persist(ItemUpdated("forgotten", 1))
        case BadReply():
            return TestEffect.persist(ItemUpdated("a", 1)).then_reply(command, lambda _s: 1 // 0)
        case Unencodable():
            return TestEffect.persist(ItemUpdated("a", 1), Unregistered("b", 1))
        case AddItem() | Checkout() | Get():
            return ShoppingCart.command_handler(state, command)


Cart = EventSourcedBehavior[TestCommand, ItemUpdated | CheckedOut, CartState](
    entity_type="ShoppingCart",
    empty_state=CartState(),
    command_handler=handle,
    event_handler=ShoppingCart.event_handler,
    tagger=ShoppingCart.tagger,
)
HANDLERS = Cart.handlers_for(EntityContext(PersistenceId("ShoppingCart", "c")))


@attrs.frozen
class Asked:
    command: object


def decide(commands: list[Any], seq_nr: int = 0) -> BatchDecision[Asked]:
    asks = [Asked(command) for command in commands]
    return decide_commands(
        HANDLERS, PID, "ShoppingCart", 7, CartState(), seq_nr, asks, REGISTRY.encode
    )


def answers(decision: BatchDecision[Asked], append_error: Exception | None = None) -> list[object]:
    found: list[object] = []
    for index in range(len(decision.decided)):
        reply, error = answer(decision, index, append_error)
        found.append(reply if error is None else type(error))
    return found


def test_each_command_sees_the_state_before_it_and_the_seq_nrs_follow_on() -> None:
    decision = decide([AddItem("apple", 2), Checkout(), AddItem("pear", 1), Get()], seq_nr=4)
    assert [(r.persistence_id, r.seq_nr, r.slice, r.tags) for r in decision.records] == [
        (PID, 5, 7, frozenset()),
        (PID, 6, 7, frozenset({"checkout"})),
    ]
    assert decision.events == [ItemUpdated("apple", 2), CheckedOut()]
    assert decision.state == CartState({"apple": 2}, checked_out=True)
    closed = Summary({"apple": 2}, True)
    assert answers(decision) == [Summary({"apple": 2}, False), closed, CartClosed, closed]


def test_a_failing_or_unhandled_command_leaves_nothing_and_the_next_ones_go_on() -> None:
    decision = decide([Crash(), Ignore(), AddItem("apple", 1), Forget()])
    assert [r.seq_nr for r in decision.records] == [1, 2]
    assert decision.state == CartState({"apple": 1, "forgotten": 1})
    assert answers(decision) == [
        CommandFailed,
        UnhandledCommand,
        Summary({"apple": 1}, False),
        MissingReply,
    ]
    crashed = answer(decision, 0)[1]
    assert isinstance(crashed, CommandFailed) and not crashed.persisted
    assert isinstance(crashed.__cause__, RuntimeError)
    assert str(answer(decision, 1)[1]) == f"{PID}: Ignore is not handled in this state"
    assert str(answer(decision, 3)[1]) == (
        f"{PID}: the effect for Forget has no reply (use then_reply, Effect.reply or Effect.reject)"
    )


def test_a_command_whose_event_cannot_be_encoded_fails_and_leaves_nothing() -> None:
    decision = decide([Unencodable(), AddItem("apple", 1)])
    assert [r.seq_nr for r in decision.records] == [1]
    assert answers(decision) == [CommandFailed, Summary({"apple": 1}, False)]


def test_a_stop_ends_the_batch_and_leaves_the_later_commands_undecided() -> None:
    decision = decide([AddItem("apple", 1), Halt(), AddItem("pear", 1)])
    assert decision.stopped
    assert len(decision.decided) == 2  # the pear is for the next incarnation
    assert [r.seq_nr for r in decision.records] == [1]
    assert answers(decision) == [Summary({"apple": 1}, False), "halted"]
    assert not decide([Get()]).stopped


def test_after_a_failed_append_the_commands_from_the_first_that_persisted_share_its_error() -> None:
    decision = decide([Get(), Ignore(), AddItem("apple", 1), Get(), Ignore(), Crash()])
    assert decision.unstored_from == 2
    assert answers(decision, ValueError("disk gone")) == [
        Summary({}, False),
        UnhandledCommand,
        ValueError,
        ValueError,
        ValueError,
        ValueError,
    ]
    error = ValueError("disk gone")
    assert answer(decision, 3, error) == (None, error)  # the very error, shared
    nothing_persisted = decide([Get(), Ignore()])
    assert nothing_persisted.unstored_from == 2
    assert answers(nothing_persisted, ValueError()) == [Summary({}, False), UnhandledCommand]


def test_a_reply_function_that_raises_fails_the_command_as_persisted() -> None:
    failed = answer(decide([BadReply()]), 0)[1]
    assert isinstance(failed, CommandFailed) and failed.persisted
    assert isinstance(failed.__cause__, ZeroDivisionError)


def test_a_foreign_command_is_named_with_what_the_entity_accepts() -> None:
    error = foreign_command("ShoppingCart", (AddItem, Get), Halt())
    assert (
        str(error) == "Halt is not a command of entity type 'ShoppingCart' (accepts AddItem, Get)"
    )
