"""The consumer's criteria -> protobuf conversion against the producer's reverse, under
hypothesis: every criterion survives the wire (its bytes parsed again) as the same criterion,
or, for an include of entity ids, criteria that fold into the same filter; an update keeps
its order, so a refused criterion's index is the consumer's own."""

from __future__ import annotations

from hypothesis import given, settings

from fluvial.core.filters import Filter
from fluvial.core.filters_criteria import FilterCriterion, IncludeEntityIds
from fluvial.grpc._consumer_filter_wire import wire_criteria, wire_criterion
from fluvial.grpc._producer_wire import core_criteria
from fluvial.grpc._proto.fluvial import v1 as pb
from property.filter_reference import criteria, updates


def _over_the_wire(criterion: FilterCriterion) -> pb.FilterCriterion:
    return pb.FilterCriterion.parse(bytes(wire_criterion(criterion)))


@settings(max_examples=300, deadline=None)
@given(criteria)
def test_a_criterion_comes_back_as_itself(criterion: FilterCriterion) -> None:
    back = core_criteria(0, _over_the_wire(criterion))
    if isinstance(criterion, IncludeEntityIds):
        assert all(isinstance(c, IncludeEntityIds) for c in back)
        assert Filter.of(back) == Filter.of(criterion)
        assert {v for c in back for v in c.values} == criterion.values
    else:
        assert back == [criterion]


@settings(max_examples=200, deadline=None)
@given(updates)
def test_an_update_keeps_its_order_and_its_fold(update: list[FilterCriterion]) -> None:
    wire = [pb.FilterCriterion.parse(bytes(c)) for c in wire_criteria(update)]
    assert len(wire) == len(update)
    for index, (criterion, sent) in enumerate(zip(update, wire, strict=True)):
        assert Filter.of(core_criteria(index, sent)) == Filter.of(criterion)
    folded = [c for index, sent in enumerate(wire) for c in core_criteria(index, sent)]
    assert Filter.of(folded) == Filter.of(update)


def test_the_same_criterion_gives_the_same_bytes() -> None:
    one = IncludeEntityIds({"b", "a", "c"}, seq_nr=3)
    other = IncludeEntityIds(["c", "a", "b"], seq_nr=3)
    assert bytes(wire_criterion(one)) == bytes(wire_criterion(other))
