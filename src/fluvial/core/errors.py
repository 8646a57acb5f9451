"""The one root of fluvial's errors.

`FluvialError` splits in two, as in h11: `UsageError` means the caller misused the API (a local
mistake: fix the code), `DataError` means something fluvial read is not what it must be (a stored
row, a file, later a peer's message). Each carries what a user needs to find the culprit.
"""

from __future__ import annotations


class FluvialError(Exception):
    """Root of every error fluvial raises on purpose."""


class UsageError(FluvialError):
    """The API was called with something it cannot accept."""


class DataError(FluvialError):
    """Stored or received data is not what fluvial can read."""
