"""The errors of projections and their offset stores.

They live in the core, beside the offsets they are about, because both the runner
(`fluvial.projection`) and every offset store (SQLite today, PostgreSQL later) raise them.
"""

from __future__ import annotations

from typing import Self

from fluvial.core.errors import DataError, FluvialError, UsageError
from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease


class UnknownProjection(UsageError):
    """A management call named a projection the store has never seen, or gave it an entity
    type other than the one it consumes. A projection becomes known when it first runs
    (`serve_projection`) or is registered (`SqliteOffsetStore.register`)."""

    def __init__(self, message: str, projection: str) -> None:
        super().__init__(message)
        self.projection = projection

    @classmethod
    def not_a_consumer_of(cls, projection: str, consumes: str, entity_type: str) -> Self:
        """What every offset store raises when `projection`, a consumer of `consumes`
        events, is named as a consumer of `entity_type`."""
        return cls(
            f"projection {projection!r} consumes {consumes!r} events, not {entity_type!r}",
            projection,
        )

    @classmethod
    def event_of_another_type(
        cls, projection: str, consumes: str, persistence_id: str, event_type: str
    ) -> Self:
        """What every offset store raises when a management call names an event that is
        not of the type `projection` consumes."""
        return cls(
            f"projection {projection!r} consumes {consumes!r} events; "
            f"{persistence_id} is a {event_type!r}",
            projection,
        )


class UnknownEvent(UsageError, LookupError):
    """`skip_event` named an event that is not in the journal."""

    def __init__(self, persistence_id: str, seq_nr: int) -> None:
        super().__init__(f"no event {persistence_id} seq nr {seq_nr} in the journal")
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr


class ProjectionConflict(UsageError):
    """Another instance of the same projection owns (part of) this slice range, or changed its
    stored offsets under this one; this instance stopped without writing anything.

    The usual cause is a misconfiguration: two processes, or two `serve_projection` calls,
    running one projection over overlapping slice ranges; or a management call (`reset`,
    `set_offset`, `skip_event`) made while the projection runs. Stop the other instance
    (or run the management call while the projection is stopped), then start this one again.
    """

    def __init__(self, projection: str, slices: SliceRange, reason: str) -> None:
        super().__init__(f"projection {projection!r} (slices {slices}): {reason}")
        self.projection = projection
        self.slices = slices

    @classmethod
    def offsets_changed(cls, projection: str, slices: SliceRange) -> ProjectionConflict:
        """What every offset store raises when a save's compare and set fails."""
        return cls(
            projection,
            slices,
            "its stored offsets changed under it (another instance handled some of these "
            "events, or a management call changed them); it stopped without writing",
        )

    @classmethod
    def lease_lost(cls, projection: str, slices: SliceRange) -> ProjectionConflict:
        """What every offset store raises when renewing a lease another owner took over."""
        return cls(
            projection,
            slices,
            "lost its lease: it was not renewed in time and another instance took it over",
        )


def read_model_too_new(projection: str, version: int, migrations: int) -> UsageError:
    """What every offset store raises when a read model's stored version is beyond the
    `migrations` given."""
    return UsageError(
        f"the read model of projection {projection!r} is at version {version}, "
        f"newer than the {migrations} migrations given (an older program?)"
    )


class ProjectionLeaseHeld(ProjectionConflict):
    """A live instance holds the lease of an overlapping slice range, so this one is refused
    at start. `holder` names that instance (host, process id, a random part) and
    `expires_in` says in how many seconds its lease expires if it is not renewed: an owner
    that was killed blocks a restart for at most that long."""

    def __init__(
        self,
        projection: str,
        slices: SliceRange,
        *,
        holder: str,
        holder_slices: SliceRange,
        expires_in: float,
    ) -> None:
        super().__init__(
            projection,
            slices,
            f"refused: instance {holder} holds the lease of slices {holder_slices}, for "
            f"{expires_in:.1f}s more unless it renews it (a stopped or killed instance's "
            "lease expires by then)",
        )
        self.holder = holder
        self.holder_slices = holder_slices
        self.expires_in = expires_in

    @classmethod
    def by(cls, slices: SliceRange, held: Lease, now: float) -> Self:
        """What every offset store raises when `held`, another owner's live lease of a range
        overlapping `slices`, refuses a lease of `slices` at `now` (the store's clock)."""
        return cls(
            held.projection,
            slices,
            holder=held.owner,
            holder_slices=held.slices,
            expires_in=held.expires_at - now,
        )


class ReadModelMigrationFailed(DataError):
    """A read-model migration of an exactly-once projection failed in SQLite (its SQL does
    not fit the tables the file holds, or is not valid): `version` is the number of that
    migration (1 for the first of `migrations`), the sqlite3 error is the `__cause__`.
    Nothing of that start's migrations is stored; the read model stays at its version."""

    def __init__(self, projection: str, version: int, error: Exception) -> None:
        super().__init__(
            f"projection {projection!r}: read-model migration {version} failed in SQLite "
            f"({error}); no migration of this start was stored, so fix it and start again"
        )
        self.projection = projection
        self.version = version


class ReadModelClearFailed(DataError):
    """The `clear_read_model` function given to `reset` failed in SQLite; the sqlite3 error
    is the `__cause__`. Nothing of the reset was stored: offsets and read model are as
    they were."""

    def __init__(self, projection: str, error: Exception) -> None:
        super().__init__(
            f"projection {projection!r}: clear_read_model failed in SQLite ({error}); the "
            "reset did not happen (offsets and read model are unchanged)"
        )
        self.projection = projection


class ProjectionFailed(FluvialError):
    """The projection kept failing past its recovery strategy and `backoff.max_restarts`.

    `persistence_id` and `seq_nr` name the envelope the last attempt failed on (the first
    of its group, for a grouped handler), so that `skip_event` can get past it; both are
    None when the failure was not an envelope's (a storage or source error). The last
    error is the `__cause__`.
    """

    def __init__(
        self,
        projection: str,
        slices: SliceRange,
        failures: int,
        *,
        persistence_id: str | None = None,
        seq_nr: int | None = None,
    ) -> None:
        where = f" on {persistence_id} seq nr {seq_nr}" if persistence_id is not None else ""
        super().__init__(
            f"projection {projection!r} (slices {slices}) failed {failures} times in a row{where}"
        )
        self.projection = projection
        self.slices = slices
        self.failures = failures
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr
