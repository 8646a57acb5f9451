"""The contract every projection offset store passes (SQLite, memory, PostgreSQL): the
promises of `fluvial.projection.api.OffsetStore`, and `backlog` and `wait_until_caught_up`.

Use it by subclassing `OffsetStoreContract` in a test module, in a class whose name starts
with ``Test``, and giving that class an ``offset_store`` fixture that yields a
`StoreUnderTest`: an empty store on a `ManualClock`, the journal it reads, and an
exactly-once write that notes a text in a read model, one that clears it, and a read of it::

    pytest.register_assert_rewrite("fluvial.testing.offset_store_contract")
    from fluvial.testing.offset_store_contract import (
        ManualClock, OffsetStoreContract, StoreUnderTest,
    )

    class TestMyStore(OffsetStoreContract):
        @pytest.fixture
        async def offset_store(self) -> AsyncIterator[StoreUnderTest[MyTransaction]]:
            clock = ManualClock()
            async with open_my_journal() as journal:
                yield StoreUnderTest(store=MyStore(journal, clock=clock), journal=journal,
                                     clock=clock, note=..., clear_notes=..., notes=...)

The tests need pytest-trio in ``trio_mode``.

What the contract promises users: a projection is registered with one entity type; `load`
gives back the slice offsets and entities saved (placeholders included), those of the window
before the resume point, whether it holds all, and the generation; every save and commit
compares and sets (a stored entity's seq nr, the generation that each management call
bumps) and a conflict stores nothing and runs no write; a commit's write is stored with its
offsets, and a write that raises stores nothing and comes out as itself; migrations run
once, in order, all or none of a call, the version kept across resets; one live lease per
overlapping slice range, taken over once expired; and the management calls store what
docs/projections.md says, each raising UnknownProjection for a name the store does not know;
and a gRPC consumer's filters, per stream id, folded and kept (`ConsumerFilterStore`).
"""

from __future__ import annotations

from fluvial.testing.offset_store_contract._consumer_filters import ConsumerFilterContract
from fluvial.testing.offset_store_contract._fixture import ManagedOffsetStore as ManagedOffsetStore
from fluvial.testing.offset_store_contract._fixture import ManualClock as ManualClock
from fluvial.testing.offset_store_contract._fixture import StoreUnderTest as StoreUnderTest
from fluvial.testing.offset_store_contract._leases import LeaseContract
from fluvial.testing.offset_store_contract._management import ManagementContract
from fluvial.testing.offset_store_contract._migrations import MigrationContract
from fluvial.testing.offset_store_contract._saves import SaveContract

__all__ = ["ManagedOffsetStore", "ManualClock", "OffsetStoreContract", "StoreUnderTest"]


class OffsetStoreContract(
    SaveContract, MigrationContract, LeaseContract, ManagementContract, ConsumerFilterContract
):
    """The contract tests. Subclass in a ``Test*`` class that defines an ``offset_store``
    fixture."""
