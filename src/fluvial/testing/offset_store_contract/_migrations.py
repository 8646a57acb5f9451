"""The contract of read-model migrations: each runs once per store and projection, in order,
all of a call or none, with the version kept (also across a reset)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fluvial.core.errors import UsageError
from fluvial.core.projection_errors import UnknownProjection
from fluvial.testing.offset_store_contract._fixture import (
    ENTITY_TYPE,
    OTHER_PROJECTION,
    PROJECTION,
    Fixture,
    _UserError,
)


def _migrations(fixture: Fixture, count: int) -> list[Callable[[Any], None]]:
    """Migrations v1 .. v`count`, each noting its version when it commits."""
    return [fixture.note(f"v{n}") for n in range(1, count + 1)]


class MigrationContract:
    """`migrate_read_model`."""

    async def test_migrations_run_once_in_order_and_the_version_is_kept(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 2))
        assert await offset_store.notes() == ["v1", "v2"]
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 2))  # a restart
        assert await offset_store.notes() == ["v1", "v2"]
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 3))  # a new one
        assert await offset_store.notes() == ["v1", "v2", "v3"]

    async def test_a_read_model_newer_than_the_migrations_is_refused(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 2))
        with pytest.raises(UsageError):
            await store.migrate_read_model(PROJECTION, _migrations(offset_store, 1))
        assert await offset_store.notes() == ["v1", "v2"]

    async def test_a_failing_migration_undoes_every_migration_of_its_call(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 1))
        error = _UserError("v3 does not fit")

        def failing(txn: Any) -> None:
            offset_store.note("v3 half done")(txn)
            raise error

        with pytest.raises(_UserError) as raised:
            await store.migrate_read_model(PROJECTION, [*_migrations(offset_store, 2), failing])
        assert raised.value is error
        assert await offset_store.notes() == ["v1"]
        # The version stayed at 1: v2 runs again with the fixed v3.
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 3))
        assert await offset_store.notes() == ["v1", "v2", "v3"]

    async def test_each_projection_has_a_version_of_its_own(self, offset_store: Fixture) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.register(OTHER_PROJECTION, ENTITY_TYPE)
        await store.migrate_read_model(PROJECTION, [offset_store.note("mine")])
        await store.migrate_read_model(OTHER_PROJECTION, [offset_store.note("other's")])
        assert await offset_store.notes() == ["mine", "other's"]

    async def test_a_reset_keeps_the_read_models_version(self, offset_store: Fixture) -> None:
        store = offset_store.store
        await store.register(PROJECTION, ENTITY_TYPE)
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 1))
        await store.reset(PROJECTION, clear_read_model=offset_store.clear_notes)
        await store.migrate_read_model(PROJECTION, _migrations(offset_store, 2))
        assert await offset_store.notes() == ["v2"]

    async def test_migrations_of_an_unknown_projection_are_refused(
        self, offset_store: Fixture
    ) -> None:
        with pytest.raises(UnknownProjection):
            await offset_store.store.migrate_read_model(PROJECTION, _migrations(offset_store, 1))
        assert await offset_store.notes() == []
