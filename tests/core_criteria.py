"""The `CriteriaFold` of core criteria into a `Filter` (the wire's, without the wire), for
tests that drive the producer's stream core (`fluvial.core.replication_stream`)."""

from __future__ import annotations

from collections.abc import Sequence

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import FilterCriterion


class CoreCriteria:
    """Folds core criteria as the wire's fold does its messages."""

    def empty(self) -> Filter:
        return Filter()

    def apply(self, filter: Filter, criteria: Sequence[FilterCriterion]) -> Filter:
        return filter.updated(criteria)

    def replays(self, filter: Filter, criteria: Sequence[FilterCriterion]) -> list[tuple[str, int]]:
        return [(r.entity_id, r.from_seq_nr) for r in filter.replays(criteria)]
