"""The server's auth hook: a user function that allows or denies each call before it runs.

The hook gets a `CallInfo` (the method, the request metadata, the peer's address and, over
mutual TLS, its verified client certificate) and returns `Allow()` or a `Deny`; it may be a
plain function or a trio async function. A `Deny` ends the call with UNAUTHENTICATED (the
caller is not known: no or bad credentials) or PERMISSION_DENIED (known, not allowed) and the
reason as the status message, before any handler code runs; the client raises
`GrpcUnauthenticated` / `GrpcPermissionDenied` with that reason. A hook that raises denies the
call too (UNAUTHENTICATED, "the server's auth hook failed"), never allows it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol, TypeAlias

import attrs
from grpclib.const import Status
from grpclib.events import RecvRequest
from grpclib.exceptions import GRPCError
from grpclib.protocol import Peer

from ._asyncio_bridge import run_trio

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class ClientCertificate:
    """The verified certificate a client presented over TLS: its subject and subject
    alternative names as (field, value) pairs, as the TLS library reports them
    (("commonName", "consumer-1"), ("DNS", "consumer-1.example")).
    """

    subject: tuple[tuple[str, str], ...]
    subject_alt_names: tuple[tuple[str, str], ...]

    @property
    def common_name(self) -> str | None:
        """The subject's commonName (the last one, if several), or None."""
        names = [value for field, value in self.subject if field == "commonName"]
        return names[-1] if names else None

    @classmethod
    def from_peer_certificate(cls, certificate: Mapping[str, Any]) -> ClientCertificate:
        """From `ssl.SSLSocket.getpeercert()`'s dictionary."""
        subject = tuple(
            (str(field), str(value))
            for relative_name in certificate.get("subject", ())
            for field, value in relative_name
        )
        alt_names = tuple(
            (str(kind), str(value)) for kind, value in certificate.get("subjectAltName", ())
        )
        return cls(subject=subject, subject_alt_names=alt_names)


@attrs.frozen(kw_only=True)
class CallInfo:
    """What the auth hook knows of a call: `method` ("/package.Service/Method"), `metadata`
    (the request's (key, value) pairs in order, keys lower-case; binary values are bytes),
    `peer_address` ((host, port), or None) and `client_certificate` (None without TLS or when
    the client presented none)."""

    method: str
    metadata: tuple[tuple[str, str | bytes], ...]
    peer_address: tuple[str, int] | None
    client_certificate: ClientCertificate | None

    def metadata_value(self, key: str) -> str | bytes | None:
        """The first value of `key` (lower-case) in the metadata, or None."""
        return next((value for name, value in self.metadata if name == key), None)


@attrs.frozen
class Allow:
    """The auth hook's answer: the call may go on."""


@attrs.frozen
class Deny:
    """The auth hook's refusal: the call ends with `reason` as its message, as
    UNAUTHENTICATED when `authenticated` is False (no or bad credentials: the caller is not
    known) and PERMISSION_DENIED when it is True (the caller is known and not allowed)."""

    reason: str
    authenticated: bool = attrs.field(default=False, kw_only=True)

    @classmethod
    def unauthenticated(cls, reason: str) -> Deny:
        """Refuse a caller whose credentials are missing or invalid."""
        return cls(reason, authenticated=False)

    @classmethod
    def permission_denied(cls, reason: str) -> Deny:
        """Refuse a known caller that may not make this call."""
        return cls(reason, authenticated=True)


AuthDecision: TypeAlias = Allow | Deny


class AuthHook(Protocol):
    """The server's auth hook: any function of a `CallInfo` returning `Allow()` or a `Deny`,
    plain or a trio `async def`. It runs in a trio task of its own for each call."""

    def __call__(self, info: CallInfo, /) -> AuthDecision | Awaitable[AuthDecision]:
        """Allow or deny the call `info` describes."""


def call_info(method: str, metadata: Mapping[str, Any] | None, peer: Peer) -> CallInfo:
    """The `CallInfo` of a call of `method` with grpclib's request `metadata` and `peer`."""
    certificate = peer.cert()
    address = peer.addr()
    return CallInfo(
        method=method,
        metadata=tuple((str(key), value) for key, value in (metadata or {}).items()),
        peer_address=(str(address[0]), int(address[1])) if address else None,
        client_certificate=(
            ClientCertificate.from_peer_certificate(certificate) if certificate else None
        ),
    )


def auth_listener(hook: AuthHook) -> Callable[[RecvRequest], Coroutine[Any, Any, None]]:
    """A grpclib `RecvRequest` listener (asyncio) that asks `hook` and ends refused calls."""

    async def ask_hook(info: CallInfo) -> AuthDecision:
        decision = hook(info)
        if not isinstance(decision, Allow | Deny):
            decision = await decision
        return decision

    async def listener(event: RecvRequest) -> None:
        info = call_info(event.method_name, event.metadata, event.peer)
        try:
            decision = await run_trio(ask_hook, info)
        except Exception:
            log.exception("the auth hook failed on a call of %s: denied", info.method)
            raise GRPCError(Status.UNAUTHENTICATED, "the server's auth hook failed") from None
        if isinstance(decision, Deny):
            status = Status.PERMISSION_DENIED if decision.authenticated else Status.UNAUTHENTICATED
            raise GRPCError(status, decision.reason)
        if not isinstance(decision, Allow):
            log.error("the auth hook returned %r, not Allow() or Deny(...): denied", decision)
            raise GRPCError(Status.UNAUTHENTICATED, "the server's auth hook failed")

    return listener
