"""fluvial's gRPC errors, and the one boundary where grpclib's errors become them.

A call through `fluvial.grpc` raises a `GrpcError` subclass named after the gRPC status the
call ended with (`GrpcUnavailable`, `GrpcDeadlineExceeded`, ...): grpclib's `GRPCError`, its
`StreamTerminatedError`, the socket's `OSError` and the TLS handshake's `ssl.SSLError` are
converted in `grpc_errors_converted` and nowhere else, with the original as `__cause__`.

The same classes go the other way on a server: a handler that raises `GrpcInvalidArgument(...)`
ends its call with INVALID_ARGUMENT and that message (`status_of`), so that a producer's
refusals read the same on both sides.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import h2.exceptions
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from fluvial.core.errors import FluvialError, UsageError


class GrpcError(FluvialError):
    """A gRPC call ended with a status other than OK.

    `status` is the status name ("UNAVAILABLE", ...) and `code` its number in the gRPC spec;
    `method` names the call (`/fluvial.v1.EventProducerService/EventsBySlices`) and `details`
    says why, in the peer's words or fluvial's. Raised by the client side of a call; a server
    handler may raise one to end its call with that status.
    """

    status: ClassVar[str] = "UNKNOWN"
    code: ClassVar[int] = 2

    def __init__(self, details: str, *, method: str = "") -> None:
        where = f" ({method})" if method else ""
        super().__init__(f"{self.status}{where}: {details}")
        self.details = details
        self.method = method


class GrpcUnavailable(GrpcError):
    """The peer could not be reached or the connection broke: refused, reset, closed, a
    keep-alive ping unanswered, or the server answered UNAVAILABLE. Retrying (with backoff)
    is the remedy; whether a call cut short did anything on the server is unknown."""

    status = "UNAVAILABLE"
    code = 14


class TlsHandshakeFailed(GrpcUnavailable):
    """The TLS handshake failed: this side does not trust the peer's certificate (its CA is not
    the trusted one, or its name does not match), or the peer refused this side's (no client
    certificate, or one from another CA). No call was made. `details` has the TLS library's
    reason."""


class GrpcDeadlineExceeded(GrpcError):
    """A call's deadline passed: the server answered DEADLINE_EXCEEDED, or no answer came
    within a deadline fluvial sets itself (a consumer's unary call within
    `ConsumerSettings.call_timeout`; `method` names the call)."""

    status = "DEADLINE_EXCEEDED"
    code = 4


class GrpcUnauthenticated(GrpcError):
    """The server's auth hook refused the call's credentials (missing or invalid)."""

    status = "UNAUTHENTICATED"
    code = 16


class GrpcPermissionDenied(GrpcError):
    """The server's auth hook knows the caller and does not allow this call."""

    status = "PERMISSION_DENIED"
    code = 7


class GrpcInvalidArgument(GrpcError):
    """The peer found a message of the call malformed or out of range; `details` says which."""

    status = "INVALID_ARGUMENT"
    code = 3


class GrpcNotFound(GrpcError):
    """The server does not know what the call names (a stream id, an event)."""

    status = "NOT_FOUND"
    code = 5


class GrpcResourceExhausted(GrpcError):
    """A limit was hit: a message larger than the receiver's maximum message size, or another
    quota of the server."""

    status = "RESOURCE_EXHAUSTED"
    code = 8


class GrpcUnimplemented(GrpcError):
    """The server does not serve this method (another version of the protocol, or not a
    fluvial producer)."""

    status = "UNIMPLEMENTED"
    code = 12


class GrpcCallFailed(GrpcError):
    """The call ended with another status (UNKNOWN, INTERNAL, CANCELLED, ...): `status` and
    `code` of the instance name it."""

    def __init__(self, details: str, *, method: str = "", status: str, code: int) -> None:
        self.status = status  # type: ignore[misc]  # per instance for this class only
        self.code = code  # type: ignore[misc]
        super().__init__(details, method=method)


class MessageTooLarge(UsageError):
    """fluvial was asked to send a message larger than the limit it was configured with
    (`max_send_message_size`); nothing was sent. `size` and `limit` are in bytes,
    `message_type` names the message's class."""

    def __init__(self, *, size: int, limit: int, message_type: str) -> None:
        super().__init__(
            f"a {message_type} message of {size} bytes is larger than "
            f"max_send_message_size={limit}; nothing was sent"
        )
        self.size, self.limit, self.message_type = size, limit, message_type


class TlsConfigurationError(UsageError):
    """A `TlsSettings` file cannot be used: missing, unreadable, not PEM, or a key that does not
    match its certificate; the message names the file and the TLS library's reason."""


_BY_STATUS: dict[Status, type[GrpcError]] = {
    Status.UNAVAILABLE: GrpcUnavailable,
    Status.DEADLINE_EXCEEDED: GrpcDeadlineExceeded,
    Status.UNAUTHENTICATED: GrpcUnauthenticated,
    Status.PERMISSION_DENIED: GrpcPermissionDenied,
    Status.INVALID_ARGUMENT: GrpcInvalidArgument,
    Status.NOT_FOUND: GrpcNotFound,
    Status.RESOURCE_EXHAUSTED: GrpcResourceExhausted,
    Status.UNIMPLEMENTED: GrpcUnimplemented,
}


def error_of_status(status: Status, details: str | None, *, method: str) -> GrpcError:
    """The fluvial error for a call that ended with `status` (not OK)."""
    text = details or "(the peer gave no message)"
    error_class = _BY_STATUS.get(status)
    if error_class is None:
        return GrpcCallFailed(text, method=method, status=status.name, code=status.value)
    return error_class(text, method=method)


def status_of(error: GrpcError) -> Status:
    """The grpclib status a server answers for `error` raised by a handler."""
    return Status(error.code)


@contextmanager
def grpc_errors_converted(method: str) -> Iterator[None]:
    """Raise grpclib's, the socket's and TLS's errors of a client call as `GrpcError`s.

    The one place where that conversion happens; everything else (fluvial's own errors,
    trio.Cancelled, a bug's exception) passes as it is.
    """
    try:
        yield
    except GRPCError as error:
        raise error_of_status(error.status, error.message, method=method) from error
    except ssl.SSLError as error:
        # Before OSError: SSLError is one.
        raise TlsHandshakeFailed(_tls_reason(error), method=method) from error
    except StreamTerminatedError as error:
        raise GrpcUnavailable(f"the stream was cut: {error}", method=method) from error
    except TimeoutError as error:  # grpclib's own deadline; before OSError, which it is
        raise GrpcDeadlineExceeded("the call's deadline passed", method=method) from error
    except (OSError, EOFError) as error:
        raise GrpcUnavailable(_os_reason(error), method=method) from error
    except (ProtocolError, h2.exceptions.ProtocolError) as error:
        raise GrpcUnavailable(
            f"HTTP/2 protocol error, the connection is unusable: {error}", method=method
        ) from error


def _tls_reason(error: ssl.SSLError) -> str:
    # The attributes are set by the ssl module's own errors only.
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None) or error
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the peer's certificate is not trusted: {reason}"
    return f"TLS handshake failed: {reason}"


def _os_reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused: nothing listens at that address"
    return f"connection failed: {error!r}"
