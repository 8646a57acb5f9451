"""The serializer registry: stable manifests, schema versions and upcasters for payloads.

A payload is stored with a manifest (a stable name the user chooses, never a Python import path,
so classes can move) and the schema version it was written with. Reading an older version runs
the registered upcasters on the decoded plain data, one version step at a time, before it is
turned into the current class. Payloads are msgpack, encoded and decoded by msgspec, which reads
and writes attrs classes directly and measured fastest (see docs/serialization.md).

Nothing is ever skipped: an unknown manifest or an undecodable payload raises a `DataError`
naming the persistence id and sequence number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import msgspec

from fluvial.core.errors import DataError, UsageError

Upcaster = Callable[[Any], Any]


class SerializedPayload(msgspec.Struct, frozen=True, gc=False):
    """An encoded object: the manifest and schema version it was written with, and its bytes."""

    manifest: str
    version: int
    data: bytes


class UnregisteredType(UsageError):
    """An object of a class that no manifest was registered for was to be serialized."""


class DuplicateManifest(UsageError):
    """Two classes were registered under one manifest, or one class twice."""


class UnknownManifest(DataError):
    """A stored payload names a manifest this process has not registered."""

    def __init__(self, manifest: str, persistence_id: str, seq_nr: int) -> None:
        super().__init__(
            f"unknown manifest {manifest!r} in {persistence_id} seq nr {seq_nr}: "
            "register its class (or an alias) with the SerializerRegistry"
        )
        self.manifest = manifest
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr


class PayloadDecodeError(DataError):
    """A stored payload could not be decoded into its registered class."""

    def __init__(self, manifest: str, persistence_id: str, seq_nr: int, reason: str) -> None:
        super().__init__(
            f"cannot decode {manifest!r} in {persistence_id} seq nr {seq_nr}: {reason}"
        )
        self.manifest = manifest
        self.persistence_id = persistence_id
        self.seq_nr = seq_nr
        self.reason = reason


@attrs.frozen
class _Registration:
    cls: type[Any]
    manifest: str
    version: int
    upcasters: Mapping[int, Upcaster]
    decoder: msgspec.msgpack.Decoder[Any]


class SerializerRegistry:
    """Maps classes to manifests and back. Register every event and state class once."""

    def __init__(self) -> None:
        self._by_class: dict[type[Any], _Registration] = {}
        self._by_manifest: dict[str, _Registration] = {}
        self._encoder = msgspec.msgpack.Encoder()

    def register(
        self,
        cls: type[Any],
        manifest: str,
        *,
        version: int = 1,
        upcasters: Mapping[int, Upcaster] | None = None,
    ) -> None:
        """Register `cls` under `manifest` at schema `version`.

        `upcasters[v]` turns the plain data (dicts, lists, str, int …) of version `v` into
        that of version `v + 1`; every version below `version` that may be stored needs one.
        """
        if version < 1:
            raise UsageError(f"schema version must be >= 1: {version}")
        if manifest in self._by_manifest or cls in self._by_class:
            raise DuplicateManifest(f"{cls.__qualname__} / {manifest!r} registered twice")
        registration = _Registration(
            cls, manifest, version, dict(upcasters or {}), msgspec.msgpack.Decoder(cls)
        )
        self._by_class[cls] = registration
        self._by_manifest[manifest] = registration

    def manifest_of(self, cls: type[Any]) -> str:
        return self._registration_of(cls).manifest

    def encode(self, obj: object) -> SerializedPayload:
        registration = self._registration_of(type(obj))
        return SerializedPayload(
            registration.manifest, registration.version, self._encoder.encode(obj)
        )

    def decode(self, payload: SerializedPayload, *, persistence_id: str, seq_nr: int) -> Any:
        """The object in `payload`, upcast to the current schema version."""
        registration = self._by_manifest.get(payload.manifest)
        if registration is None:
            raise UnknownManifest(payload.manifest, persistence_id, seq_nr)
        try:
            if payload.version == registration.version:
                return registration.decoder.decode(payload.data)
            return self._upcast(registration, payload)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
            raise PayloadDecodeError(payload.manifest, persistence_id, seq_nr, str(exc)) from exc

    def _upcast(self, registration: _Registration, payload: SerializedPayload) -> Any:
        if payload.version > registration.version:
            raise ValueError(
                f"written with schema version {payload.version}, newer than this code's "
                f"{registration.version}"
            )
        data = msgspec.msgpack.decode(payload.data)
        for version in range(payload.version, registration.version):
            upcaster = registration.upcasters.get(version)
            if upcaster is None:
                raise ValueError(f"no upcaster from schema version {version}")
            try:
                data = upcaster(data)
            except Exception as exc:
                # Old data the upcaster cannot read is undecodable data, not a crash.
                raise ValueError(f"upcaster from schema version {version} failed: {exc!r}") from exc
        return msgspec.convert(data, registration.cls)

    def _registration_of(self, cls: type[Any]) -> _Registration:
        registration = self._by_class.get(cls)
        if registration is None:
            raise UnregisteredType(
                f"{cls.__qualname__} has no manifest: call registry.register({cls.__name__}, ...)"
            )
        return registration
