"""serve_producer behind mutual TLS and an auth hook (the transport's settings types): a
consumer with the CA's client certificate and a known token receives events; without the
certificate it never makes a call, and without the token the stream ends UNAUTHENTICATED
before any event."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
import trustme
from producer_service_helpers import (
    QUIET,
    STREAM_EVENTS,
    init_request,
    kind,
    producer_server,
    receive_events,
)

from fluvial.grpc import (
    Allow,
    CallInfo,
    ChannelSettings,
    Deny,
    GrpcPermissionDenied,
    GrpcUnauthenticated,
    GrpcUnavailable,
    ServerSettings,
    TlsSettings,
)
from fluvial.grpc._channel import open_channel
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from producer_fixtures import Appender


def auth(info: CallInfo) -> Allow | Deny:
    if info.metadata_value("authorization") != "Bearer ok":
        return Deny.unauthenticated("no valid bearer token")
    certificate = info.client_certificate
    if certificate is None or certificate.common_name != "billing":
        return Deny.permission_denied("only the billing service reads accounts")
    return Allow()


async def test_mutual_tls_and_the_auth_hook_guard_every_stream(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_chain, ca_file = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(server_chain)
    ca.cert_pem.write_to_path(ca_file)
    clients = {}
    for name in ("billing", "marketing"):
        path = clients[name] = tmp_path / f"{name}.pem"
        cert = ca.issue_cert(f"{name}.example", common_name=name)
        cert.private_key_and_cert_chain_pem.write_to_path(path)
    server = ServerSettings(
        tls=TlsSettings(
            certificate_chain=server_chain, trusted_ca=ca_file, require_client_certificate=True
        )
    )
    journal = MemoryJournal()
    await Appender(journal).append("a", 1)

    def channel(client: str | None) -> ChannelSettings:
        chain = None if client is None else clients[client]
        return ChannelSettings(tls=TlsSettings(trusted_ca=ca_file, certificate_chain=chain))

    async def first_event(port: int, client: str | None, token: str) -> list[str]:
        metadata = [("authorization", token)]
        async with (
            open_channel("127.0.0.1", port, settings=channel(client)) as ch,
            ch.open_stream(
                STREAM_EVENTS, pb.StreamEventsRequest, pb.StreamEventsResponse, metadata=metadata
            ) as stream,
        ):
            await stream.send(init_request())
            assert kind(await stream.receive()) == "started"
            return list(await receive_events(stream, 1))

    settings = attrs.evolve(QUIET, server=server)
    async with producer_server(journal, settings=settings, auth=auth) as port:
        with trio.fail_after(20):
            assert await first_event(port, "billing", "Bearer ok") == ["Account|a"]
            with pytest.raises(GrpcUnavailable):
                await first_event(port, None, "Bearer ok")
            with pytest.raises(GrpcUnauthenticated, match="no valid bearer token"):
                await first_event(port, "billing", "Bearer wrong")
            with pytest.raises(GrpcPermissionDenied, match="only the billing service"):
                await first_event(port, "marketing", "Bearer ok")
