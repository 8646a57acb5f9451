"""The producer's stream core under any sequence of consumer messages, against a tiny model.

The machine sends good and bad Inits, filter updates, replay requests (colliding correlation
ids, repeated entities, bad seq nrs, other entity types and slices), ends, garbage, and finishes
running replays, and checks after every step that the core answered what the model expects:
nothing is accepted before an Init, every refusal names the reason the model gives, a bad
filter update leaves the filter, and replays never exceed the bound, never run one entity
twice, start in the order they queued, and a request that would wait beyond the queue's
bound is refused alone.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from fluvial.core.errors import UsageError
from fluvial.core.ids import SliceRange, slice_for
from fluvial.core.offsets import TimestampOffset
from fluvial.core.replication_stream import AppendedCriteria, ProducerStream
from fluvial.core.replication_stream_errors import RefusalReason
from fluvial.core.replication_stream_messages import (
    ConsumerDone,
    EndStream,
    FilterChanged,
    FilterRefused,
    FilterUpdate,
    Init,
    Malformed,
    ReplayRequest,
    ReplaysChanged,
    SliceOffset,
    ValidInit,
)

LOW = SliceRange(0, 511)
BOUND = 2  # low, so that queues form often (the bound is a parameter of the core)
QUEUE_BOUND = 1  # with BOUND, below the entities the machine asks for: refusals are common


class BadCriteria(UsageError):
    pass


class Strict(AppendedCriteria[str]):
    def apply(self, filter: tuple[str, ...], criteria: str) -> tuple[str, ...]:
        if criteria == "bad":
            raise BadCriteria("bad criterion")
        return super().apply(filter, criteria)


OWN = [p for p in (f"Cart|{i}" for i in range(5000)) if slice_for(p) in LOW][:5]
ELSEWHERE = next(p for p in (f"Cart|{i}" for i in range(100)) if slice_for(p) not in LOW)
PIDS = [*OWN, ELSEWHERE, "Order|1", "Cart"]
R = RefusalReason


def expected_init_refusal(init: Init[str]) -> RefusalReason | None:
    if init.stream_id != "carts":
        return R.UNKNOWN_STREAM_ID
    if not (0 <= init.slice_min <= init.slice_max <= 1023):
        return R.SLICE_RANGE
    for given in init.offsets:
        if not init.slice_min <= given.slice <= init.slice_max:
            return R.OFFSET_OUTSIDE_RANGE
    if init.criteria == "bad":
        return R.INVALID_CRITERIA
    return None


class ProducerStreamMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.open()

    def open(self) -> None:
        self.stream: ProducerStream[tuple[str, ...], str] = ProducerStream(
            {"carts": "Cart"}, Strict(), max_replays=BOUND, max_queued_replays=QUEUE_BOUND
        )
        self.state = "awaiting"
        self.slices: SliceRange | None = None
        self.filter: tuple[str, ...] = ()
        self.running: list[tuple[int, str]] = []  # (correlation id, pid), in start order
        self.queued: list[tuple[int, str]] = []

    def expect_end(self, answer: object, reason: RefusalReason) -> None:
        assert isinstance(answer, EndStream), (answer, reason)
        assert answer.error is not None and answer.error.reason is reason, (answer, reason)
        assert str(answer.error)  # a message, for the consumer's operator
        self.state = "ended"

    def out_of_place(self, answer: object) -> None:
        self.expect_end(answer, R.MISSING_INIT if self.state == "awaiting" else R.AFTER_END)

    def init(
        self,
        stream_id: str,
        slice_min: int,
        slice_max: int,
        offset_slices: list[int],
        criteria: str,
    ) -> None:
        message = Init(
            stream_id=stream_id,
            slice_min=slice_min,
            slice_max=slice_max,
            offsets=[SliceOffset(slice=s, offset=TimestampOffset(7)) for s in offset_slices],
            criteria=criteria,
        )
        answer = self.stream.receive(message)
        if self.state == "streaming":
            return self.expect_end(answer, R.REPEATED_INIT)
        if self.state == "ended":
            return self.expect_end(answer, R.AFTER_END)
        reason = expected_init_refusal(message)
        if reason is not None:
            return self.expect_end(answer, reason)
        assert isinstance(answer, ValidInit), answer
        assert answer.slices == SliceRange(slice_min, slice_max)
        assert answer.filter == (criteria,)
        self.state, self.slices, self.filter = "streaming", answer.slices, (criteria,)

    def update_filter(self, correlation_id: int, criteria: str) -> None:
        answer = self.stream.receive(FilterUpdate(correlation_id=correlation_id, criteria=criteria))
        if self.state != "streaming":
            return self.out_of_place(answer)
        if correlation_id < 1:
            return self.expect_end(answer, R.CORRELATION_ID)
        if criteria == "bad":
            assert isinstance(answer, FilterRefused), answer
            assert answer.correlation_id == correlation_id
            assert answer.error.reason is R.INVALID_CRITERIA
            return
        self.filter = (*self.filter, criteria)
        assert answer == FilterChanged(correlation_id=correlation_id, filter=self.filter)

    def request_replay(self, correlation_id: int, pid: str, first: int, last: int) -> None:
        answer = self.stream.receive(
            ReplayRequest(
                correlation_id=correlation_id, persistence_id=pid, from_seq_nr=first, to_seq_nr=last
            )
        )
        if self.state != "streaming":
            return self.out_of_place(answer)
        assert self.slices is not None
        if correlation_id < 1:
            return self.expect_end(answer, R.CORRELATION_ID)
        if any(c == correlation_id for c, _ in self.running + self.queued):
            return self.expect_end(answer, R.CORRELATION_ID)
        if pid == "Cart":
            return self.expect_end(answer, R.PERSISTENCE_ID)
        if not pid.startswith("Cart|"):
            return self.expect_end(answer, R.OTHER_ENTITY_TYPE)
        if slice_for(pid) not in self.slices:
            return self.expect_end(answer, R.OUTSIDE_SLICE_RANGE)
        if first < 1:
            return self.expect_end(answer, R.SEQ_NR)
        if last < first:
            return self.expect_end(answer, R.SEQ_NR_RANGE)
        assert isinstance(answer, ReplaysChanged), answer
        entry = (correlation_id, pid)
        started = [(r.correlation_id, r.persistence_id) for r in answer.start]
        superseded = [(r.correlation_id, r.persistence_id) for r in answer.superseded]
        cancelled = [(r.correlation_id, r.persistence_id) for r in answer.cancel]
        refused = [(r.correlation_id, r.persistence_id) for r in answer.refused]
        done = (started, cancelled, superseded, refused)
        if (old := next((e for e in self.queued if e[1] == pid), None)) is not None:
            self.queued[self.queued.index(old)] = entry
            assert done == ([], [], [old], [])
        elif (old := next((e for e in self.running if e[1] == pid), None)) is not None:
            self.running.remove(old)
            self.running.append(entry)
            assert done == ([entry], [old], [old], [])
        elif len(self.running) < BOUND:
            self.running.append(entry)
            assert done == ([entry], [], [], [])
        elif len(self.queued) >= QUEUE_BOUND:
            assert done == ([], [], [], [entry])  # refused alone: nothing else changes
        else:
            self.queued.append(entry)
            assert done == ([], [], [], [])

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One consumer message (or a finished replay), mostly of the kinds that keep a
        stream open, since an ending message ends the rest of a sequence; after the end,
        mostly a new stream."""
        if self.state == "ended" and data.draw(st.integers(0, 4)):
            return self.open()
        if self.state == "awaiting" and data.draw(st.integers(0, 4)):
            slices = data.draw(st.sampled_from([LOW, SliceRange.all()]))
            return self.init("carts", slices.min, slices.max, [], "a")
        kinds = ["replay"] * 8 + ["finish"] * 3 + ["filter"] * 2
        kinds += ["any init", "any filter", "any replay", "done", "garbage"]
        kind = data.draw(st.sampled_from(kinds))
        if kind == "replay":
            correlation_id = data.draw(st.integers(1, 30))
            pid, first = data.draw(st.sampled_from(OWN)), data.draw(st.integers(1, 3))
            self.request_replay(correlation_id, pid, first, 10)
        elif kind == "finish" and self.running:
            self.finish_replay(data.draw(st.sampled_from(self.running)))
        elif kind == "filter":
            self.update_filter(data.draw(st.integers(1, 3)), "b")
        elif kind == "any init":
            self.init(
                data.draw(st.sampled_from(["carts", "nope"])),
                data.draw(st.sampled_from([-1, 0, 3, 511, 1023])),
                data.draw(st.sampled_from([0, 3, 511, 1023, 1024])),
                data.draw(st.lists(st.sampled_from([0, 3, 600]), max_size=2, unique=True)),
                data.draw(st.sampled_from(["a", "bad"])),
            )
        elif kind == "any filter":
            self.update_filter(
                data.draw(st.integers(-1, 3)), data.draw(st.sampled_from(["b", "bad"]))
            )
        elif kind == "any replay":
            self.request_replay(
                data.draw(st.integers(0, 6)),
                data.draw(st.sampled_from(PIDS)),
                data.draw(st.sampled_from([0, 1, 4])),
                data.draw(st.sampled_from([3, 10])),
            )
        elif kind == "done":
            self.consumer_done()
        elif kind == "garbage":
            self.garbage(data.draw(st.text(max_size=5)))

    def finish_replay(self, entry: tuple[int, str]) -> None:
        answer = self.stream.replay_finished(entry[0])
        if self.state == "ended":
            assert answer == ReplaysChanged()
            self.running.clear()
            self.queued.clear()
            return
        self.running.remove(entry)
        expected = self.queued[: BOUND - len(self.running)]
        del self.queued[: len(expected)]
        self.running.extend(expected)
        assert [(r.correlation_id, r.persistence_id) for r in answer.start] == expected

    def consumer_done(self) -> None:
        answer = self.stream.receive(ConsumerDone())
        if self.state != "streaming":
            return self.out_of_place(answer)
        assert answer == EndStream()
        self.state = "ended"

    def garbage(self, what: str) -> None:
        self.expect_end(self.stream.receive(Malformed(what=what)), R.MALFORMED)

    @invariant()
    def the_state_and_the_replays_are_the_models(self) -> None:
        states: dict[str, Any] = {"awaiting": "AWAITING_INIT", "streaming": "STREAMING"}
        assert self.stream.state.name == states.get(self.state, "ENDED")
        if self.state == "ended":
            return
        running = [(r.correlation_id, r.persistence_id) for r in self.stream.replays.running]
        queued = [(r.correlation_id, r.persistence_id) for r in self.stream.replays.queued]
        assert sorted(running) == sorted(self.running)
        assert queued == self.queued
        assert len(running) <= BOUND
        assert len(queued) <= QUEUE_BOUND
        pids = [pid for _, pid in running + queued]
        assert len(pids) == len(set(pids))  # an entity is replayed once at a time
        assert self.stream.filter == (self.filter if self.state == "streaming" else None)


TestProducerStream = ProducerStreamMachine.TestCase
