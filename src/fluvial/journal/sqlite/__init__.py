"""The embedded SQLite backend: the journal, its snapshots and the projections' offsets in one
file (docs/journal.md). The modules here are private; these are the public names."""

from fluvial.journal.sqlite._errors import JournalBusy as JournalBusy
from fluvial.journal.sqlite._errors import JournalCannotOpen as JournalCannotOpen
from fluvial.journal.sqlite._errors import JournalCorrupt as JournalCorrupt
from fluvial.journal.sqlite._errors import JournalFileError as JournalFileError
from fluvial.journal.sqlite._errors import JournalFull as JournalFull
from fluvial.journal.sqlite._errors import JournalReadOnly as JournalReadOnly
from fluvial.journal.sqlite._errors import NotAJournal as NotAJournal
from fluvial.journal.sqlite._journal import SqliteJournal as SqliteJournal
from fluvial.journal.sqlite._journal import open_sqlite_journal as open_sqlite_journal
from fluvial.journal.sqlite._offset_store import SqliteOffsetStore as SqliteOffsetStore
from fluvial.journal.sqlite._schema import SchemaVersionTooNew as SchemaVersionTooNew
from fluvial.journal.sqlite._transaction import WriteTransaction as WriteTransaction

__all__ = [
    "JournalBusy",
    "JournalCannotOpen",
    "JournalCorrupt",
    "JournalFileError",
    "JournalFull",
    "JournalReadOnly",
    "NotAJournal",
    "SchemaVersionTooNew",
    "SqliteJournal",
    "SqliteOffsetStore",
    "WriteTransaction",
    "open_sqlite_journal",
]
