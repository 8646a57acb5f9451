"""The one boundary where grpclib's, the socket's and TLS's errors become fluvial's."""

from __future__ import annotations

import ssl

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from fluvial.core.errors import FluvialError
from fluvial.grpc import (
    GrpcCallFailed,
    GrpcDeadlineExceeded,
    GrpcError,
    GrpcInvalidArgument,
    GrpcNotFound,
    GrpcPermissionDenied,
    GrpcResourceExhausted,
    GrpcUnauthenticated,
    GrpcUnavailable,
    GrpcUnimplemented,
    TlsHandshakeFailed,
)
from fluvial.grpc._errors import grpc_errors_converted, status_of

METHOD = "/fluvial.v1.EventProducerService/StreamEvents"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (Status.UNAVAILABLE, GrpcUnavailable),
        (Status.DEADLINE_EXCEEDED, GrpcDeadlineExceeded),
        (Status.UNAUTHENTICATED, GrpcUnauthenticated),
        (Status.PERMISSION_DENIED, GrpcPermissionDenied),
        (Status.INVALID_ARGUMENT, GrpcInvalidArgument),
        (Status.NOT_FOUND, GrpcNotFound),
        (Status.RESOURCE_EXHAUSTED, GrpcResourceExhausted),
        (Status.UNIMPLEMENTED, GrpcUnimplemented),
    ],
)
def test_each_status_becomes_its_error_and_back(
    status: Status, error_class: type[GrpcError]
) -> None:
    original = GRPCError(status, "what the server said")
    with pytest.raises(error_class) as raised, grpc_errors_converted(METHOD):
        raise original
    error = raised.value
    assert (error.status, error.code) == (status.name, status.value)
    assert (error.details, error.method, error.__cause__) == (
        "what the server said",
        METHOD,
        original,
    )
    assert status_of(error) is status  # a handler raising it answers the same status
    assert isinstance(error, FluvialError)


def test_another_status_is_a_call_failed_naming_it() -> None:
    with pytest.raises(GrpcCallFailed) as raised, grpc_errors_converted(METHOD):
        raise GRPCError(Status.FAILED_PRECONDITION)
    assert (raised.value.status, raised.value.code) == ("FAILED_PRECONDITION", 9)
    assert raised.value.details == "(the peer gave no message)"
    assert GrpcCallFailed.status == "UNKNOWN"  # the instance's, not the class's


@pytest.mark.parametrize(
    ("raised", "error_class", "words"),
    [
        (ConnectionRefusedError(), GrpcUnavailable, "connection refused"),
        (ConnectionResetError(), GrpcUnavailable, "connection failed"),
        (StreamTerminatedError("Connection lost"), GrpcUnavailable, "Connection lost"),
        (TimeoutError(), GrpcDeadlineExceeded, "deadline"),
        (ssl.SSLCertVerificationError("bad cert"), TlsHandshakeFailed, "not trusted"),
        (ssl.SSLError("alert"), TlsHandshakeFailed, "TLS handshake failed"),
    ],
)
def test_socket_tls_and_stream_errors_become_grpc_errors(
    raised: Exception, error_class: type[GrpcError], words: str
) -> None:
    with pytest.raises(error_class, match=words) as caught, grpc_errors_converted(METHOD):
        raise raised
    assert caught.value.__cause__ is raised


def test_other_errors_pass_unchanged() -> None:
    error = ValueError("a bug")
    with pytest.raises(ValueError) as raised, grpc_errors_converted(METHOD):
        raise error
    assert raised.value is error
