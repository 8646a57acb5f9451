"""The contract of a consumer's stored filters (`ConsumerFilterStore`): none until one is
stored; updates fold into what is stored, per stream id; a save replaces it; an empty filter
stored is not the same as none."""

from __future__ import annotations

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import (
    ExcludeRegexEntityIds,
    FilterCriterion,
    IncludeEntityIds,
    IncludeTopics,
    RemoveExcludeRegexEntityIds,
)
from fluvial.testing.offset_store_contract._fixture import Fixture

STREAM = "contract-stream"
OTHER_STREAM = "contract-other-stream"


class ConsumerFilterContract:
    """`load_consumer_filter`, `update_consumer_filter`, `save_consumer_filter`."""

    async def test_no_filter_is_stored_until_one_is(self, offset_store: Fixture) -> None:
        assert await offset_store.store.load_consumer_filter(STREAM) is None

    async def test_updates_fold_into_the_stored_filter_per_stream_id(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        first: list[FilterCriterion] = [ExcludeRegexEntityIds({".*"}), IncludeTopics({"eu/#"})]
        before, after = await store.update_consumer_filter(STREAM, first)
        assert (before, after) == (Filter(), Filter.of(first))
        second = IncludeEntityIds({"cart-1"}, seq_nr=1)
        before, after = await store.update_consumer_filter(STREAM, second)
        assert (before, after) == (Filter.of(first), Filter.of([*first, second]))
        assert await store.load_consumer_filter(STREAM) == after
        assert await store.load_consumer_filter(OTHER_STREAM) is None
        # The same update again changes nothing (a filter is the fold of its updates).
        assert await store.update_consumer_filter(STREAM, second) == (after, after)

    async def test_a_save_replaces_and_an_empty_filter_stays_stored(
        self, offset_store: Fixture
    ) -> None:
        store = offset_store.store
        await store.update_consumer_filter(STREAM, ExcludeRegexEntityIds({".*"}))
        await store.save_consumer_filter(STREAM, Filter.of(IncludeTopics({"a/+"})))
        assert await store.load_consumer_filter(STREAM) == Filter.of(IncludeTopics({"a/+"}))
        await store.save_consumer_filter(STREAM, Filter())
        assert await store.load_consumer_filter(STREAM) == Filter()
        _, emptied = await store.update_consumer_filter(
            OTHER_STREAM, [ExcludeRegexEntityIds({"x"}), RemoveExcludeRegexEntityIds({"x"})]
        )
        assert emptied == Filter()
        assert await store.load_consumer_filter(OTHER_STREAM) == Filter()
