"""The typed settings of fluvial's gRPC transport: keep-alive, message size limits, TLS.

One frozen value per side (`ServerSettings`, `ChannelSettings`), each holding a `KeepAlive`
and an optional `TlsSettings`; constructors check their input and raise `UsageError` naming the
field. grpclib's own `Configuration` is built from them in `grpclib_configuration`, the one place
that knows grpclib's (underscored, experimental) keep-alive fields.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from grpclib.config import Configuration

from fluvial.core.errors import UsageError

# gRPC's usual default for the largest message a peer accepts (grpc-core, grpc-java, grpcio):
# a producer's batches stay below it, so that clients of other languages read them unchanged.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise UsageError(f"{type(instance).__name__}.{attribute.name} must be positive: {value!r}")


def _positive_size(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(
            f"{type(instance).__name__}.{attribute.name} must be a positive number of bytes: "
            f"{value!r}"
        )


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@attrs.frozen(kw_only=True)
class KeepAlive:
    """HTTP/2 keep-alive pings of one side of a connection.

    Every `interval` seconds this side sends a PING; a connection whose PING is not answered
    within `timeout` seconds is closed as dead (its calls fail with `GrpcUnavailable`, and a
    consumer reconnects). Pings also keep NAT and TCP load-balancer mappings of an idle
    connection alive. With `without_calls=False` a connection with no call open is not pinged.
    Pings go on for as long as the connection lives (no cap on pings without data).
    """

    interval: float = attrs.field(default=10.0, validator=_positive)
    timeout: float = attrs.field(default=5.0, validator=_positive)
    without_calls: bool = False


@attrs.frozen(kw_only=True)
class TlsSettings:
    """TLS (and mutual TLS) for one side: its certificate, its key, and whom it trusts.

    - `certificate_chain`: PEM file with this side's certificate, then its intermediates.
      Required on a server; on a client it is the client certificate of mutual TLS.
    - `private_key`: PEM file with the key of that certificate (None: it is in the chain file).
    - `trusted_ca`: PEM file of the CA certificates that sign the peer's certificate. On a
      client, None means the system's trust store; on a server it verifies client certificates.
    - `require_client_certificate` (server): mutual TLS; a client without a certificate signed
      by `trusted_ca` fails the handshake and never makes a call.
    - `server_name` (client): the name the server's certificate must carry, when it is not the
      host connected to (an IP address, a name behind a proxy).

    Both sides speak TLS 1.2 or newer and negotiate HTTP/2 by ALPN ("h2"). Files are read when
    the server starts or the channel opens; `TlsConfigurationError` names a file that cannot be
    used.
    """

    certificate_chain: Path | None = attrs.field(default=None, converter=_optional_path)
    private_key: Path | None = attrs.field(default=None, converter=_optional_path)
    trusted_ca: Path | None = attrs.field(default=None, converter=_optional_path)
    require_client_certificate: bool = False
    server_name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.private_key is not None and self.certificate_chain is None:
            raise UsageError("TlsSettings.private_key needs the certificate_chain it belongs to")
        if self.require_client_certificate and self.trusted_ca is None:
            raise UsageError(
                "TlsSettings.require_client_certificate needs trusted_ca: the CA that signs "
                "the client certificates"
            )


@attrs.frozen(kw_only=True)
class ServerSettings:
    """How a fluvial gRPC server listens: TLS, keep-alive, message size limits.

    A received message larger than `max_receive_message_size` ends its call with
    RESOURCE_EXHAUSTED before its body is read (the length prefix is checked), and the server
    goes on serving every other call. `max_send_message_size` bounds what a handler sends.
    The server pings every 30 s by default (an answer within 10 s), which finds dead consumers
    and keeps long-lived idle streams alive through NATs and TCP load balancers. A connection
    whose client has not sent its whole HTTP/2 preface within `handshake_timeout` seconds
    (5 by default) of connecting (after the TLS handshake, which asyncio bounds to 60 s) is
    closed: half a preface, or nothing, holds no socket open.
    """

    tls: TlsSettings | None = None
    keepalive: KeepAlive | None = KeepAlive(interval=30.0, timeout=10.0)
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_receive_message_size: int = attrs.field(
        default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_size
    )
    max_send_message_size: int = attrs.field(
        default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_size
    )


@attrs.frozen(kw_only=True)
class ChannelSettings:
    """How a fluvial gRPC client connects: TLS, keep-alive, message size limits.

    Keep-alive is on by default (a PING every 10 s, dead after 5 s without its answer: grpclib
    leaves it off), so that a consumer notices a dead producer and reconnects. A received
    message larger than `max_receive_message_size` fails its call with
    `GrpcResourceExhausted`; sending one larger than `max_send_message_size` raises
    `MessageTooLarge` and sends nothing.
    """

    tls: TlsSettings | None = None
    keepalive: KeepAlive | None = KeepAlive()
    max_receive_message_size: int = attrs.field(
        default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_size
    )
    max_send_message_size: int = attrs.field(
        default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_size
    )


# The HTTP/2 window of a whole connection, as large as HTTP/2 allows: grpclib's default (4 MiB,
# the same as one stream's) lets one stream whose reader stopped take the whole connection's
# window, and every other call on the channel stalls behind it. Each stream stays bounded by
# its own window (grpclib's 4 MiB), so what a connection buffers is at most that per stream.
_CONNECTION_WINDOW = 2**31 - 1


def grpclib_configuration(
    keepalive: KeepAlive | None, *, server_name: str | None = None
) -> Configuration:
    """grpclib's configuration for `keepalive` (None: no pings from this side)."""
    if keepalive is None:
        # grpclib's server default pings every 2 hours; None must mean no pings at all.
        return Configuration(
            _keepalive_time=None,
            http2_connection_window_size=_CONNECTION_WINDOW,
            ssl_target_name_override=server_name,
        )
    return Configuration(
        http2_connection_window_size=_CONNECTION_WINDOW,
        _keepalive_time=keepalive.interval,
        _keepalive_timeout=keepalive.timeout,
        _keepalive_permit_without_calls=keepalive.without_calls,
        # grpclib stops pinging after 2 pings without data sent by this side and spaces pings
        # without data 300 s apart: an idle replication stream (the producer sends heartbeats,
        # the consumer nothing) would go unwatched. 0 means no cap; the spacing is half the
        # interval so that a timer firing a little early still pings.
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=keepalive.interval / 2,
        ssl_target_name_override=server_name,
    )
