"""An exception raised in the body of fluvial's context managers comes out as itself.

So `except CartClosed:` (any business error) around `async with open_sqlite_journal(...) as
journal, open_entities(...)` works, with no `ExceptionGroup` in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fluvial.core.serialization import SerializerRegistry
from fluvial.entity import open_entities
from fluvial.examples.shopping_cart import (
    AddItem,
    CartClosed,
    Checkout,
    ShoppingCart,
    register_cart,
)
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.testing import MemoryJournal

REGISTRY = register_cart(SerializerRegistry())


async def test_a_rejected_command_leaves_the_journal_and_the_runtime_as_itself(
    tmp_path: Path,
) -> None:
    try:
        async with (
            open_sqlite_journal(tmp_path / "journal.db") as journal,
            open_entities(journal, REGISTRY, [ShoppingCart], snapshots=journal) as entities,
        ):
            cart = entities.ref(ShoppingCart, "c")
            await cart.ask(AddItem("apple", 1))
            await cart.ask(Checkout())
            await cart.ask(AddItem("pear", 1))
    except CartClosed as exc:
        assert exc.__context__ is None  # no group hides behind it either
    else:
        pytest.fail("CartClosed did not come out")


async def test_the_users_own_exception_leaves_open_entities_with_its_cause() -> None:
    class Mine(Exception):
        pass

    cause = ValueError("why")
    with pytest.raises(Mine) as caught:
        async with open_entities(MemoryJournal(), REGISTRY, [ShoppingCart]) as entities:
            await entities.ref(ShoppingCart, "c").ask(AddItem("apple", 1))
            raise Mine("in the body") from cause
    assert caught.value.__cause__ is cause


async def test_a_caller_cancelling_the_block_still_just_cancels_it(tmp_path: Path) -> None:
    with trio.CancelScope() as scope:
        async with (
            open_sqlite_journal(tmp_path / "journal.db") as journal,
            open_entities(journal, REGISTRY, [ShoppingCart]) as entities,
        ):
            await entities.ref(ShoppingCart, "c").ask(AddItem("apple", 1))
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
