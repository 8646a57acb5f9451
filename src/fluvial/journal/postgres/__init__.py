"""The PostgreSQL journal: events, snapshots and projection offsets in one schema of a
database that any number of fluvial processes share (docs/postgres.md)."""

from fluvial.journal.postgres._errors import PostgresOutcomeUnknown as PostgresOutcomeUnknown
from fluvial.journal.postgres._errors import PostgresSchemaTooNew as PostgresSchemaTooNew
from fluvial.journal.postgres._errors import PostgresUnavailable as PostgresUnavailable
from fluvial.journal.postgres._journal import PostgresJournal as PostgresJournal
from fluvial.journal.postgres._journal import open_postgres_journal as open_postgres_journal
from fluvial.journal.postgres._offset_store import PostgresOffsetStore as PostgresOffsetStore

__all__ = [
    "PostgresJournal",
    "PostgresOffsetStore",
    "PostgresOutcomeUnknown",
    "PostgresSchemaTooNew",
    "PostgresUnavailable",
    "open_postgres_journal",
]
