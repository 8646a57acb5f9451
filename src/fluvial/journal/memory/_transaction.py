"""The transaction of the memory offset store: what an exactly-once handler, a read-model
migration and `reset(clear_read_model=)` write through.

Memory has no rollback, so a transaction stages its writes instead of making them: the
handler registers each change of its read model as a function (`on_commit`), and the store
runs them, in order, only once the offsets commit with them. A handler that raises, or a
compare-and-set that fails, leaves the read model as it was, as a database would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fluvial.core.errors import UsageError

T = TypeVar("T")


class MemoryTransaction:
    """The writes of one transaction of a `MemoryOffsetStore`, applied together when it
    commits and never when it does not.

    An exactly-once handler gets one per attempt::

        totals: dict[str, int] = {}

        def handle(txn: MemoryTransaction, envelope: EventEnvelope[Added]) -> None:
            cart, amount = envelope.entity_id, envelope.event.amount
            txn.on_commit(lambda: totals.__setitem__(cart, totals.get(cart, 0) + amount))

    Decide (and raise) in the handler; the functions only apply what it decided, after the
    offsets are stored, so they must not fail (one that raises comes out of the commit as
    itself, and those after it do not run).
    """

    def __init__(self) -> None:
        self._writes: list[Callable[[], None]] | None = []

    def on_commit(self, write: Callable[[], None]) -> None:
        """Run `write` when this transaction commits (after the writes registered before it);
        never, if it does not. UsageError once the transaction is over (a handler that kept
        it past its call)."""
        if self._writes is None:
            raise UsageError(
                "this MemoryTransaction is over: register writes only while the handler, "
                "migration or clear_read_model that got it runs"
            )
        self._writes.append(write)


def staged(function: Callable[[MemoryTransaction], T]) -> tuple[T, list[Callable[[], None]]]:
    """Run `function` with a new transaction; return what it returned and the writes it
    registered, for the caller to run once it commits. If `function` raises, its writes are
    dropped and its exception propagates as itself. The transaction is over either way."""
    txn = MemoryTransaction()
    try:
        result = function(txn)
    finally:
        writes, txn._writes = txn._writes or [], None
    return result, writes
