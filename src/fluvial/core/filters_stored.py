"""The persisted form of a filter: every part of it as sorted plain data, encoded as JSON.

`Filter.to_json` / `from_json` (and `to_data` / `from_data`) build and read a `StoredFilter`;
this module holds its shape and turns what does not fit it into `InvalidFilterData`.
"""

from __future__ import annotations

import msgspec

from fluvial.core.errors import DataError


class InvalidFilterData(DataError):
    """Stored filter data (`Filter.from_json` / `from_data`) that is not a filter's: malformed,
    of another shape, or holding a criterion a filter refuses (the message says which)."""


class StoredFilter(msgspec.Struct, forbid_unknown_fields=True):
    """The persisted form: every part, always present; an unknown part (a later version's
    criterion) is refused rather than dropped, since dropping it would change what passes."""

    exclude_tags: list[str]
    include_tags: list[str]
    exclude_entity_ids: list[str]
    include_entity_ids: dict[str, int]
    exclude_regexes: list[str]
    include_regexes: list[str]
    include_topics: list[str]


_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder(StoredFilter)


def stored_to_json(stored: StoredFilter) -> bytes:
    """`stored` as JSON (the same bytes for equal stored filters)."""
    return _JSON_ENCODER.encode(stored)


def stored_from_json(text: bytes | str) -> StoredFilter:
    """The stored filter `text` encodes; InvalidFilterData for anything else."""
    try:
        return _JSON_DECODER.decode(text)
    except msgspec.DecodeError as error:
        raise InvalidFilterData(f"not a stored filter: {error}") from None


def stored_from_data(data: object) -> StoredFilter:
    """The stored filter of plain `data`; InvalidFilterData for anything else."""
    try:
        return msgspec.convert(data, StoredFilter)
    except msgspec.ValidationError as error:
        raise InvalidFilterData(f"not a stored filter: {error}") from None
