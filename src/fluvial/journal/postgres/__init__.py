"""The PostgreSQL journal: events and snapshots in one schema of a database that any number
of fluvial processes share (docs/postgres.md)."""

from fluvial.journal.postgres._errors import PostgresSchemaTooNew as PostgresSchemaTooNew
from fluvial.journal.postgres._errors import PostgresUnavailable as PostgresUnavailable
from fluvial.journal.postgres._journal import PostgresJournal as PostgresJournal
from fluvial.journal.postgres._journal import open_postgres_journal as open_postgres_journal

__all__ = [
    "PostgresJournal",
    "PostgresSchemaTooNew",
    "PostgresUnavailable",
    "open_postgres_journal",
]
