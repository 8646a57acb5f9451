"""What an event of a replicated entity carries about where it comes from: its origin replica,
its seq nr there, and the version vector of the entity when it was written.

Each replica of an entity writes its own stream (a `ReplicatedPersistenceId`); events that
another replica wrote are copied into it with their `ReplicationMetadata`, so that a replica can
apply each event once, tell concurrent updates apart (`VersionVector.compare`), and not send an
event back to the replica it came from (journals keep `origin_replica` in a column of its own
for that filter).

Values only: no clock, no I/O. The JSON form of a version vector (`to_json`) is what journals
store, language-neutral: ``{"replica": counter, ...}`` with the replicas in sorted order.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec

from fluvial.core.errors import UsageError
from fluvial.core.ids import check_replica_id

_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(dict[str, int]).decode


class InvalidReplicationMetadata(UsageError):
    """A version vector or replication metadata that cannot be: a counter below 1 (or an
    origin seq nr below 1), an invalid replica id."""


def _check_replica(replica: str) -> None:
    try:
        check_replica_id(replica)
    except UsageError as exc:
        raise InvalidReplicationMetadata(str(exc)) from None


class VersionOrder(enum.Enum):
    """How two version vectors are ordered (`VersionVector.compare`)."""

    SAME = "same"
    BEFORE = "before"  # every counter <= the other's, one below it: happened before
    AFTER = "after"
    CONCURRENT = "concurrent"  # each has a counter above the other's


class VersionVector(msgspec.Struct, frozen=True, gc=False):
    """A counter per replica: how many events of each replica an entity's state includes.

    `counters` are `(replica id, counter)` pairs sorted by replica, counters >= 1 (a replica
    not listed has counter 0), so equal vectors are equal values; build them with `of` or from
    `empty()`. Immutable: `incremented` and `merged` return new vectors.
    """

    counters: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        previous = ""
        for index, (replica, counter) in enumerate(self.counters):
            _check_replica(replica)
            if index and replica <= previous:
                raise InvalidReplicationMetadata(
                    f"version vector replicas must be sorted and distinct: {self.counters!r}"
                )
            if counter < 1:
                raise InvalidReplicationMetadata(
                    f"version vector counters are >= 1 (0 is left out): {self.counters!r}"
                )
            previous = replica

    @classmethod
    def empty(cls) -> VersionVector:
        """The vector of no events: every counter 0."""
        return cls()

    @classmethod
    def of(cls, counters: Mapping[str, int]) -> VersionVector:
        """The vector with these counters (zeros are dropped; negative ones raise
        InvalidReplicationMetadata)."""
        if any(counter < 0 for counter in counters.values()):
            raise InvalidReplicationMetadata(f"version vector counters are >= 0: {counters!r}")
        return cls(tuple(sorted((r, c) for r, c in counters.items() if c)))

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict (replicas with counter 0 left out)."""
        return dict(self.counters)

    def counter(self, replica: str) -> int:
        """The counter of `replica` (0 if it has none)."""
        for name, counter in self.counters:
            if name == replica:
                return counter
        return 0

    def incremented(self, replica: str) -> VersionVector:
        """This vector after one more event of `replica`."""
        counters = self.as_dict()
        counters[replica] = counters.get(replica, 0) + 1
        return VersionVector.of(counters)

    def merged(self, other: VersionVector) -> VersionVector:
        """The least vector at or after both (the counter-wise maximum); commutative,
        associative and idempotent."""
        counters = self.as_dict()
        for replica, counter in other.counters:
            counters[replica] = max(counters.get(replica, 0), counter)
        return VersionVector.of(counters)

    def compare(self, other: VersionVector) -> VersionOrder:
        """Whether this vector is the same as `other`, before it, after it or concurrent."""
        mine, theirs = self.as_dict(), other.as_dict()
        replicas = mine.keys() | theirs.keys()
        below = any(mine.get(r, 0) < theirs.get(r, 0) for r in replicas)
        above = any(mine.get(r, 0) > theirs.get(r, 0) for r in replicas)
        if below and above:
            return VersionOrder.CONCURRENT
        if below:
            return VersionOrder.BEFORE
        if above:
            return VersionOrder.AFTER
        return VersionOrder.SAME

    def to_json(self) -> str:
        """``{"replica": counter, ...}`` with the replicas sorted: the stored form."""
        return _json_encode(self.as_dict()).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> VersionVector:
        """The vector whose `to_json()` is `text`; raises InvalidReplicationMetadata if it
        is not one."""
        try:
            counters = _json_decode(text)
        except msgspec.DecodeError as exc:
            raise InvalidReplicationMetadata(f"not a version vector: {text!r}") from exc
        return cls.of(counters)


class ReplicationMetadata(msgspec.Struct, frozen=True, gc=False):
    """Where an event of a replicated entity comes from.

    `origin_replica` wrote the event first, as its seq nr `origin_seq_nr` in its own stream;
    `version_vector` is the entity's version after the event at the origin (its counter of
    `origin_replica` includes this event). An event a replica writes itself has its own
    replica as origin. The constructor raises InvalidReplicationMetadata for an invalid
    replica id or an origin seq nr below 1.
    """

    origin_replica: str
    origin_seq_nr: int
    version_vector: VersionVector = VersionVector()

    def __post_init__(self) -> None:
        _check_replica(self.origin_replica)
        if self.origin_seq_nr < 1:
            raise InvalidReplicationMetadata(
                f"origin seq nr of an event of {self.origin_replica!r} is >= 1: "
                f"{self.origin_seq_nr}"
            )
