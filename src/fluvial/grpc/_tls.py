"""`ssl.SSLContext`s for fluvial's gRPC server and client, from `TlsSettings`.

Both contexts speak TLS 1.2 or newer, offer HTTP/2 by ALPN, and use AEAD ciphers with forward
secrecy for TLS 1.2 (TLS 1.3 has only such suites). A file that cannot be used raises
`TlsConfigurationError` naming it, when the server starts or the channel opens.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ._errors import TlsConfigurationError
from ._settings import TlsSettings

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.set_alpn_protocols(["h2"])
    return context


def _load_chain(context: ssl.SSLContext, tls: TlsSettings) -> None:
    assert tls.certificate_chain is not None
    try:
        context.load_cert_chain(tls.certificate_chain, tls.private_key)
    except (OSError, ssl.SSLError) as error:
        key = f" and private_key {str(tls.private_key)!r}" if tls.private_key else ""
        raise TlsConfigurationError(
            f"TlsSettings.certificate_chain {str(tls.certificate_chain)!r}{key} cannot be "
            f"used: {error}"
        ) from error


def _load_trusted(context: ssl.SSLContext, trusted_ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=trusted_ca)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigurationError(
            f"TlsSettings.trusted_ca {str(trusted_ca)!r} cannot be used: {error}"
        ) from error


def server_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The server side of `tls`: its certificate, and client certificates verified against
    `trusted_ca` (required with `require_client_certificate`, optional otherwise)."""
    if tls.certificate_chain is None:
        raise TlsConfigurationError("a TLS server needs TlsSettings.certificate_chain")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, tls)
    if tls.trusted_ca is not None:
        _load_trusted(context, tls.trusted_ca)
        # Without require_client_certificate a client may still present one: it is verified,
        # and the auth hook sees its subject.
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


def client_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """The client side of `tls`: the server's certificate verified (against `trusted_ca`, or
    the system's trust store), its name checked, and this side's certificate for mutual TLS."""
    if tls.require_client_certificate:
        raise TlsConfigurationError(
            "TlsSettings.require_client_certificate is a server setting; a client presents "
            "its certificate_chain"
        )
    context = _harden(ssl.create_default_context(ssl.Purpose.SERVER_AUTH))
    if tls.trusted_ca is not None:
        # Only the given CA: the system's store would trust more than the deployment means.
        context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        _load_trusted(context, tls.trusted_ca)
    if tls.certificate_chain is not None:
        _load_chain(context, tls)
    return context
