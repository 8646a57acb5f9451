"""A gRPC consumer's filters in memory, keyed by stream id, stored as their JSON like the
SQLite store's (so that what a store keeps is exactly what `Filter.from_json` rebuilds)."""

from __future__ import annotations

import trio

from fluvial.core.filters import Filter, FilterCriteriaUpdate, criteria_of


class MemoryConsumerFilters:
    """`ConsumerFilterStore` in memory: nothing survives the process."""

    _consumer_filters: dict[str, bytes]  # the store's constructor makes it

    async def load_consumer_filter(self, stream_id: str) -> Filter | None:
        """The stored filter of `stream_id` (None: none was ever stored)."""
        await trio.lowlevel.checkpoint()
        stored = self._consumer_filters.get(stream_id)
        return None if stored is None else Filter.from_json(stored)

    async def update_consumer_filter(
        self, stream_id: str, update: FilterCriteriaUpdate
    ) -> tuple[Filter, Filter]:
        """Fold `update` into the stored filter of `stream_id`: the filters before and after."""
        criteria = criteria_of(update)
        await trio.lowlevel.checkpoint()
        stored = self._consumer_filters.get(stream_id)
        before = Filter() if stored is None else Filter.from_json(stored)
        after = before.updated(criteria)
        self._consumer_filters[stream_id] = after.to_json()
        return before, after

    async def save_consumer_filter(self, stream_id: str, filter: Filter) -> None:
        """Store `filter` as the filter of `stream_id`."""
        await trio.lowlevel.checkpoint()
        self._consumer_filters[stream_id] = filter.to_json()
