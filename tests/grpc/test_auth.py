"""The server's auth hook: asked before any handler code, its refusals typed on the client."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
from grpc_transport_helpers import STREAM, UNARY, EchoState, RawCodec, echo_server

from fluvial.grpc import (
    Allow,
    AuthDecision,
    CallInfo,
    Deny,
    GrpcPermissionDenied,
    GrpcUnauthenticated,
)
from fluvial.grpc._channel import open_channel

TOKENS = {"token-reader": "reader", "token-admin": "admin"}


async def token_hook(info: CallInfo) -> AuthDecision:
    """A trio async hook: who the bearer token names, and what each may call."""
    await trio.lowlevel.checkpoint()
    header = info.metadata_value("authorization")
    if not isinstance(header, str) or not header.startswith("Bearer "):
        return Deny.unauthenticated("no bearer token in the authorization metadata")
    who = TOKENS.get(header.removeprefix("Bearer "))
    if who is None:
        return Deny.unauthenticated("unknown token")
    if info.method == STREAM and who != "admin":
        return Deny.permission_denied(f"{who} may not open {STREAM}")
    return Allow()


def _bearer(token: str) -> list[tuple[str, str | bytes]]:
    return [("authorization", f"Bearer {token}")]


async def test_calls_without_or_with_a_bad_token_are_unauthenticated_before_any_handler() -> None:
    state = EchoState()
    async with (
        echo_server(auth=token_hook, state=state) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        with pytest.raises(GrpcUnauthenticated) as missing:
            await ch.unary(UNARY, b"x", bytes)
        assert missing.value.details == "no bearer token in the authorization metadata"
        with pytest.raises(GrpcUnauthenticated, match="unknown token"):
            await ch.unary(UNARY, b"x", bytes, metadata=_bearer("forged"))
        with pytest.raises(GrpcUnauthenticated):
            async with ch.open_stream(STREAM, bytes, bytes) as stream:
                await stream.send(b"x")
                await stream.receive()
        assert state.started == []  # no handler code ran for a refused call
        assert await ch.unary(UNARY, b"ok", bytes, metadata=_bearer("token-reader")) == b"ok"
        assert state.started == [UNARY]


async def test_a_known_caller_refused_a_method_gets_permission_denied() -> None:
    state = EchoState()
    async with (
        echo_server(auth=token_hook, state=state) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        with pytest.raises(GrpcPermissionDenied) as denied:
            async with ch.open_stream(STREAM, bytes, bytes, metadata=_bearer("token-reader")) as s:
                await s.send(b"x")
                await s.receive()
        assert denied.value.details == f"reader may not open {STREAM}"
        async with ch.open_stream(STREAM, bytes, bytes, metadata=_bearer("token-admin")) as s:
            await s.send(b"admin")
            assert await s.receive() == b"admin"
        assert state.started == [STREAM]


async def test_a_hook_that_raises_denies_the_call() -> None:
    def broken(info: CallInfo) -> AuthDecision:
        raise RuntimeError("the token service is down")

    state = EchoState()
    async with (
        echo_server(auth=broken, state=state) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        with pytest.raises(GrpcUnauthenticated, match="auth hook failed"):
            await ch.unary(UNARY, b"x", bytes)
    assert state.started == []


async def test_the_hook_sees_the_method_metadata_and_peer_address() -> None:
    seen: list[CallInfo] = []

    def record(info: CallInfo) -> AuthDecision:
        seen.append(info)
        return Allow()

    async with (
        echo_server(auth=record) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        await ch.unary(UNARY, b"x", bytes, metadata=[("x-tenant", "blue"), ("x-key-bin", b"\0")])
    info = seen[0]
    assert info.method == UNARY
    assert info.metadata_value("x-tenant") == "blue"
    assert info.metadata_value("x-key-bin") == b"\0"
    assert info.peer_address is not None and info.peer_address[0] == "127.0.0.1"
    assert info.client_certificate is None  # no TLS


def test_deny_says_which_status_it_means() -> None:
    assert Deny.unauthenticated("no token") == Deny("no token", authenticated=False)
    assert Deny.permission_denied("not yours") == Deny("not yours", authenticated=True)
