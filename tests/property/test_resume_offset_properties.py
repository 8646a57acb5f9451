"""Resuming a slice range from its slices' stored offsets misses no event."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fluvial.core.offset_tracker import OffsetTracker
from fluvial.core.offsets import TimestampOffset
from fluvial.core.records import EventRecord
from property.projection_machines import PIDS, SPLITS, slice_of


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.dictionaries(
        st.integers(0, 3),
        st.builds(
            TimestampOffset,
            st.integers(0, 6),
            st.dictionaries(st.sampled_from(PIDS), st.integers(1, 3), max_size=2),
        ),
    ),
    events=st.lists(
        st.builds(
            lambda pid, seq_nr, timestamp: EventRecord(
                pid, seq_nr, "T", slice_of(pid), None, timestamp=timestamp
            ),
            st.sampled_from(PIDS),
            st.integers(1, 3),
            st.integers(0, 8),
        )
    ),
)
def test_the_resume_offset_misses_no_event_a_slice_has_not_passed(
    offsets: dict[int, TimestampOffset], events: list[EventRecord]
) -> None:
    """Resuming a range from its slices' offsets, the query sees every event that its own
    slice's offset has not passed (and then some, which are duplicates)."""
    # What a slice's offset has seen is of its own entities.
    offsets = {
        s: TimestampOffset(o.timestamp, {p: n for p, n in o.seen.items() if slice_of(p) == s})
        for s, o in offsets.items()
    }
    resume = OffsetTracker(SPLITS[1][0], slice_offsets=offsets).resume_offset()
    for event in events:
        offset = offsets.get(event.slice)
        if offset is None or offset.is_behind(event):
            assert resume.is_behind(event), (resume, event)
