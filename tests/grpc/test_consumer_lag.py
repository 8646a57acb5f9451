"""`projection_lag` of a consumer's projection over gRPC: its offsets from the consumer's own
SQLite file, the latest event timestamp from the producer (`LatestEventTimestamp`), both in
the producer journal's timestamps."""

from __future__ import annotations

import trio
from consumer_helpers import (
    CONSUMER_REGISTRY,
    World,
    credits_projection,
    fold,
    wait_for_model,
)

from fluvial import InstanceLag, SliceRange, projection_lag, serve_projection, slice_ranges
from fluvial.grpc import ConsumerSettings, open_grpc_consumer
from producer_fixtures import SOURCE

TIMEOUT = 20.0
PROJECTION = credits_projection("lagging")


async def test_a_consumers_lag_is_its_stored_offset_behind_the_producers_latest_event(
    world: World,
) -> None:
    store = world.consumer_journal.offset_store()
    await store.register(PROJECTION.name, SOURCE.stream_id)
    settings = ConsumerSettings(call_timeout=5.0)
    async with open_grpc_consumer("127.0.0.1", world.producer.port, settings=settings) as consumer:

        async def lag() -> InstanceLag:
            (only,) = await projection_lag(consumer, PROJECTION, offsets=store)
            return only

        # A producer without events: nothing to be behind.
        assert await lag() == InstanceLag(
            slices=SliceRange.all(), offset_timestamp=None, latest_timestamp=None
        )
        assert (await lag()).lag_seconds == 0.0

        stored = world.stored
        for entity in ("a", "b", "c", "d"):
            stored += await world.appender.append(entity, 1, 2)
        # Events, and no offset yet: the producer's latest, and no measure of time.
        assert await lag() == InstanceLag(
            slices=SliceRange.all(),
            offset_timestamp=None,
            latest_timestamp=stored[-1].timestamp,
        )
        assert (await lag()).lag_seconds is None

        async with trio.open_nursery() as running:
            await running.start(
                lambda task_status: serve_projection(
                    consumer,
                    CONSUMER_REGISTRY,
                    PROJECTION,
                    offsets=store,
                    task_status=task_status,
                )
            )
            await wait_for_model(world.consumer_file, fold(stored))
            # The query's batches store the offset as the handler's writes commit.
            database = world.consumer_journal.database
            with trio.fail_after(TIMEOUT):
                while True:
                    seen = database.commit_count()
                    if (await lag()).offset_timestamp == stored[-1].timestamp:
                        break
                    await database.wait_for_commit(seen)
            running.cancel_scope.cancel()  # stopped: what comes next stays unhandled
        assert (await lag()).lag_seconds == 0.0

        later = await world.appender.append("a", 3)
        behind = await lag()
        assert (behind.offset_timestamp, behind.latest_timestamp) == (
            stored[-1].timestamp,
            later[-1].timestamp,
        )
        assert behind.lag_seconds == (later[-1].timestamp - stored[-1].timestamp) / 1e6 > 0
        # Per instance: only the range of the new event is behind.
        by_range = await projection_lag(consumer, PROJECTION, slice_ranges(2), offsets=store)
        late = [r for r in by_range if later[-1].slice in r.slices]
        assert [r.lag_seconds for r in late] == [behind.lag_seconds]
