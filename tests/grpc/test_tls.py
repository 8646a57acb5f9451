"""TLS and mutual TLS over loopback, with certificate authorities made by trustme."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
import trustme
from grpc_transport_helpers import UNARY, EchoState, RawCodec, echo_server

from fluvial.core.errors import UsageError
from fluvial.grpc import (
    Allow,
    CallInfo,
    ChannelSettings,
    GrpcUnavailable,
    ServerSettings,
    TlsConfigurationError,
    TlsHandshakeFailed,
    TlsSettings,
)
from fluvial.grpc._channel import open_channel


@attrs.frozen
class Pki:
    """Files of a CA, a server certificate it signed, and a client certificate it signed."""

    ca: Path
    server_chain: Path
    client_chain: Path


def _pki(directory: Path, name: str) -> Pki:
    directory.mkdir()
    ca = trustme.CA(organization_name=f"fluvial test {name}")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert(f"consumer.{name}.example", common_name=f"consumer-{name}")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "client.pem")
    ca.cert_pem.write_to_path(pki.ca)
    server.private_key_and_cert_chain_pem.write_to_path(pki.server_chain)
    client.private_key_and_cert_chain_pem.write_to_path(pki.client_chain)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return _pki(tmp_path / "ours", "ours")


@pytest.fixture
def other_pki(tmp_path: Path) -> Pki:
    return _pki(tmp_path / "other", "other")


def _server(pki: Pki, *, mutual: bool = False) -> ServerSettings:
    return ServerSettings(
        tls=TlsSettings(
            certificate_chain=pki.server_chain,
            trusted_ca=pki.ca if mutual else None,
            require_client_certificate=mutual,
        )
    )


def _client(trusted: Pki, certificate: Pki | None = None) -> ChannelSettings:
    return ChannelSettings(
        tls=TlsSettings(
            trusted_ca=trusted.ca,
            certificate_chain=certificate.client_chain if certificate else None,
        )
    )


async def test_a_call_over_tls(pki: Pki) -> None:
    async with (
        echo_server(settings=_server(pki)) as port,
        open_channel("127.0.0.1", port, settings=_client(pki), codec=RawCodec()) as ch,
    ):
        assert await ch.unary(UNARY, b"secret", bytes) == b"secret"


async def test_a_client_that_does_not_trust_the_servers_ca_fails_the_handshake(
    pki: Pki, other_pki: Pki
) -> None:
    state = EchoState()
    async with (
        echo_server(settings=_server(pki), state=state) as port,
        open_channel("127.0.0.1", port, settings=_client(other_pki), codec=RawCodec()) as ch,
    ):
        with pytest.raises(TlsHandshakeFailed, match="certificate is not trusted"):
            await ch.unary(UNARY, b"x", bytes)
    assert state.started == []


async def test_the_servers_name_is_checked(pki: Pki) -> None:
    wrong_name = ChannelSettings(tls=TlsSettings(trusted_ca=pki.ca, server_name="producer.test"))
    right_name = ChannelSettings(tls=TlsSettings(trusted_ca=pki.ca, server_name="localhost"))
    async with echo_server(settings=_server(pki)) as port:
        async with open_channel("127.0.0.1", port, settings=wrong_name, codec=RawCodec()) as ch:
            with pytest.raises(TlsHandshakeFailed, match=r"producer\.test"):
                await ch.unary(UNARY, b"x", bytes)
        async with open_channel("127.0.0.1", port, settings=right_name, codec=RawCodec()) as ch:
            assert await ch.unary(UNARY, b"x", bytes) == b"x"


async def test_a_plaintext_client_of_a_tls_server_is_unavailable(pki: Pki) -> None:
    async with (
        echo_server(settings=_server(pki)) as port,
        open_channel("127.0.0.1", port, codec=RawCodec()) as ch,
    ):
        with trio.fail_after(10), pytest.raises(GrpcUnavailable):
            await ch.unary(UNARY, b"x", bytes)


async def test_mutual_tls_lets_a_client_of_the_ca_in_and_the_hook_sees_its_subject(
    pki: Pki,
) -> None:
    seen: list[CallInfo] = []

    def hook(info: CallInfo) -> Allow:
        seen.append(info)
        return Allow()

    async with (
        echo_server(settings=_server(pki, mutual=True), auth=hook) as port,
        open_channel("127.0.0.1", port, settings=_client(pki, pki), codec=RawCodec()) as ch,
    ):
        assert await ch.unary(UNARY, b"hello", bytes) == b"hello"
    certificate = seen[0].client_certificate
    assert certificate is not None and certificate.common_name == "consumer-ours"
    assert ("DNS", "consumer.ours.example") in certificate.subject_alt_names


@pytest.mark.parametrize("client_certificate", ["none", "other-ca"])
async def test_mutual_tls_never_completes_a_call_without_a_certificate_of_the_ca(
    pki: Pki, other_pki: Pki, client_certificate: str
) -> None:
    state = EchoState()
    certificate = None if client_certificate == "none" else other_pki
    async with (
        echo_server(settings=_server(pki, mutual=True), state=state) as port,
        open_channel("127.0.0.1", port, settings=_client(pki, certificate), codec=RawCodec()) as ch,
    ):
        for _ in range(3):
            with trio.fail_after(10), pytest.raises(GrpcUnavailable):
                await ch.unary(UNARY, b"x", bytes)
        async with open_channel(
            "127.0.0.1", port, settings=_client(pki, pki), codec=RawCodec()
        ) as good:
            assert await good.unary(UNARY, b"ok", bytes) == b"ok"  # the server goes on
    assert state.started == [UNARY]  # only the good client's call reached a handler


def test_tls_settings_refuse_what_cannot_work(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(UsageError, match="trusted_ca"):
        TlsSettings(certificate_chain=pki.server_chain, require_client_certificate=True)
    with pytest.raises(UsageError, match="certificate_chain"):
        TlsSettings(private_key=tmp_path / "key.pem")


async def test_a_tls_file_that_cannot_be_used_is_named(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsConfigurationError, match=r"missing\.pem"):
        async with open_channel(
            "127.0.0.1", 1, settings=ChannelSettings(tls=TlsSettings(trusted_ca=missing))
        ):
            pass  # pragma: no cover
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(TlsConfigurationError, match=r"not\.pem"):
        async with echo_server(settings=ServerSettings(tls=TlsSettings(certificate_chain=not_pem))):
            pass  # pragma: no cover
    with pytest.raises(TlsConfigurationError, match=r"needs TlsSettings\.certificate_chain"):
        async with echo_server(settings=ServerSettings(tls=TlsSettings(trusted_ca=pki.ca))):
            pass  # pragma: no cover
