"""Replication over gRPC: the transport's public names (settings, auth hook, errors).

The server and client lifecycles (`fluvial.grpc._server.serve_grpc`,
`fluvial.grpc._channel.open_channel`) are used by fluvial's producer and consumer; users
configure them with the settings below. Importing this package loads grpclib and trio-asyncio
(which patches asyncio's loop policy: see `fluvial.grpc._asyncio_bridge`); `import fluvial`
does not.
"""

from ._auth import Allow as Allow
from ._auth import AuthDecision as AuthDecision
from ._auth import AuthHook as AuthHook
from ._auth import CallInfo as CallInfo
from ._auth import ClientCertificate as ClientCertificate
from ._auth import Deny as Deny
from ._errors import GrpcCallFailed as GrpcCallFailed
from ._errors import GrpcDeadlineExceeded as GrpcDeadlineExceeded
from ._errors import GrpcError as GrpcError
from ._errors import GrpcInvalidArgument as GrpcInvalidArgument
from ._errors import GrpcNotFound as GrpcNotFound
from ._errors import GrpcPermissionDenied as GrpcPermissionDenied
from ._errors import GrpcResourceExhausted as GrpcResourceExhausted
from ._errors import GrpcUnauthenticated as GrpcUnauthenticated
from ._errors import GrpcUnavailable as GrpcUnavailable
from ._errors import GrpcUnimplemented as GrpcUnimplemented
from ._errors import MessageTooLarge as MessageTooLarge
from ._errors import TlsConfigurationError as TlsConfigurationError
from ._errors import TlsHandshakeFailed as TlsHandshakeFailed
from ._settings import ChannelSettings as ChannelSettings
from ._settings import KeepAlive as KeepAlive
from ._settings import ServerSettings as ServerSettings
from ._settings import TlsSettings as TlsSettings

__all__ = [
    "Allow",
    "AuthDecision",
    "AuthHook",
    "CallInfo",
    "ChannelSettings",
    "ClientCertificate",
    "Deny",
    "GrpcCallFailed",
    "GrpcDeadlineExceeded",
    "GrpcError",
    "GrpcInvalidArgument",
    "GrpcNotFound",
    "GrpcPermissionDenied",
    "GrpcResourceExhausted",
    "GrpcUnauthenticated",
    "GrpcUnavailable",
    "GrpcUnimplemented",
    "KeepAlive",
    "MessageTooLarge",
    "ServerSettings",
    "TlsConfigurationError",
    "TlsHandshakeFailed",
    "TlsSettings",
]
