"""Commands/s of the entity runtime on a SQLite file, against raw sqlite3 in the same run.

Each command persists one event durably (WAL, synchronous=NORMAL: kept across a killed
process; `--durability power-loss` adds an fsync per transaction). Baselines write the same
rows with raw sqlite3: one transaction per row (what a sequential entity needs) and one
executemany in one transaction (the ceiling of group commit).

Run: .venv/bin/python benchmarks/bench_entities.py [--entities 1000] [--commands 50000]
[--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from statistics import median

import trio
from _table import print_table

from fluvial.core.serialization import SerializerRegistry
from fluvial.entity import Entities, open_entities
from fluvial.examples.shopping_cart import AddItem, ItemUpdated, ShoppingCart, register_cart
from fluvial.journal.sqlite._database import Durability, connect
from fluvial.journal.sqlite._event_rows import INSERT_EVENT
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.journal.sqlite._schema import migrate


async def sequential_commands(entities: Entities, commands: int, name: str = "sequential") -> float:
    """Commands/s of one cart, `name`, one command after the other."""
    cart = entities.ref(ShoppingCart, name)
    started = time.perf_counter()
    for _ in range(commands):
        await cart.ask(AddItem("apple", 1))
    return commands / (time.perf_counter() - started)


async def concurrent_commands(
    entities: Entities, entity_count: int, commands: int, prefix: str = "cart"
) -> float:
    """Commands/s of `entity_count` carts at once, `commands` in all. Every entity is live
    (recovered) before the clock starts: this measures commands."""

    async def shop(index: int, count: int) -> None:
        cart = entities.ref(ShoppingCart, f"{prefix}-{index}")
        for _ in range(count):
            await cart.ask(AddItem("apple", 1))

    per_entity = commands // entity_count
    for count in (1, per_entity):
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(entity_count):
                nursery.start_soon(shop, index, count)
    return per_entity * entity_count / (time.perf_counter() - started)


async def _fluvial(
    path: Path, durability: Durability, entity_count: int, commands: int, rounds: int
) -> tuple[list[float], list[float]]:
    registry = register_cart(SerializerRegistry())
    sequential: list[float] = []
    concurrent: list[float] = []
    async with (
        open_sqlite_journal(path, durability=durability) as journal,
        open_entities(journal, registry, [ShoppingCart], snapshots=journal) as entities,
    ):
        await sequential_commands(entities, 200)  # warm up
        for _ in range(rounds):
            sequential.append(await sequential_commands(entities, commands // 4))
            concurrent.append(await concurrent_commands(entities, entity_count, commands))
    return sequential, concurrent


def raw_sqlite(path: Path, durability: Durability, rows: int) -> tuple[float, float]:
    """Raw sqlite3 writing the journal's rows into a fresh file: rows/s one row per
    transaction (`rows // 4` of them), and `rows` in one executemany transaction."""
    conn = connect(str(path), durability, writer=True)
    migrate(conn, str(path))
    payload = register_cart(SerializerRegistry()).encode(ItemUpdated("apple", 1)).data

    def row(pid: str, seq_nr: int, timestamp: int) -> tuple[object, ...]:
        return (
            pid,
            seq_nr,
            "ShoppingCart",
            1,
            None,
            "cart.ItemUpdated",
            1,
            payload,
            timestamp,
        )

    # Each entity's key row exists before its events (one statement per new entity).
    new_entity = "INSERT OR IGNORE INTO entity (persistence_id) VALUES (?)"
    conn.execute(new_entity, ("raw|one",))
    started = time.perf_counter()
    for seq_nr in range(1, rows // 4 + 1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT_EVENT, row("raw|one", seq_nr, seq_nr))
        conn.execute("COMMIT")
    one_per_transaction = (rows // 4) / (time.perf_counter() - started)
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(new_entity, [(f"raw|{i}",) for i in range(rows)])
    conn.executemany(INSERT_EVENT, [row(f"raw|{i}", 1, 10**9 + i) for i in range(rows)])
    conn.execute("COMMIT")
    batched = rows / (time.perf_counter() - started)
    conn.close()
    return one_per_transaction, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--durability", choices=["process", "power-loss"], default="process")
    parser.add_argument("--rounds", type=int, default=3, help="report the median and the best")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw_one, raw_batched = raw_sqlite(Path(tmp) / "raw.db", args.durability, args.commands)
        sequential, concurrent = trio.run(
            _fluvial,
            Path(tmp) / "fluvial.db",
            args.durability,
            args.entities,
            args.commands,
            args.rounds,
        )
    print_table(
        f"entity commands/s, each persisting one event (SQLite file, durability="
        f"{args.durability}, {args.commands:,} commands; median and best of {args.rounds} "
        "rounds, ratio of the median)",
        ["workload", "fluvial/s", "best/s", "raw sqlite3/s", "baseline", "ratio", "target"],
        [
            [
                "1 entity, sequential",
                median(sequential),
                max(sequential),
                raw_one,
                "1 row per transaction",
                f"{median(sequential) / raw_one:.2f}",
                "5,000",
            ],
            [
                f"{args.entities:,} entities, concurrent",
                median(concurrent),
                max(concurrent),
                raw_batched,
                "executemany, 1 transaction",
                f"{median(concurrent) / raw_batched:.2f}",
                "20,000",
            ],
        ],
    )


if __name__ == "__main__":
    main()
