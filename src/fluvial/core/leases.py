"""Leases: which projection instance owns a slice range of a projection, until when."""

from __future__ import annotations

import attrs

from fluvial.core.ids import SliceRange


@attrs.frozen
class Lease:
    """An instance's ownership of a projection's slice range, until `expires_at` (seconds on
    the store's clock) unless renewed."""

    projection: str
    slices: SliceRange
    owner: str
    expires_at: float
