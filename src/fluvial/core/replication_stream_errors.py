"""The errors of a replication stream, each with the status the producer reports.

As in h11, one root (`ReplicationStreamError`, a `FluvialError`) with two branches that say
whose mistake it is:

- `RemoteStreamError` (a `DataError`): the consumer sent something the producer cannot take (a
  missing or repeated Init, a slice range outside 0..1023, an unknown stream id, ...). The
  stream core answers it as data (`EndStream`, `FilterRefused`); the gRPC shell ends the
  stream (or the call) with `status` and `str(error)`.
- `LocalStreamError` (a `UsageError`): the producer's own shell misused the stream core (it
  reported a replay finished that it never started). A bug to fix, never the peer's fault.

`reason` names what was wrong as a value (`RefusalReason`), so that a test, a log or a metric
can tell the refusals apart without parsing messages; the message names it for a human.
"""

from __future__ import annotations

import enum
from typing import Final

from fluvial.core.errors import DataError, FluvialError, UsageError


class StreamStatus(enum.IntEnum):
    """The status a stream or call ends with: gRPC's status codes, by the same numbers, so
    the transport maps them one to one (`grpclib.const.Status(status.value)`)."""

    OK = 0
    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    INTERNAL = 13


class RefusalReason(enum.Enum):
    """What a consumer's message had wrong (see `RemoteStreamError`)."""

    MISSING_INIT = "missing init"  # the first message was not an Init
    REPEATED_INIT = "repeated init"  # a second Init on an open stream
    AFTER_END = "message after end"  # a message after the stream ended
    MALFORMED = "malformed message"  # the transport could not decode it
    UNKNOWN_STREAM_ID = "unknown stream id"
    SLICE_RANGE = "slice range"  # outside 0..1023, or inverted
    OFFSET_OUTSIDE_RANGE = "offset outside slice range"  # an offset of a slice not requested
    REPEATED_OFFSET = "repeated offset"  # two offsets of one slice
    OFFSET_OF_OTHER_SLICE = "offset names another slice's entity"
    TIMESTAMP = "timestamp"  # a negative timestamp
    SEQ_NR = "seq nr"  # below 1 or above the highest a journal stores
    SEQ_NR_RANGE = "seq nr range"  # to < from
    PERSISTENCE_ID = "not a persistence id"
    OTHER_ENTITY_TYPE = "persistence id of another entity type"
    OUTSIDE_SLICE_RANGE = "persistence id outside the stream's slice range"
    CORRELATION_ID = "correlation id"  # in use already, or not within 1..2**64-1
    INVALID_CRITERIA = "invalid filter criteria"


# Every reason is the peer's bad argument except an unknown name.
_STATUS: Final[dict[RefusalReason, StreamStatus]] = {
    reason: StreamStatus.INVALID_ARGUMENT for reason in RefusalReason
} | {RefusalReason.UNKNOWN_STREAM_ID: StreamStatus.NOT_FOUND}


class ReplicationStreamError(FluvialError):
    """Root of the replication stream's errors; `status` is what to report for it."""

    status: StreamStatus


class RemoteStreamError(ReplicationStreamError, DataError):
    """The consumer sent something the producer refuses: report `status` with this message,
    which says which message and what of it was wrong."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = _STATUS[reason]

    def __repr__(self) -> str:
        return f"RemoteStreamError({self.reason.name}, {str(self)!r})"

    def __eq__(self, other: object) -> bool:
        # A value, so that answers holding one compare equal (tests, models).
        if not isinstance(other, RemoteStreamError):
            return NotImplemented
        return (self.reason, str(self)) == (other.reason, str(other))

    def __hash__(self) -> int:
        return hash((self.reason, str(self)))


class LocalStreamError(ReplicationStreamError, UsageError):
    """The producer's shell misused the stream core: a bug in fluvial (or in a transport built
    on the core), never the peer's fault, so reported as INTERNAL."""

    status = StreamStatus.INTERNAL
