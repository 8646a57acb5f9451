"""The serializer registry: round trips, schema versions, upcasters, and what it refuses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs
import msgspec
import pytest

from fluvial.core.errors import DataError, UsageError
from fluvial.core.serialization import (
    DuplicateManifest,
    PayloadDecodeError,
    PayloadEncodeError,
    SerializedPayload,
    SerializerRegistry,
    UnknownManifest,
    UnregisteredType,
    UnsupportedType,
)
from fluvial.examples.shopping_cart import CartState, CheckedOut, ItemUpdated, register_cart

PID = "ShoppingCart|cart-1"


def cart_registry() -> SerializerRegistry:
    return register_cart(SerializerRegistry())


def decode(registry: SerializerRegistry, payload: SerializedPayload, seq_nr: int = 1) -> Any:
    return registry.decode(payload, persistence_id=PID, seq_nr=seq_nr)


@pytest.mark.parametrize(
    "value",
    [
        ItemUpdated("apple", 3),
        ItemUpdated("\u00e9t\u00e9 \U0001f600", -2),
        CheckedOut(),
        CartState(),
        CartState({"apple": 2, "pear": -1}, checked_out=True),
    ],
)
def test_cart_events_and_state_round_trip(value: object) -> None:
    registry = cart_registry()
    payload = registry.encode(value)
    assert payload.version == 1
    assert isinstance(payload.data, bytes)
    decoded = decode(registry, payload)
    assert type(decoded) is type(value)
    assert decoded == value


def test_payloads_carry_the_chosen_manifest_not_a_python_path() -> None:
    registry = cart_registry()
    assert registry.encode(ItemUpdated("a", 1)).manifest == "cart.ItemUpdated"
    assert registry.manifest_of(CheckedOut) == "cart.CheckedOut"
    assert registry.encode(CartState()).manifest == "cart.State"


def test_a_second_registry_with_the_same_manifests_reads_the_payload() -> None:
    payload = cart_registry().encode(ItemUpdated("apple", 3))
    assert decode(cart_registry(), payload) == ItemUpdated("apple", 3)


def test_unknown_manifest_names_the_persistence_id_and_seq_nr() -> None:
    payload = SerializedPayload("cart.ItemRenamed", 1, cart_registry().encode(CheckedOut()).data)
    with pytest.raises(UnknownManifest) as raised:
        decode(cart_registry(), payload, seq_nr=42)
    error = raised.value
    assert isinstance(error, DataError)
    assert (error.manifest, error.persistence_id, error.seq_nr) == ("cart.ItemRenamed", PID, 42)
    assert "cart.ItemRenamed" in str(error)
    assert PID in str(error)
    assert "42" in str(error)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # truncated to nothing
        b"\xc1",  # a byte msgpack never uses
        b"\x82\xa7item_id",  # a map cut off after its first key
        msgspec.msgpack.encode({"item_id": "apple"}),  # a field is missing
        msgspec.msgpack.encode({"item_id": 7, "quantity": 1}),  # a field has the wrong type
        msgspec.msgpack.encode([1, 2, 3]),  # not a map at all
    ],
)
def test_corrupt_payload_bytes_raise_payload_decode_error(data: bytes) -> None:
    payload = SerializedPayload("cart.ItemUpdated", 1, data)
    with pytest.raises(PayloadDecodeError) as raised:
        decode(cart_registry(), payload, seq_nr=7)
    error = raised.value
    assert isinstance(error, DataError)
    assert (error.manifest, error.persistence_id, error.seq_nr) == ("cart.ItemUpdated", PID, 7)
    assert PID in str(error)
    assert "seq nr 7" in str(error)


@attrs.frozen
class ItemAddedV1:
    item: str
    qty: int


@attrs.frozen
class ItemAddedV2:
    item_id: str
    qty: int


@attrs.frozen
class ItemAdded:
    """Version 3: `item` was renamed `item_id` in v2, `qty` became `quantity` plus a `note`."""

    item_id: str
    quantity: int
    note: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"item_id": data["item"], "qty": data["qty"]}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {"item_id": data["item_id"], "quantity": data["qty"], "note": "from v2"}


def written_by(cls: type[Any], version: int, value: object) -> SerializedPayload:
    """`value` as the code of schema `version` stored it."""
    old = SerializerRegistry()
    old.register(cls, "cart.ItemAdded", version=version)
    return old.encode(value)


def current_registry() -> SerializerRegistry:
    registry = SerializerRegistry()
    registry.register(ItemAdded, "cart.ItemAdded", version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
    return registry


def test_a_v1_payload_runs_both_upcasters() -> None:
    payload = written_by(ItemAddedV1, 1, ItemAddedV1("apple", 2))
    assert payload.version == 1
    assert decode(current_registry(), payload) == ItemAdded("apple", 2, "from v2")


def test_a_v2_payload_runs_only_the_later_upcaster() -> None:
    def must_not_run(data: Any) -> Any:
        raise AssertionError("the v1 upcaster ran on a v2 payload")

    registry = SerializerRegistry()
    registry.register(
        ItemAdded, "cart.ItemAdded", version=3, upcasters={1: must_not_run, 2: v2_to_v3}
    )
    payload = written_by(ItemAddedV2, 2, ItemAddedV2("apple", 2))
    assert decode(registry, payload) == ItemAdded("apple", 2, "from v2")


def test_a_current_payload_is_decoded_without_upcasting() -> None:
    registry = current_registry()
    payload = registry.encode(ItemAdded("apple", 2, "new"))
    assert payload.version == 3
    assert decode(registry, payload) == ItemAdded("apple", 2, "new")


def test_a_payload_from_a_newer_schema_version_is_refused() -> None:
    payload = SerializedPayload(
        "cart.ItemAdded", 4, current_registry().encode(ItemAdded("a", 1, "")).data
    )
    with pytest.raises(PayloadDecodeError) as raised:
        decode(current_registry(), payload, seq_nr=3)
    assert "version 4" in raised.value.reason
    assert raised.value.seq_nr == 3


def test_a_missing_upcaster_is_a_decode_error() -> None:
    registry = SerializerRegistry()
    registry.register(ItemAdded, "cart.ItemAdded", version=3, upcasters={2: v2_to_v3})
    with pytest.raises(PayloadDecodeError) as raised:
        decode(registry, written_by(ItemAddedV1, 1, ItemAddedV1("apple", 2)))
    assert "from schema version 1" in raised.value.reason


def test_an_old_payload_the_upcaster_cannot_read_is_a_decode_error() -> None:
    # A v1 payload without the "item" field: the upcaster's KeyError must not escape bare.
    payload = SerializedPayload("cart.ItemAdded", 1, msgspec.msgpack.encode({"qty": 2}))
    with pytest.raises(PayloadDecodeError) as raised:
        decode(current_registry(), payload, seq_nr=9)
    assert (raised.value.persistence_id, raised.value.seq_nr) == (PID, 9)
    assert "upcaster from schema version 1 failed: KeyError('item')" in raised.value.reason


def test_schema_version_must_be_positive() -> None:
    with pytest.raises(UsageError):
        SerializerRegistry().register(ItemAdded, "cart.ItemAdded", version=0)


def test_one_manifest_for_two_classes_is_refused() -> None:
    registry = cart_registry()
    with pytest.raises(DuplicateManifest) as raised:
        registry.register(ItemAdded, "cart.ItemUpdated")
    assert isinstance(raised.value, UsageError)
    # It names both classes: the manifest's owner, and the one that was refused.
    assert str(raised.value) == (
        "manifest 'cart.ItemUpdated' already names ItemUpdated; cannot also register ItemAdded "
        "under it: give each class its own manifest"
    )
    assert (raised.value.cls, raised.value.registered) == (ItemAdded, ItemUpdated)
    # The first registration still holds.
    assert decode(registry, registry.encode(ItemUpdated("a", 1))) == ItemUpdated("a", 1)


def test_one_class_under_two_manifests_is_refused() -> None:
    registry = cart_registry()
    with pytest.raises(DuplicateManifest) as raised:
        registry.register(ItemUpdated, "cart.ItemUpdated.v2")
    assert str(raised.value) == (
        "ItemUpdated is already registered under 'cart.ItemUpdated'; cannot also register it "
        "under 'cart.ItemUpdated.v2': a class has one manifest"
    )
    assert raised.value.registered == "cart.ItemUpdated"
    with pytest.raises(DuplicateManifest, match="ItemUpdated is already registered under"):
        registry.register(ItemUpdated, "cart.ItemUpdated")
    with pytest.raises(UnknownManifest):
        decode(registry, SerializedPayload("cart.ItemUpdated.v2", 1, b"\x80"))


def test_an_unregistered_class_cannot_be_encoded() -> None:
    registry = cart_registry()
    with pytest.raises(UnregisteredType) as raised:
        registry.encode(ItemAdded("apple", 1, ""))
    assert isinstance(raised.value, UsageError)
    assert "ItemAdded" in str(raised.value)
    with pytest.raises(UnregisteredType):
        registry.manifest_of(ItemAdded)


class Opaque:
    """A plain class: msgspec would need hooks to encode it."""

    def __init__(self, secret: str) -> None:
        self.secret = secret


@attrs.frozen
class HoldsOpaque:
    name: str
    parts: list[dict[str, Opaque]]


@attrs.frozen
class HoldsCallback:
    callback: Callable[[int], int]


@attrs.frozen
class Tree:
    """Recursive, and fine."""

    label: str
    children: tuple[Tree, ...] = ()
    extra: object = None  # msgspec decodes `object` as anything


@pytest.mark.parametrize(
    ("cls", "named"),
    [
        (Opaque, "it is a plain class"),
        (HoldsOpaque, "field parts holds a Opaque"),
        (HoldsCallback, "field callback holds a Callable"),
    ],
)
def test_a_class_msgspec_cannot_serialize_is_refused_at_register(cls: type, named: str) -> None:
    registry = SerializerRegistry()
    with pytest.raises(UnsupportedType) as raised:
        registry.register(cls, "x")
    assert isinstance(raised.value, UsageError)
    assert f"msgspec cannot serialize {cls.__qualname__}: {named}" in str(raised.value)
    with pytest.raises(UnregisteredType):  # nothing was registered
        registry.manifest_of(cls)


def test_a_class_with_an_unsupported_annotation_is_refused_at_register() -> None:
    @attrs.frozen
    class HoldsLock:
        lock: threading.Lock  # not even a type msgspec can inspect

    with pytest.raises(UnsupportedType, match=r"msgspec cannot serialize .*HoldsLock"):
        SerializerRegistry().register(HoldsLock, "x")


def test_recursive_classes_and_object_fields_are_accepted() -> None:
    registry = SerializerRegistry()
    registry.register(Tree, "tree")
    tree = Tree("root", (Tree("leaf", extra=[1, "two"]),))
    assert decode(registry, registry.encode(tree)) == tree


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_a_version_that_is_not_an_int_is_refused(version: Any) -> None:
    with pytest.raises(UsageError):
        SerializerRegistry().register(ItemAdded, "cart.ItemAdded", version=version)


@pytest.mark.parametrize("manifest", ["", None])
def test_an_empty_manifest_is_refused(manifest: Any) -> None:
    with pytest.raises(UsageError):
        SerializerRegistry().register(ItemAdded, manifest)


def test_a_value_msgspec_cannot_encode_is_a_payload_encode_error() -> None:
    registry = SerializerRegistry()
    registry.register(Tree, "tree")
    with pytest.raises(PayloadEncodeError, match="cannot encode this Tree \\('tree'\\)") as raised:
        registry.encode(Tree("root", extra=threading.Lock()))
    assert isinstance(raised.value, UsageError)
    with pytest.raises(PayloadEncodeError):
        registry.encode(Tree("root", extra=2**70))
