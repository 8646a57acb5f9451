"""The one root of fluvial's errors.

Every error fluvial raises derives from `FluvialError`, so `except FluvialError` sees them all.
As in h11, the two big branches say whose mistake it is: `UsageError` means the caller misused
the API (a local mistake: fix the code), `DataError` means something fluvial read is not what it
must be (a stored row, a file, later a peer's message). Storage has its own branch,
`fluvial.journal.api.JournalError` (a conflicting writer, a file that cannot be used). The
others say what happened to a command or a projection: `CommandRejected` (the handler's own
typed refusal, subclassed by users), `fluvial.entity._errors.EntityError` (the command could not
be carried out: its handler failed, the runtime closed) and `ProjectionFailed`. Each error
carries what a user needs to find the culprit. Internal signals that never leave fluvial are
private classes.
"""

from __future__ import annotations


class FluvialError(Exception):
    """Root of every error fluvial raises on purpose."""


class UsageError(FluvialError):
    """The API was called with something it cannot accept."""


class DataError(FluvialError):
    """Stored or received data is not what fluvial can read."""
