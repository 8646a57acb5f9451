"""Mistakes mypy must reject when a behavior is built: each `type: ignore` line is one.

Never run, only type-checked (`just lint`); see entity_ref_mistakes.py for how a reopened hole
fails the build. (A command class missing from `command_types` is caught at construction, by
a UsageError: tests/core/test_behavior.py.)
"""

from __future__ import annotations

import attrs

from fluvial import Command, EventSourcedBehavior
from fluvial.examples.shopping_cart import (
    CartCommand,
    CartEvent,
    CartState,
    ShoppingCart,
    apply_event,
    handle_command,
)


@attrs.frozen
class Withdraw(Command[int]):
    """A command of another entity."""

    amount: int


def command_types_outside_the_union() -> None:
    EventSourcedBehavior[CartCommand, CartEvent, CartState](
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=handle_command,
        event_handler=apply_event,
        command_types=(Withdraw,),  # type: ignore[arg-type]
    )
    attrs.evolve(ShoppingCart, command_types=(Withdraw,))  # type: ignore[arg-type]


def a_handler_of_other_commands(state: CartState, command: Withdraw) -> None:
    EventSourcedBehavior[CartCommand, CartEvent, CartState](
        entity_type="ShoppingCart",
        empty_state=CartState(),
        command_handler=a_handler_of_other_commands,  # type: ignore[arg-type]
        event_handler=apply_event,
    )
