"""Backpressure of the producer pipeline: a consumer that does not read makes its stream
wait, with a bounded number of records read from the journal, and it does not slow another
stream on the same journal; once it reads again it gets everything, gapless and in order."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from fluvial.core.envelope_source import EnvelopeSource
from fluvial.grpc import ProducerStreamSettings
from fluvial.grpc._producer_stream import run_producer_stream
from fluvial.journal.api import Journal
from fluvial.journal.memory import MemoryJournal
from fluvial.journal.sqlite._journal import open_sqlite_journal
from fluvial.projection._source_settings import SourceSettings
from fluvial.projection.api import Batch
from producer_fixtures import INTERNAL, SOURCE, Appender, CountingJournal, Received, valid_init

QUERY = EnvelopeSource.QUERY
PAGE, LIVE_BUFFER, BATCH = 100, 50, 20
SETTINGS = ProducerStreamSettings(
    batch_size=BATCH,
    source=SourceSettings(page_size=PAGE, live_buffer=LIVE_BUFFER, backtracking_interval=None),
)


async def start(
    nursery: trio.Nursery, journal: Journal, capacity: int
) -> trio.MemoryReceiveChannel[Batch]:
    send, receive = trio.open_memory_channel[Batch](capacity)
    await nursery.start(
        lambda task_status: run_producer_stream(
            journal,
            SOURCE,
            valid_init(),
            INTERNAL,
            send,
            settings=SETTINGS,
            task_status=task_status,
        )
    )
    return receive


async def test_a_consumer_that_does_not_read_stops_the_query_after_a_bounded_read() -> None:
    journal = MemoryJournal()
    counting = CountingJournal(journal)
    appender = Appender(journal)
    for entity in range(20):  # 2,000 events, 20 times a page
        await appender.append(f"e{entity}", *range(100))
    received = Received()
    async with trio.open_nursery() as nursery:
        receive = await start(nursery, counting, capacity=2)
        await trio.testing.wait_all_tasks_blocked()
        # Blocked: what the query read is at most the channel's batches, one batch being
        # sent, and the page waiting to be taken behind it.
        assert counting.read_by_query <= 2 * BATCH + 2 * PAGE
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        assert counting.read_by_query <= 2 * BATCH + 2 * PAGE  # still: it waits
        await received.collect(receive, 2000, path=QUERY)
        nursery.cancel_scope.cancel()
    assert received.seq_nrs(QUERY) == {f"Account|e{e}": list(range(1, 101)) for e in range(20)}
    assert all(len(records) <= BATCH for records, _ in received.batches)


async def test_live_events_beyond_a_stalled_consumers_buffer_are_dropped_not_kept() -> None:
    journal = MemoryJournal()
    appender = Appender(journal)
    received = Received()
    async with trio.open_nursery() as nursery:
        receive = await start(nursery, journal, capacity=0)
        for entity in range(100):  # committed while nobody reads: 3,000 events
            await appender.append(f"e{entity}", *range(30))
        await trio.testing.wait_all_tasks_blocked()
        await received.collect(receive, 3000, path=QUERY)
        nursery.cancel_scope.cancel()
    # The live path kept its buffer and the few commits in hand when it blocked, not the
    # 3,000 events; the query still brought every one.
    assert received.count(EnvelopeSource.LIVE) <= LIVE_BUFFER + 4 * 30
    assert received.seq_nrs(QUERY) == {f"Account|e{e}": list(range(1, 31)) for e in range(100)}


async def test_a_slow_stream_does_not_slow_another_on_the_same_sqlite_journal(
    tmp_path: Path,
) -> None:
    async with open_sqlite_journal(tmp_path / "two-streams.db") as journal:
        appender = Appender(journal)
        fast = Received()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                stalled = await start(nursery, journal, capacity=0)  # never read
                receive = await start(nursery, journal, capacity=2)
                for round in range(10):
                    for entity in range(10):
                        await appender.append(f"e{entity}", *range(10))
                    await fast.collect(receive, (round + 1) * 100, path=QUERY)
                nursery.cancel_scope.cancel()
        assert fast.seq_nrs(QUERY) == {f"Account|e{e}": list(range(1, 101)) for e in range(10)}
        assert stalled.statistics().current_buffer_used == 0
