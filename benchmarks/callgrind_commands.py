"""Instructions per concurrent command, for comparing two versions under callgrind.

Wall-clock figures on this project's 2-core machine drift by ±20%; instruction counts do not.
This runs ROUNDS rounds of one ask by each of 1,000 shopping carts at once on a SQLite journal;
the difference between ROUNDS and 0 rounds, divided by ROUNDS * 1,000, is what one concurrent
command costs (the trio thread and the writer thread together)::

    export PYTHONHASHSEED=0   # dict layouts otherwise move counts by about ±1%
    for n in 4 0; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python benchmarks/callgrind_commands.py $n 2>&1 | grep Collected
    done

Add `--separate-threads=yes` (and a real output file) to split the count by thread.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from fluvial import SerializerRegistry, open_entities, open_sqlite_journal
from fluvial.examples.shopping_cart import AddItem, ShoppingCart, register_cart

CARTS = 1000


async def main(rounds: int) -> None:
    registry = register_cart(SerializerRegistry())
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            open_sqlite_journal(Path(tmp) / "journal.db") as journal,
            open_entities(journal, registry, [ShoppingCart]) as entities,
        ):
            carts = [entities.ref(ShoppingCart, f"cart-{i}") for i in range(CARTS)]
            for _ in range(rounds + 1):  # the first round makes every cart live
                async with trio.open_nursery() as nursery:
                    for cart in carts:
                        nursery.start_soon(cart.ask, AddItem("apple", 1))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
