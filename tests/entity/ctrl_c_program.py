"""A user's program for the Ctrl-C test: a SQLite journal and entities, asking until interrupted.

Run: python ctrl_c_program.py JOURNAL_FILE. Prints "ready" once commands are being carried out.
It opens fluvial's context managers and nothing else: no nursery of its own, so the only
`ExceptionGroup` a Ctrl-C could end it with would be fluvial's.
"""

from __future__ import annotations

import sys

import trio

from fluvial import SerializerRegistry, open_entities, open_sqlite_journal
from fluvial.examples.shopping_cart import AddItem, ShoppingCart, register_cart


async def main(path: str) -> None:
    registry = register_cart(SerializerRegistry())
    async with (
        open_sqlite_journal(path) as journal,
        open_entities(journal, registry, [ShoppingCart], snapshots=journal) as entities,
    ):
        sent = 0
        while True:
            await entities.ref(ShoppingCart, f"cart-{sent % 100}").ask(AddItem("apple", 1))
            sent += 1
            if sent == 200:
                print("ready", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
