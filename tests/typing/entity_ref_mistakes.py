"""Mistakes mypy must reject when a command is sent: each `type: ignore` line is one.

Never run, only type-checked (`just lint`). With `warn_unused_ignores`, a hole that reopens
(mypy accepting the mistake) makes its `type: ignore` unused, and that fails the build; an
ignore names its error code, so a mistake rejected for another reason fails it too.
"""

from __future__ import annotations

from typing import assert_type

import attrs

from fluvial import Command, Effect, Entities, EventSourcedBehavior
from fluvial.examples.shopping_cart import (
    AddItem,
    CartEvent,
    CartState,
    Get,
    ShoppingCart,
    Summary,
)
from fluvial.testing import BehaviorTestKit, CommandResult


@attrs.frozen
class Note(Command[tuple[str, ...]]):
    """Write texts; replies with every text so far."""

    texts: tuple[str, ...]


@attrs.frozen
class Noted:
    """One text was written."""

    text: str


NotebookEffect = Effect[Noted, tuple[str, ...]]


def notebook_command(texts: tuple[str, ...], command: Note) -> NotebookEffect:
    """Persist one `Noted` per text."""
    return NotebookEffect.persist_all(Noted(t) for t in command.texts).then_reply(
        command, lambda after: after
    )


Notebook = EventSourcedBehavior[Note, Noted, tuple[str, ...]](
    entity_type="Notebook",
    empty_state=(),
    command_handler=notebook_command,
    event_handler=lambda texts, event: (*texts, event.text),
)


async def ask_mistakes(entities: Entities) -> None:
    cart = entities.ref(ShoppingCart, "cart-1")
    assert_type(await cart.ask(AddItem("apple", 1)), Summary)
    await cart.ask(Note(("a command of another entity",)))  # type: ignore[arg-type]
    wrong: str = await cart.ask(Get())  # type: ignore[arg-type]
    await cart.ask("not a command")  # type: ignore[arg-type]

    notebook = entities.ref(Notebook, "n")
    assert_type(await notebook.ask(Note(("x",))), tuple[str, ...])
    await notebook.ask(Get())  # type: ignore[arg-type]

    untyped = entities.ref_by_type("ShoppingCart", "cart-1")  # for routers: anything goes
    assert_type(await untyped.ask(Note(("x",))), tuple[str, ...])
    del wrong


def testkit_mistakes() -> None:
    kit = BehaviorTestKit(ShoppingCart)
    assert_type(kit.run_command(Get()), CommandResult[CartEvent, CartState, Summary])
    kit.run_command(Note(("a command of another entity",)))  # type: ignore[arg-type]
