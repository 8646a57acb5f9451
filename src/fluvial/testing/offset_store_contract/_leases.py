"""The contract of leases: one live owner per projection and overlapping slice range, taken
over once it expires on the store's clock, renewed and given up by its owner only."""

from __future__ import annotations

import pytest

from fluvial.core.ids import SliceRange
from fluvial.core.leases import Lease
from fluvial.core.projection_errors import (
    ProjectionConflict,
    ProjectionLeaseHeld,
    UnknownProjection,
)
from fluvial.testing.offset_store_contract._fixture import (
    ENTITY_TYPE,
    OTHER_ENTITY_TYPE,
    OTHER_PROJECTION,
    PROJECTION,
    Fixture,
)

LOW, HIGH, ALL = SliceRange(0, 511), SliceRange(512, 1023), SliceRange.all()


async def _acquire(
    fixture: Fixture, owner: str, slices: SliceRange = ALL, duration: float = 10.0
) -> Lease:
    return await fixture.store.acquire_lease(
        PROJECTION, ENTITY_TYPE, slices, owner=owner, duration=duration
    )


class LeaseContract:
    """`acquire_lease`, `renew_lease`, `release_lease`."""

    async def test_a_lease_runs_for_its_duration_and_registers_the_projection(
        self, offset_store: Fixture
    ) -> None:
        now = offset_store.clock()
        lease = await _acquire(offset_store, "a", LOW, duration=10.0)
        assert lease == Lease(PROJECTION, LOW, "a", now + 10.0)
        assert await offset_store.store.offsets(PROJECTION) == {}  # known now
        with pytest.raises(UnknownProjection):
            await offset_store.store.acquire_lease(
                PROJECTION, OTHER_ENTITY_TYPE, HIGH, owner="b", duration=10.0
            )

    async def test_a_live_lease_refuses_another_owner_of_an_overlapping_range(
        self, offset_store: Fixture
    ) -> None:
        await _acquire(offset_store, "a", LOW, duration=10.0)
        offset_store.clock.advance(4.0)
        for overlapping in (LOW, ALL, SliceRange(511, 600), SliceRange(100, 100)):
            with pytest.raises(ProjectionLeaseHeld) as held:
                await _acquire(offset_store, "b", overlapping)
            assert (held.value.holder, held.value.holder_slices) == ("a", LOW)
            assert held.value.expires_in == pytest.approx(6.0)
            assert (held.value.projection, held.value.slices) == (PROJECTION, overlapping)
        # Another range, another projection, the same owner again: all fine.
        await _acquire(offset_store, "b", HIGH)
        await offset_store.store.acquire_lease(
            OTHER_PROJECTION, ENTITY_TYPE, LOW, owner="c", duration=10.0
        )
        again = await _acquire(offset_store, "a", LOW, duration=10.0)
        assert again.expires_at == offset_store.clock() + 10.0

    async def test_an_expired_lease_is_taken_over_and_lost_by_its_owner(
        self, offset_store: Fixture
    ) -> None:
        lost = await _acquire(offset_store, "a", LOW, duration=10.0)
        offset_store.clock.advance(10.0)  # expired at its expires_at
        taken = await _acquire(offset_store, "b", ALL, duration=10.0)
        assert taken == Lease(PROJECTION, ALL, "b", offset_store.clock() + 10.0)
        with pytest.raises(ProjectionConflict) as conflict:
            await offset_store.store.renew_lease(lost, 10.0)
        assert (conflict.value.projection, conflict.value.slices) == (PROJECTION, LOW)
        await offset_store.store.release_lease(lost)  # lost: a no-op
        with pytest.raises(ProjectionLeaseHeld) as held:
            await _acquire(offset_store, "c", HIGH)
        assert held.value.holder == "b"

    async def test_a_renewed_lease_runs_from_the_renewal(self, offset_store: Fixture) -> None:
        lease = await _acquire(offset_store, "a", duration=10.0)
        offset_store.clock.advance(8.0)
        renewed = await offset_store.store.renew_lease(lease, 10.0)
        assert renewed == Lease(PROJECTION, ALL, "a", offset_store.clock() + 10.0)
        offset_store.clock.advance(5.0)  # past the first expiry, not the renewed one
        with pytest.raises(ProjectionLeaseHeld) as held:
            await _acquire(offset_store, "b")
        assert held.value.expires_in == pytest.approx(5.0)
        # Renewed late, before another owner took it: still its owner's.
        offset_store.clock.advance(20.0)
        late = await offset_store.store.renew_lease(renewed, 10.0)
        assert late.expires_at == offset_store.clock() + 10.0
        with pytest.raises(ProjectionLeaseHeld):
            await _acquire(offset_store, "b")

    async def test_a_released_lease_can_be_taken_at_once(self, offset_store: Fixture) -> None:
        lease = await _acquire(offset_store, "a")
        await offset_store.store.release_lease(lease)
        await offset_store.store.release_lease(lease)  # again: a no-op
        assert (await _acquire(offset_store, "b")).owner == "b"
        with pytest.raises(ProjectionConflict):
            await offset_store.store.renew_lease(lease, 10.0)
