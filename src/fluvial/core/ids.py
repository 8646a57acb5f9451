"""Persistence ids, slices and slice ranges.

A slice is a stable, language-neutral function of the persistence id, so that every process (and
a JVM or Go consumer) puts an entity in the same slice:

    slice(pid) = abs(java_string_hash(pid) % 1024)      with Java's truncating remainder

where `java_string_hash` is Java's `String.hashCode`: ``h = 31*h + unit`` over the UTF-16 code
units of the string, in 32-bit two's complement arithmetic. This is the function Akka uses, so
fluvial and Akka agree on slices. Python's `hash()` is salted per process and never used.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from fluvial.core.errors import UsageError

NUMBER_OF_SLICES = 1024
_SEPARATOR = "|"


class InvalidPersistenceId(UsageError):
    """An entity type or id that cannot form a persistence id."""


class InvalidSliceRange(UsageError):
    """A slice range outside 0..1023, inverted, or a count that does not divide 1024."""


@attrs.frozen(order=True)
class PersistenceId:
    """`"{entity_type}|{entity_id}"`: the identity of one entity's event stream.

    The entity type may not contain ``|``; the entity id may (only the first ``|`` separates).
    A replicated entity's copy at one replica has a `ReplicatedPersistenceId` instead. Both
    parts must be non-empty: the constructor raises `InvalidPersistenceId` otherwise. `str()`
    gives the string form journals store.
    """

    entity_type: str
    entity_id: str

    def __attrs_post_init__(self) -> None:
        if not self.entity_type or _SEPARATOR in self.entity_type:
            raise InvalidPersistenceId(
                f"entity type must be non-empty and contain no {_SEPARATOR!r}: {self.entity_type!r}"
            )
        if not self.entity_id:
            raise InvalidPersistenceId(f"entity id of {self.entity_type!r} must be non-empty")

    @classmethod
    def parse(cls, text: str) -> PersistenceId:
        """The persistence id whose `str()` is `text`: split at the first ``|``.

        `parse("ShoppingCart|cart|7")` is entity type ``ShoppingCart``, entity id ``cart|7``.
        Raises `InvalidPersistenceId` if `text` has no ``|`` or either part is empty.
        """
        entity_type, sep, entity_id = text.partition(_SEPARATOR)
        if not sep:
            raise InvalidPersistenceId(f"not a persistence id (no {_SEPARATOR!r}): {text!r}")
        return cls(entity_type, entity_id)

    def __str__(self) -> str:
        return f"{self.entity_type}{_SEPARATOR}{self.entity_id}"

    @property
    def slice(self) -> int:
        """The entity's slice, `slice_for(str(self))` (see the module docstring)."""
        return slice_for(str(self))


@attrs.frozen(order=True)
class ReplicatedPersistenceId:
    """`"{entity_type}|{entity_id}|{replica_id}"`: one replica's copy of a replicated entity.

    Each replica of an entity writes its own event stream under its own persistence id (events
    of other replicas are copied into it with their origin in `ReplicationMetadata`). The
    string form is unambiguous although entity ids may contain ``|``: the entity type and the
    replica id may not, so the first ``|`` ends the entity type and the last one starts the
    replica id (`parse(str(x)) == x` for every valid `x`, and no two ids share a string).

    Whether a string is a replicated or a plain persistence id is not in the string
    (``"Cart|a|b"`` is also the plain id of entity ``a|b``): it is the entity type's, which is
    either replicated or not, so parse with the class the entity type uses. The parts must be
    non-empty and the type and replica free of ``|``, or the constructor raises
    `InvalidPersistenceId`.
    """

    entity_type: str
    entity_id: str
    replica_id: str

    def __attrs_post_init__(self) -> None:
        # The entity type and id are checked as a plain persistence id's.
        PersistenceId(self.entity_type, self.entity_id)
        check_replica_id(self.replica_id)

    @classmethod
    def parse(cls, text: str) -> ReplicatedPersistenceId:
        """The replicated persistence id whose `str()` is `text`: split at the first and at
        the last ``|``.

        `parse("Cart|a|b|B")` is entity type ``Cart``, entity id ``a|b``, replica ``B``.
        Raises `InvalidPersistenceId` if `text` has fewer than two ``|`` or a part is empty.
        """
        entity_type, sep, rest = text.partition(_SEPARATOR)
        entity_id, last_sep, replica_id = rest.rpartition(_SEPARATOR)
        if not (sep and last_sep):
            raise InvalidPersistenceId(
                f"not a replicated persistence id (type{_SEPARATOR}id{_SEPARATOR}replica): {text!r}"
            )
        return cls(entity_type, entity_id, replica_id)

    def __str__(self) -> str:
        return f"{self.entity_type}{_SEPARATOR}{self.entity_id}{_SEPARATOR}{self.replica_id}"

    @property
    def entity(self) -> PersistenceId:
        """The replicated entity itself, the same at every replica (its type and id)."""
        return PersistenceId(self.entity_type, self.entity_id)

    def at_replica(self, replica_id: str) -> ReplicatedPersistenceId:
        """The same entity's persistence id at `replica_id`."""
        return ReplicatedPersistenceId(self.entity_type, self.entity_id, replica_id)

    @property
    def slice(self) -> int:
        """The slice of this replica's stream, `slice_for(str(self))`: each replica's copy
        of an entity has its own slice."""
        return slice_for(str(self))


def check_replica_id(replica_id: str) -> str:
    """Return `replica_id` if it can name a replica (non-empty, without ``|``), else raise
    `InvalidPersistenceId`."""
    if not replica_id or _SEPARATOR in replica_id:
        raise InvalidPersistenceId(
            f"replica id must be non-empty and contain no {_SEPARATOR!r}: {replica_id!r}"
        )
    return replica_id


def java_string_hash(text: str) -> int:
    """Java's `String.hashCode` (signed 32-bit) of `text`."""
    h = 0
    # surrogatepass: a lone surrogate is a UTF-16 code unit like any other, as in Java.
    data = text.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def slice_for(persistence_id: str) -> int:
    """The slice (0..1023) of a persistence id string; see the module docstring."""
    # abs of Java's truncating remainder equals the remainder of the absolute value.
    return abs(java_string_hash(persistence_id)) % NUMBER_OF_SLICES


@attrs.frozen(order=True)
class SliceRange:
    """The inclusive range of slices `min..max` that one consumer instance owns."""

    min: int
    max: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.min <= self.max < NUMBER_OF_SLICES:
            raise InvalidSliceRange(
                f"slice range must satisfy 0 <= min <= max < {NUMBER_OF_SLICES}: "
                f"{self.min}..{self.max}"
            )

    @classmethod
    def all(cls) -> SliceRange:
        """Every slice, 0..1023: the range of a single consumer instance."""
        return cls(0, NUMBER_OF_SLICES - 1)

    def __contains__(self, slice_: object) -> bool:
        return isinstance(slice_, int) and self.min <= slice_ <= self.max

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.min, self.max + 1))

    def __str__(self) -> str:
        return f"{self.min}-{self.max}"


def slice_ranges(count: int) -> list[SliceRange]:
    """Split the 1024 slices into `count` equal ranges, in order.

    Raises InvalidSliceRange unless `count` is a positive divisor of 1024.
    """
    if count <= 0 or NUMBER_OF_SLICES % count:
        raise InvalidSliceRange(
            f"the number of slice ranges must divide {NUMBER_OF_SLICES}: {count}"
        )
    size = NUMBER_OF_SLICES // count
    return [SliceRange(i * size, (i + 1) * size - 1) for i in range(count)]
