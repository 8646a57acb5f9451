"""The PostgreSQL journal's own errors: a server it cannot reach (or lost during a call), a
schema of a newer fluvial."""

from __future__ import annotations

from fluvial.journal.api import JournalError


class PostgresUnavailable(JournalError):
    """The PostgreSQL server could not be reached, or the connection broke during a call.

    A call that raises this may or may not have committed if the connection broke while it
    ran (the server alone knows); reading the entity back tells. Check that the server runs
    and that the connection settings (the DSN) are right.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"PostgreSQL is not reachable: {detail}; check that the server runs and the "
            "connection settings (host, port, database, user)"
        )
        self.detail = detail


class PostgresOutcomeUnknown(PostgresUnavailable):
    """The connection broke while the call ran, and it stayed broken for longer than the
    journal retries (`retry_for`): the call may or may not have committed. Read back what it
    wrote to know (the entity runtime reloads the entity before its next command)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.add_note("the connection broke during the call: it may or may not have committed")


class PostgresSchemaTooNew(JournalError):
    """The journal's schema in the database was written by a newer fluvial; upgrade fluvial to
    use it (nothing was changed)."""

    def __init__(self, schema: str, found: int, supported: int) -> None:
        super().__init__(
            f"the PostgreSQL schema {schema!r} has fluvial schema version {found}, newer than "
            f"this fluvial supports ({supported}); upgrade fluvial to use it (nothing was "
            "changed)"
        )
        self.schema = schema
        self.found = found
        self.supported = supported
