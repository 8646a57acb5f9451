"""The producer's stream core, message by message: what it accepts, what it refuses, and why.

Each refusal is checked for its status and for a message that names what was wrong, since a
consumer's operator reads only that."""

from __future__ import annotations

import pytest

from fluvial.core.errors import DataError, FluvialError, UsageError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.replication_stream import (
    ENDED,
    STREAMING,
    AppendedCriteria,
    ProducerStream,
)
from fluvial.core.replication_stream_errors import (
    LocalStreamError,
    RefusalReason,
    RemoteStreamError,
    StreamStatus,
)
from fluvial.core.replication_stream_messages import (
    ConsumerDone,
    EndStream,
    FilterChanged,
    FilterRefused,
    FilterUpdate,
    Init,
    Malformed,
    Replay,
    ReplayRequest,
    ReplaysChanged,
    SliceOffset,
    ValidInit,
)
from fluvial.core.replication_stream_replays import ReplayQueue

STREAMS = {"carts": "Cart", "orders": "Order"}


class BadCriteria(UsageError):
    pass


class Strict(AppendedCriteria[str]):
    """Refuses criteria spelled "bad", as a real filter refuses a bad regex."""

    def apply(self, filter: tuple[str, ...], criteria: str) -> tuple[str, ...]:
        if criteria == "bad":
            raise BadCriteria("entity-id regex '(' does not compile")
        return super().apply(filter, criteria)


def stream() -> ProducerStream[tuple[str, ...], str]:
    return ProducerStream(STREAMS, Strict())


def init(**changes: object) -> Init[str]:
    fields: dict[str, object] = {
        "stream_id": "carts",
        "slice_min": 0,
        "slice_max": 511,
        "criteria": "tags:a",
    }
    fields.update(changes)
    return Init(**fields)  # type: ignore[arg-type]


def pid_in(slices: SliceRange, entity_type: str = "Cart") -> str:
    return next(
        f"{entity_type}|{i}" for i in range(10_000) if slice_for(f"{entity_type}|{i}") in slices
    )


LOW = SliceRange(0, 511)
HIGH = SliceRange(512, 1023)


def streaming() -> ProducerStream[tuple[str, ...], str]:
    s = stream()
    assert isinstance(s.receive(init()), ValidInit)
    return s


def refusal(answer: object) -> RemoteStreamError:
    assert isinstance(answer, EndStream), answer
    assert answer.error is not None
    return answer.error


def test_a_valid_init_starts_the_stream_with_its_entity_type_slices_offsets_and_filter() -> None:
    s = stream()
    pid = pid_in(SliceRange(3, 3))
    offset = TimestampOffset(1000, {pid: 4})
    answer = s.receive(
        init(slice_min=0, slice_max=7, offsets=[SliceOffset(slice=3, offset=offset)])
    )
    assert answer == ValidInit(
        stream_id="carts",
        entity_type="Cart",
        slices=SliceRange(0, 7),
        offsets={3: offset},
        filter=("tags:a",),
        with_payloads=True,
    )
    assert s.state is STREAMING
    # Slices without an offset start from the beginning, so the query does.
    assert answer.resume_offset() == TimestampOffset.start()


def test_the_resume_offset_is_the_earliest_slice_offset_with_what_was_seen_at_it() -> None:
    a, b = pid_in(SliceRange(0, 0)), pid_in(SliceRange(1, 1))
    answer = stream().receive(
        init(
            slice_min=0,
            slice_max=1,
            offsets=[
                SliceOffset(slice=0, offset=TimestampOffset(50, {a: 2})),
                SliceOffset(slice=1, offset=TimestampOffset(70, {b: 1})),
            ],
        )
    )
    assert isinstance(answer, ValidInit)
    assert answer.resume_offset() == TimestampOffset(50, {a: 2})


@pytest.mark.parametrize(
    ("message", "reason", "named"),
    [
        (FilterUpdate(correlation_id=1, criteria="x"), RefusalReason.MISSING_INIT, "FilterUpdate"),
        (
            ReplayRequest(correlation_id=1, persistence_id="Cart|a", from_seq_nr=1, to_seq_nr=2),
            RefusalReason.MISSING_INIT,
            "ReplayRequest",
        ),
        (ConsumerDone(), RefusalReason.MISSING_INIT, "ConsumerDone"),
        (init(stream_id="nope"), RefusalReason.UNKNOWN_STREAM_ID, "'nope'"),
        (init(slice_min=0, slice_max=1024), RefusalReason.SLICE_RANGE, "0..1024"),
        (init(slice_min=-1, slice_max=3), RefusalReason.SLICE_RANGE, "-1..3"),
        (init(slice_min=9, slice_max=8), RefusalReason.SLICE_RANGE, "9..8"),
        (
            init(offsets=[SliceOffset(slice=600, offset=TimestampOffset(1))]),
            RefusalReason.OFFSET_OUTSIDE_RANGE,
            "slice 600",
        ),
        (
            init(
                offsets=[
                    SliceOffset(slice=5, offset=TimestampOffset(1)),
                    SliceOffset(slice=5, offset=TimestampOffset(2)),
                ]
            ),
            RefusalReason.REPEATED_OFFSET,
            "slice 5",
        ),
        (
            init(offsets=[SliceOffset(slice=5, offset=TimestampOffset(-3))]),
            RefusalReason.TIMESTAMP,
            "-3",
        ),
        (
            init(
                slice_min=0,
                slice_max=1023,
                offsets=[
                    SliceOffset(slice=slice_for("Cart|a"), offset=TimestampOffset(5, {"Cart|a": 0}))
                ],
            ),
            RefusalReason.SEQ_NR,
            "seq nr 0 of Cart|a",
        ),
        (
            init(
                slice_min=0,
                slice_max=1023,
                offsets=[
                    SliceOffset(
                        slice=(slice_for("Cart|a") + 1) % 1024,
                        offset=TimestampOffset(5, {"Cart|a": 1}),
                    )
                ],
            ),
            RefusalReason.OFFSET_OF_OTHER_SLICE,
            "names Cart|a",
        ),
        (init(criteria="bad"), RefusalReason.INVALID_CRITERIA, "regex '('"),
        (Malformed(what="garbage bytes in field 3"), RefusalReason.MALFORMED, "field 3"),
    ],
)
def test_a_bad_first_message_ends_the_stream_naming_what_was_wrong(
    message: object, reason: RefusalReason, named: str
) -> None:
    s = stream()
    error = refusal(s.receive(message))  # type: ignore[arg-type]
    assert error.reason is reason
    expected = StreamStatus.NOT_FOUND if reason is RefusalReason.UNKNOWN_STREAM_ID else 3
    assert error.status == expected
    assert named in str(error)
    assert s.state is ENDED
    assert s.init is None


@pytest.mark.parametrize(
    ("message", "reason", "named"),
    [
        (init(), RefusalReason.REPEATED_INIT, "second Init"),
        (Malformed(what="truncated"), RefusalReason.MALFORMED, "truncated"),
        (
            ReplayRequest(correlation_id=1, persistence_id="Order|a", from_seq_nr=1, to_seq_nr=2),
            RefusalReason.OTHER_ENTITY_TYPE,
            "'Order|a'",
        ),
        (
            ReplayRequest(correlation_id=1, persistence_id="Cart", from_seq_nr=1, to_seq_nr=2),
            RefusalReason.PERSISTENCE_ID,
            "'Cart'",
        ),
        (
            ReplayRequest(
                correlation_id=1, persistence_id=pid_in(HIGH), from_seq_nr=1, to_seq_nr=2
            ),
            RefusalReason.OUTSIDE_SLICE_RANGE,
            "outside the stream's slices 0-511",
        ),
        (
            ReplayRequest(correlation_id=1, persistence_id=pid_in(LOW), from_seq_nr=0, to_seq_nr=2),
            RefusalReason.SEQ_NR,
            "seq nr 0",
        ),
        (
            ReplayRequest(correlation_id=1, persistence_id=pid_in(LOW), from_seq_nr=5, to_seq_nr=4),
            RefusalReason.SEQ_NR_RANGE,
            "5..4",
        ),
        (
            ReplayRequest(correlation_id=0, persistence_id=pid_in(LOW), from_seq_nr=1, to_seq_nr=4),
            RefusalReason.CORRELATION_ID,
            "correlation id 0 is not within 1..",
        ),
        (FilterUpdate(correlation_id=2**64, criteria="x"), RefusalReason.CORRELATION_ID, "2**64"),
    ],
)
def test_a_bad_message_on_an_open_stream_ends_it_naming_what_was_wrong(
    message: object, reason: RefusalReason, named: str
) -> None:
    s = streaming()
    error = refusal(s.receive(message))  # type: ignore[arg-type]
    assert (error.reason, error.status) == (reason, StreamStatus.INVALID_ARGUMENT)
    assert named.replace("2**64", str(2**64)) in str(error)
    assert s.state is ENDED


def test_every_message_after_the_end_is_refused_and_the_first_end_stays() -> None:
    s = streaming()
    assert s.receive(ConsumerDone()) == EndStream()
    assert EndStream().status is StreamStatus.OK
    for message in (init(), FilterUpdate(correlation_id=1, criteria="x"), ConsumerDone()):
        error = refusal(s.receive(message))
        assert error.reason is RefusalReason.AFTER_END
        assert "after the stream ended (OK)" in str(error)
    assert s.ended == EndStream()


def test_a_filter_update_folds_its_criteria_and_a_bad_one_leaves_stream_and_filter() -> None:
    s = streaming()
    assert s.receive(FilterUpdate(correlation_id=7, criteria="id:b")) == FilterChanged(
        correlation_id=7, filter=("tags:a", "id:b")
    )
    answer = s.receive(FilterUpdate(correlation_id=8, criteria="bad"))
    assert isinstance(answer, FilterRefused)
    assert answer.correlation_id == 8
    assert answer.error.reason is RefusalReason.INVALID_CRITERIA
    assert "regex '('" in str(answer.error) and "stays as it was" in str(answer.error)
    assert (s.state, s.filter) == (STREAMING, ("tags:a", "id:b"))


def replay(correlation_id: int, pid: str, first: int = 1, last: int = 10) -> ReplayRequest:
    return ReplayRequest(
        correlation_id=correlation_id, persistence_id=pid, from_seq_nr=first, to_seq_nr=last
    )


def accepted(request: ReplayRequest) -> Replay:
    return Replay(
        correlation_id=request.correlation_id,
        persistence_id=request.persistence_id,
        from_seq_nr=request.from_seq_nr,
        to_seq_nr=request.to_seq_nr,
    )


def pids(count: int) -> list[str]:
    return [p for p in (f"Cart|{i}" for i in range(1000)) if slice_for(p) in LOW][:count]


def test_three_replays_run_at_once_the_rest_queue_and_start_as_slots_free() -> None:
    s = streaming()
    requests = [replay(i, pid) for i, pid in enumerate(pids(5), start=1)]
    answers = [s.receive(r) for r in requests]
    assert answers[:3] == [ReplaysChanged(start=(accepted(r),)) for r in requests[:3]]
    assert answers[3:] == [ReplaysChanged(), ReplaysChanged()]
    assert s.replays.running == tuple(map(accepted, requests[:3]))
    assert s.replays.queued == tuple(map(accepted, requests[3:]))
    assert s.replay_finished(2) == ReplaysChanged(start=(accepted(requests[3]),))
    assert s.replay_finished(1) == ReplaysChanged(start=(accepted(requests[4]),))
    assert s.replay_finished(3) == ReplaysChanged()


def test_a_new_replay_of_an_entity_replaces_its_running_or_queued_one() -> None:
    s = streaming()
    a, b, c, d = pids(4)
    for i, pid in enumerate((a, b, c, d), start=1):
        s.receive(replay(i, pid))
    # d is queued: its new request takes its place in the queue.
    assert s.receive(replay(10, d, first=4)) == ReplaysChanged(superseded=(accepted(replay(4, d)),))
    assert s.replays.queued == (accepted(replay(10, d, first=4)),)
    # a runs: it is cancelled and the new request runs in its slot.
    old, new = replay(1, a), replay(11, a, first=2)
    assert s.receive(new) == ReplaysChanged(
        start=(accepted(new),), cancel=(accepted(old),), superseded=(accepted(old),)
    )
    assert len(s.replays.running) == 3
    with pytest.raises(LocalStreamError, match="no running replay has correlation id 1"):
        s.replay_finished(1)  # cancelled: the shell reports it no more


def test_a_correlation_id_in_use_by_a_replay_is_refused() -> None:
    s = streaming()
    a, b = pids(2)
    s.receive(replay(1, a))
    error = refusal(s.receive(replay(1, b)))
    assert error.reason is RefusalReason.CORRELATION_ID
    assert "correlation id 1 is in use" in str(error)


def test_replays_finished_after_the_end_start_nothing() -> None:
    s = streaming()
    s.receive(replay(1, pids(1)[0]))
    s.receive(ConsumerDone())
    assert s.replay_finished(1) == ReplaysChanged()


def test_a_replay_queue_needs_a_slot() -> None:
    with pytest.raises(UsageError, match="at least one replay"):
        ReplayQueue(0)


def test_the_errors_split_into_local_and_remote_under_one_root() -> None:
    remote = RemoteStreamError(RefusalReason.SEQ_NR, "x")
    local = LocalStreamError("y")
    assert isinstance(remote, DataError) and isinstance(remote, FluvialError)
    assert isinstance(local, UsageError) and isinstance(local, FluvialError)
    assert local.status is StreamStatus.INTERNAL
    assert remote == RemoteStreamError(RefusalReason.SEQ_NR, "x")
