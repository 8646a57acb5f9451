"""Properties of the shopping cart's behavior: its state is always the fold of its stored events.

A state machine sends random commands to the cart (through the behavior test kit) next to a
tiny model of a cart. After every step the cart's state must equal the model, the fold of all
events read back through the serializer registry, and what an entity recovering from a snapshot
taken after any earlier step (its state serialized too) plus the events after it would have.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fluvial.core.serialization import SerializedPayload, SerializerRegistry
from fluvial.entity._errors import CommandFailed
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    CartCommand,
    CartEvent,
    CartState,
    Checkout,
    EmptyCart,
    Get,
    ItemUpdated,
    RemoveItem,
    ShoppingCart,
    Summary,
    apply_event,
    register_cart,
)
from fluvial.testing import BehaviorTestKit, CommandResult

PID = "ShoppingCart|property"
items = st.sampled_from(["apple", "pear", "\u00e9clair", "\U0001f600"])
quantities = st.integers(1, 5)


@attrs.define
class Recovery:
    """An entity recovering from the snapshot stored at `seq_nr`, fed the events after it."""

    seq_nr: int
    state: CartState


class CartMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = register_cart(SerializerRegistry())
        self.kit = BehaviorTestKit(ShoppingCart, self.registry, entity_id="property")
        self.journal: list[SerializedPayload] = []
        self.recoveries: list[Recovery] = []
        self.model: dict[str, int] = {}
        self.closed = False

    @initialize()
    def empty_cart_is_a_snapshot_at_zero(self) -> None:
        self.recoveries.append(Recovery(0, CartState()))

    @rule(item=items, quantity=quantities)
    def add(self, item: str, quantity: int) -> None:
        result = self.step(AddItem(item, quantity))
        if self.closed:
            assert isinstance(result.error, CartClosed)
        else:
            self.model_update(item, quantity)
            assert result.events == (ItemUpdated(item, quantity),)
            assert result.reply == Summary(self.model, False)

    @rule(item=items, quantity=quantities)
    def remove(self, item: str, quantity: int) -> None:
        result = self.step(RemoveItem(item, quantity))
        if self.closed:
            assert isinstance(result.error, CartClosed)
        else:
            self.model_update(item, -quantity)
            assert result.reply == Summary(self.model, False)

    @rule()
    def checkout(self) -> None:
        result = self.step(Checkout())
        if self.closed:
            assert isinstance(result.error, CartClosed)
        elif not self.model:
            assert isinstance(result.error, EmptyCart)
        else:
            self.closed = True
            assert result.reply == Summary(self.model, True)

    @rule()
    def get(self) -> None:
        result = self.step(Get())
        assert result.events == ()
        assert result.reply == Summary(self.model, self.closed)

    @rule()
    def snapshot(self) -> None:
        """Store the state as the runtime would, and start recovering from it."""
        payload = self.registry.encode(self.kit.state)
        stored = self.registry.decode(payload, persistence_id=PID, seq_nr=self.kit.seq_nr)
        self.recoveries.append(Recovery(self.kit.seq_nr, stored))

    @rule()
    def restart(self) -> None:
        assert self.kit.restart() == self.kit.state

    @invariant()
    def state_matches_the_model(self) -> None:
        assert self.kit.state == CartState(self.model, self.closed)

    @invariant()
    def state_is_the_fold_of_the_stored_events(self) -> None:
        events = [self.decode(i) for i in range(len(self.journal))]
        assert ShoppingCart.apply_events(CartState(), events) == self.kit.state

    @invariant()
    def every_snapshot_plus_later_events_recovers_the_state(self) -> None:
        for recovery in self.recoveries:
            assert recovery.seq_nr <= self.kit.seq_nr == len(self.journal)
            assert recovery.state == self.kit.state, f"from the snapshot at {recovery.seq_nr}"

    def step(self, command: CartCommand) -> CommandResult[CartEvent, CartState, Summary]:
        before, seq_nr = self.kit.state, self.kit.seq_nr
        result = self.kit.run_command(command)
        if result.error is not None:
            assert (result.events, result.state, self.kit.state) == ((), before, before)
            assert self.kit.seq_nr == seq_nr
            return result
        for event in result.events:
            self.journal.append(self.registry.encode(event))
            decoded = self.decode(len(self.journal) - 1)
            for recovery in self.recoveries:
                recovery.state = apply_event(recovery.state, decoded)
        return result

    def decode(self, index: int) -> Any:
        return self.registry.decode(self.journal[index], persistence_id=PID, seq_nr=index + 1)

    def model_update(self, item: str, quantity: int) -> None:
        total = self.model.pop(item, 0) + quantity
        if total:
            self.model[item] = total


TestCartMachine = CartMachine.TestCase
TestCartMachine.settings = settings(max_examples=100, stateful_step_count=40)


def _poisoned(state: CartState, event: CartEvent) -> CartState:
    if isinstance(event, ItemUpdated) and event.item_id == "poison":
        raise ValueError("the event handler cannot apply poison")
    return apply_event(state, event)


PoisonedCart = attrs.evolve(ShoppingCart, event_handler=_poisoned)

commands = st.one_of(
    st.builds(AddItem, items, quantities),
    st.builds(RemoveItem, items, quantities),
    st.just(Checkout()),
    st.just(Get()),
)
failing_commands = st.one_of(
    st.builds(AddItem, st.just("poison"), quantities),
    st.builds(RemoveItem, st.just("poison"), quantities),
    st.just(Checkout()),
)


@given(prefix=st.lists(commands, max_size=20), command=failing_commands)
def test_a_refused_or_failed_command_changes_nothing(
    prefix: list[CartCommand], command: CartCommand
) -> None:
    kit = BehaviorTestKit(PoisonedCart, register_cart(SerializerRegistry()))
    for earlier in prefix:
        kit.run_command(earlier)
    state, events = kit.state, kit.persisted_events
    result = kit.run_command(command)
    if isinstance(command, Checkout) and state.items and not state.checked_out:
        assert result.error is None  # the only command here that may succeed
        return
    assert isinstance(result.error, CartClosed | EmptyCart | CommandFailed)
    assert result.events == ()
    assert result.state == kit.state == state
    assert kit.persisted_events == events
    assert kit.restart() == state
