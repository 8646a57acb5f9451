"""Reading `command_types` from the command handler's annotation: what cannot be read needs
explicit `command_types`, the error says why, and the annotation is read once per behavior."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
import pytest

import fluvial.core.behavior
from fluvial.core.behavior import Command, EventSourcedBehavior
from fluvial.core.command_classes import AnnotatedCommandClasses, annotated_command_classes
from fluvial.core.errors import UsageError
from fluvial.examples.shopping_cart import (
    AddItem,
    CartCommand,
    CartEffect,
    CartEvent,
    CartState,
    ShoppingCart,
    apply_event,
    handle_command,
)


class Quantified(Protocol):
    """A Protocol that commands match structurally: `ask` cannot check a command against it."""

    @property
    def quantity(self) -> int: ...


def _protocol_handler(state: CartState, command: Quantified) -> CartEffect:
    return CartEffect.none()


def _add_or_anything(state: CartState, command: AddItem | Any) -> CartEffect:
    return handle_command(state, command)


def _cart(handler: Callable[[CartState, Any], CartEffect], **given: Any) -> object:
    return EventSourcedBehavior[CartCommand, CartEvent, CartState](
        entity_type="Cart",
        empty_state=CartState(),
        command_handler=handler,
        event_handler=apply_event,
        **given,
    )


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_protocol_handler, "annotation `Quantified` is not a class or a union of classes"),
        # Not (AddItem,): the handler takes more than AddItem, `ask` would refuse the rest.
        (_add_or_anything, r"annotation `.*AddItem \| .*Any` is not a class or a union"),
    ],
)
def test_a_protocol_or_a_union_with_any_needs_explicit_command_types(
    handler: Callable[[CartState, Any], CartEffect], reason: str
) -> None:
    with pytest.raises(UsageError, match=reason):
        _cart(handler)
    behavior = _cart(handler, command_types=(AddItem,))
    assert isinstance(behavior, EventSourcedBehavior)
    assert behavior.command_types == (AddItem,)


def test_an_unresolvable_annotation_is_named_with_the_error() -> None:
    @attrs.frozen
    class Local(Command[None]):
        pass

    def handler(state: CartState, command: Local) -> CartEffect:
        return CartEffect.reply(command, None)

    with pytest.raises(
        UsageError,
        match=r"annotation `Local` could not be resolved: NameError: name 'Local' is not defined",
    ):
        _cart(handler)


def test_an_unannotated_command_parameter_is_named() -> None:
    with pytest.raises(UsageError, match="its command parameter `command` is not annotated"):
        _cart(lambda state, command: handle_command(state, command))


def test_the_annotation_is_read_once_per_behavior(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[object] = []

    def counting(handler: Callable[..., object]) -> AnnotatedCommandClasses:
        reads.append(handler)
        return annotated_command_classes(handler)

    monkeypatch.setattr(fluvial.core.behavior, "annotated_command_classes", counting)
    _cart(handle_command)  # derived
    assert len(reads) == 1
    _cart(handle_command, command_types=ShoppingCart.command_types)  # given, and checked
    assert len(reads) == 2
    attrs.evolve(ShoppingCart, entity_type="Basket")
    assert len(reads) == 3
