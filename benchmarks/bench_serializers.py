"""Event payload codecs: msgspec (msgpack) against cattrs (+ the json module), in one run.

fluvial's registry uses msgspec; this is the measurement behind that choice. Each codec turns
the shopping cart's `ItemUpdated` and a 20-item `CartState` into bytes and back.

Run: .venv/bin/python benchmarks/bench_serializers.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import cattrs
import msgspec
from _table import print_table

from fluvial.examples.shopping_cart import CartState, ItemUpdated

ROUNDS = 100_000


def _per_second(function: Callable[[], Any], rounds: int = ROUNDS) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        function()
    return rounds / (time.perf_counter() - started)


def _measure(name: str, value: Any, converter: cattrs.Converter) -> list[object]:
    cls = type(value)
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(cls)
    packed = encoder.encode(value)
    as_json = json.dumps(converter.unstructure(value)).encode()
    msgspec_rate = _per_second(lambda: decoder.decode(encoder.encode(value)))
    cattrs_rate = _per_second(
        lambda: converter.structure(json.loads(json.dumps(converter.unstructure(value))), cls)
    )
    ratio = f"{msgspec_rate / cattrs_rate:.1f}"
    return [name, msgspec_rate, cattrs_rate, ratio, f"{len(packed)} / {len(as_json)}"]


def main() -> None:
    converter = cattrs.Converter()
    rows = [
        _measure("ItemUpdated", ItemUpdated("apple", 3), converter),
        _measure("CartState, 20 items", CartState({f"item-{i}": i for i in range(20)}), converter),
    ]
    print_table(
        "encode + decode round trips/s",
        ["payload", "msgspec msgpack", "cattrs + json", "ratio", "bytes (msgspec / json)"],
        rows,
    )


if __name__ == "__main__":
    main()
