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
import msgspec.inspect

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
    """A manifest was registered for a second class, or a class a second time.

    `cls` is what the failed call tried to register and `manifest` the name it gave;
    `registered` is the class that already holds that manifest, or the manifest that already
    names that class.
    """

    def __init__(self, cls: type[Any], manifest: str, *, registered: type[Any] | str) -> None:
        name = cls.__qualname__
        if isinstance(registered, type):
            text = (
                f"manifest {manifest!r} already names {registered.__qualname__}; cannot also "
                f"register {name} under it: give each class its own manifest"
            )
        elif registered == manifest:
            text = f"{name} is already registered under {manifest!r}: register each class once"
        else:
            text = (
                f"{name} is already registered under {registered!r}; cannot also register it "
                f"under {manifest!r}: a class has one manifest"
            )
        super().__init__(text)
        self.cls = cls
        self.manifest = manifest
        self.registered = registered


class UnsupportedType(UsageError):
    """A class whose instances msgspec cannot encode and decode was to be registered."""


class PayloadEncodeError(UsageError):
    """An object of a registered class holds a value msgspec cannot encode."""


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


def _decoder_for(cls: type[Any]) -> msgspec.msgpack.Decoder[Any]:
    """A decoder of `cls`, once msgspec can encode and decode every field of it without hooks
    (which the registry does not pass); raises `UnsupportedType` naming the culprit."""
    if not isinstance(cls, type):
        raise UnsupportedType(f"register a class, not {cls!r}")
    try:
        unsupported = _unsupported_part(msgspec.inspect.type_info(cls), "", set())
        decoder = msgspec.msgpack.Decoder(cls)
    except (TypeError, ValueError, NameError) as exc:  # e.g. an unresolvable annotation
        raise UnsupportedType(f"msgspec cannot serialize {cls.__qualname__}: {exc}") from exc
    if unsupported is not None:
        where, culprit = unsupported
        what = f"field {where} holds a {culprit.__qualname__}" if where else "it is a plain class"
        raise UnsupportedType(
            f"msgspec cannot serialize {cls.__qualname__}: {what}, which msgspec supports only "
            "through hooks that the registry does not use; build events "
            "and states of attrs classes, dataclasses, msgspec Structs, enums and builtin types "
            "(int, str, list, dict, datetime, ...)"
        )
    return decoder


def _unsupported_part(
    info: msgspec.inspect.Type, where: str, seen: set[int]
) -> tuple[str, type[Any]] | None:
    """Where in `info` (a field path, "" for `info` itself) msgspec would need an encode and
    decode hook, and for which class."""
    if isinstance(info, msgspec.inspect.CustomType):
        # A field typed `object` is decoded as anything, like `Any`.
        return None if info.cls is object else (where, info.cls)
    if id(info) in seen:  # a recursive type: this part is checked already
        return None
    seen.add(id(info))
    fields = getattr(info, "fields", None)
    if fields is not None:  # attrs classes, dataclasses, Structs, TypedDicts, NamedTuples
        for field in fields:
            path = f"{where}.{field.name}" if where else field.name
            found = _unsupported_part(field.type, path, seen)
            if found is not None:
                return found
        return None
    for name in msgspec.structs.fields(info):
        value = getattr(info, name.name)
        parts = value if isinstance(value, tuple) else (value,)
        for part in parts:
            if isinstance(part, msgspec.inspect.Type):
                found = _unsupported_part(part, where, seen)
                if found is not None:
                    return found
    return None


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

        Raises, before anything is registered: `DuplicateManifest` if `cls` or `manifest` is
        registered already, `UnsupportedType` if msgspec cannot encode and decode `cls` (naming
        the field and the type it cannot handle), `UsageError` for a bad version or manifest.
        """
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise UsageError(f"schema version must be an int >= 1: {version!r}")
        if not isinstance(manifest, str) or not manifest:
            raise UsageError(f"a manifest must be a non-empty str: {manifest!r}")
        if cls in self._by_class:
            raise DuplicateManifest(cls, manifest, registered=self._by_class[cls].manifest)
        if manifest in self._by_manifest:
            raise DuplicateManifest(cls, manifest, registered=self._by_manifest[manifest].cls)
        registration = _Registration(
            cls, manifest, version, dict(upcasters or {}), _decoder_for(cls)
        )
        self._by_class[cls] = registration
        self._by_manifest[manifest] = registration

    def manifest_of(self, cls: type[Any]) -> str:
        """The manifest `cls` was registered under, as `encode` writes it for a `cls` value.

        Raises `UnregisteredType` if `cls` itself was not registered (a registered base class
        does not count).
        """
        return self._registration_of(cls).manifest

    def encode(self, obj: object) -> SerializedPayload:
        """`obj` as a payload under its class's manifest and current schema version.

        Raises `UnregisteredType`, or `PayloadEncodeError` for a value msgspec cannot encode
        (in a field typed `Any`, say, or an int beyond 64 bits).
        """
        registration = self._registration_of(type(obj))
        try:
            data = self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError) as exc:  # msgspec.EncodeError is a ValueError
            raise PayloadEncodeError(
                f"cannot encode this {type(obj).__qualname__} ({registration.manifest!r}): {exc}"
            ) from exc
        return SerializedPayload(registration.manifest, registration.version, data)

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
