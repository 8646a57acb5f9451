"""How a projection hands envelopes to user code, and what happens when that code fails.

Four kinds, typed over the event type:
- `ExactlyOnce`: a synchronous function that writes through the SQLite connection it is given;
  its writes and the offsets commit in one transaction, so each event is applied exactly once.
  It runs in the writer thread, once per attempt (a retry after it raised runs it again; and
  the writer runs a whole group commit again, after rolling it back, when another writer's
  write in it failed), so it must do nothing but write through that connection. `migrations`
  create and migrate the tables it writes (see `SqliteOffsetStore.migrate_read_model`).
- `GroupedExactlyOnce`: the same for a group of envelopes at once.
- `AtLeastOnce`: an async function per envelope; offsets are saved every `save_every` envelopes
  or `save_after` seconds, so after a crash the envelopes since the last save come again.
- `GroupedAtLeastOnce`: an async function per group.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

import attrs

from fluvial.core.errors import UsageError
from fluvial.core.records import EventEnvelope

E = TypeVar("E")

# The connection an exactly-once handler and its migrations write through: the SQLite
# writer's, inside the transaction that also stores the offsets.
Connection = sqlite3.Connection
Migration = Callable[[Connection], None]


def _migrations(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    return tuple(migrations)


_positive_int = attrs.validators.gt(0)
_positive_float = attrs.validators.gt(0.0)


@attrs.frozen
class ExactlyOnce(Generic[E]):
    """`handle(conn, envelope)` writes the read model for one envelope, in the transaction
    that stores the offsets. `migrations` create and migrate its tables: the instance runs
    those the file has not run yet (in order, once per file) before it starts; a sqlite3
    error of one comes out of `serve_projection` as ReadModelMigrationFailed."""

    handle: Callable[[Connection, EventEnvelope[E]], None]
    migrations: tuple[Migration, ...] = attrs.field(default=(), converter=_migrations)


@attrs.frozen
class GroupedExactlyOnce(Generic[E]):
    """`handle(conn, envelopes)` for up to `max_size` envelopes, collected for at most
    `max_wait` seconds after the first; otherwise as `ExactlyOnce`."""

    handle: Callable[[Connection, Sequence[EventEnvelope[E]]], None]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)
    migrations: tuple[Migration, ...] = attrs.field(default=(), converter=_migrations)


@attrs.frozen
class AtLeastOnce(Generic[E]):
    """`await handle(envelope)` per envelope; the offsets are saved every `save_every`
    envelopes, `save_after` seconds after the first unsaved one, and when the instance is
    cancelled (a clean stop), so envelopes come again only after a crash or a failure."""

    handle: Callable[[EventEnvelope[E]], Awaitable[None]]
    save_every: int = attrs.field(default=100, validator=_positive_int)
    save_after: float = attrs.field(default=1.0, validator=_positive_float)


@attrs.frozen
class GroupedAtLeastOnce(Generic[E]):
    """`await handle(envelopes)` for up to `max_size` envelopes, collected for at most
    `max_wait` seconds after the first; the offsets are saved after each group."""

    handle: Callable[[Sequence[EventEnvelope[E]]], Awaitable[None]]
    max_size: int = attrs.field(default=500, validator=_positive_int)
    max_wait: float = attrs.field(default=0.5, validator=_positive_float)


Handler = ExactlyOnce[E] | GroupedExactlyOnce[E] | AtLeastOnce[E] | GroupedAtLeastOnce[E]


@attrs.frozen
class RecoveryStrategy:
    """What to do when the handler raises: retry `retries` times (with backoff), then fail
    (the projection instance restarts from its stored offset) or skip (log a warning, mark
    the envelopes handled and go on)."""

    retries: int = 0
    skip: bool = False

    @classmethod
    def fail(cls) -> RecoveryStrategy:
        """No retry: the first failure restarts the instance (the default)."""
        return cls()

    @classmethod
    def retry_and_fail(cls, retries: int) -> RecoveryStrategy:
        """Retry the envelope `retries` times with backoff, then restart the instance."""
        return cls(retries=retries)

    @classmethod
    def retry_and_skip(cls, retries: int) -> RecoveryStrategy:
        """Retry the envelope `retries` times with backoff, then log a warning, count it as
        handled and go on: the one way an event is skipped, and only on purpose."""
        return cls(retries=retries, skip=True)

    def __attrs_post_init__(self) -> None:
        if self.retries < 0:
            raise UsageError(f"retries must be >= 0: {self.retries}")


@attrs.frozen
class Backoff:
    """Exponential backoff on the trio clock: `min`, `min*factor`, … capped at `max`.

    Used between handler retries and between restarts of a failed projection instance;
    `max_restarts` (None: no limit) restarts in a row make `serve_projection` raise.
    """

    min: float = 0.2
    max: float = 10.0
    factor: float = 2.0
    max_restarts: int | None = None

    def delay(self, attempt: int) -> float:
        """The delay before retry number `attempt` (0-based)."""
        return float(min(self.max, self.min * self.factor**attempt))
