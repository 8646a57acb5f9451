"""How a gRPC consumer connects to a producer: its channel, reconnects, silence, deadlines.

One frozen value, `ConsumerSettings`, given to `open_grpc_consumer`; `Reconnect` is the
exponential backoff with jitter between two attempts to open a producer's stream. Both check
their input and raise `UsageError` naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from fluvial.core.errors import UsageError
from fluvial.core.first_sight import FirstSight

from ._settings import ChannelSettings

# Beyond this many attempts the delay is the cap anyway; it keeps `multiplier ** attempt` finite.
_MAX_EXPONENT = 64


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be positive: {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 1:
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be >= 1: {value!r}")


def _count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(
            f"{type(instance).__name__}.{attribute.name} must be an int >= 0: {value!r}"
        )


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < 1:
        raise UsageError(
            f"{type(instance).__name__}.{attribute.name} must be in 0 <= jitter < 1: {value!r}"
        )


@attrs.frozen(kw_only=True)
class Reconnect:
    """Exponential backoff between attempts to (re)open a producer's stream.

    Attempt n (0-based, counted since the stream last started) waits
    `min(maximum, initial * multiplier**n)`, spread by `jitter` (a fraction: 0.2 waits
    between 80 % and 120 % of it, never more than `maximum`), so that the consumers of a
    producer that restarts do not all come back at the same instant. The count starts again
    from 0 once a stream has started (the producer answered `StreamStarted`).
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    multiplier: float = attrs.field(default=2.0, validator=_at_least_one)
    jitter: float = attrs.field(default=0.2, validator=_fraction)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise UsageError(
                f"Reconnect.maximum ({self.maximum!r}) must be at least initial ({self.initial!r})"
            )

    def delay(self, attempt: int, spread: float) -> float:
        """The seconds to wait before attempt `attempt` (0-based); `spread` in 0..1 picks
        where in the jitter's band (0.5: the middle, the un-jittered delay)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, _MAX_EXPONENT))
        return min(self.maximum, base * (1.0 + self.jitter * (2.0 * spread - 1.0)))


def _metadata(value: Sequence[tuple[str, str | bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((str(key), item) for key, item in value)


@attrs.frozen(kw_only=True)
class ConsumerSettings:
    """How a consumer reads a producer (`open_grpc_consumer`).

    - `channel`: the transport (TLS, mutual TLS, HTTP/2 keep-alive pings, on by default,
      message size limits): docs/grpc.md.
    - `reconnect`: the backoff between attempts to reopen a stream that broke.
    - `heartbeat_timeout`: a stream on which nothing arrived (no batch, no heartbeat) for this
      many seconds while the consumer waited for it is dead: it is closed and reopened. Keep it
      a few times the producer's heartbeat interval (`ProducerSettings.heartbeat_interval`,
      5 s by default). Time the consumer spends handing batches to a slow projection does
      not count.
    - `call_timeout`: the deadline of every unary call (replay, lazy payload, timestamp),
      within which a call the producer is unavailable for is tried again after the
      `reconnect` backoff; an unavailable producer then raises `GrpcUnavailable`, a call not
      answered by the deadline `GrpcDeadlineExceeded`.
    - `first_sight`: how an entity never seen, met above seq nr 1, is judged
      (`fluvial.core.first_sight`). The producer does not say whether its journal has one
      writer, so the default is the rule that is right for every journal,
      `PREVIOUS_OLDER_THAN_WINDOW` (it asks the producer for the timestamp of the event
      before, once per such entity). A consumer of a producer whose journal has one writer
      (SQLite) may set `QUERY_IN_COMMIT_ORDER` and save those calls. A stream id whose
      filter is or has been non-empty uses `REPLAY_FROM_FIRST` instead (docs/filters.md).
    - `replay_look_ahead`: how many replays of gaps a stream asks for on the stream at most at
      once (each answered by REPLAY batches on it); a replay beyond it, or one asked while
      the stream reconnects, is the unary `Replay` call (docs/consumer.md). 0: every replay
      is the unary call.
    - `metadata`: request metadata sent with every call, e.g. a token for the producer's auth
      hook (`("authorization", "Bearer ...")`).
    """

    channel: ChannelSettings = attrs.field(factory=ChannelSettings)
    reconnect: Reconnect = attrs.field(factory=Reconnect)
    heartbeat_timeout: float = attrs.field(default=15.0, validator=_positive)
    call_timeout: float = attrs.field(default=10.0, validator=_positive)
    first_sight: FirstSight = FirstSight.PREVIOUS_OLDER_THAN_WINDOW
    replay_look_ahead: int = attrs.field(default=8, validator=_count)
    metadata: tuple[tuple[str, str | bytes], ...] = attrs.field(default=(), converter=_metadata)
