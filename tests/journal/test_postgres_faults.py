"""The PostgreSQL journal when the server goes away (its connections cut by a TCP proxy on
loopback; the real cluster is shared, never restarted): calls retry with backoff, nothing
acknowledged is lost, nothing is stored twice, an append whose commit reply was lost is
answered by reading it back, and PostgresUnavailable comes once the server stays away for
longer than `retry_for`."""

from __future__ import annotations

import pytest
import trio
from postgres_proxy import open_postgres_proxy

from fluvial.core.ids import PersistenceId, SliceRange
from fluvial.core.records import EventRecord
from fluvial.journal.postgres import PostgresUnavailable, open_postgres_journal
from fluvial.testing.journal_contract import entity_ids, events, read_all
from postgres_server import postgres_schema

__all__ = ["postgres_schema"]  # the fixture, imported for pytest

TIMEOUT = 20.0
(PID,) = entity_ids("Pg", SliceRange.all(), 1)


async def test_a_read_waits_out_a_short_outage_and_answers(postgres_schema: str) -> None:
    async with (
        open_postgres_proxy() as proxy,
        open_postgres_journal(proxy.dsn, schema=postgres_schema, retry_for=10) as journal,
    ):
        await journal.append(events(PID, 1, 1))
        proxy.refusing = True
        proxy.cut()
        answers: list[int] = []

        async def read() -> None:
            answers.append(await journal.highest_seq_nr(str(PID)))

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.sleep(0.3)
                assert answers == []  # still trying
                proxy.refusing = False
        assert answers == [1]


async def test_appends_through_cut_connections_are_all_stored_once(postgres_schema: str) -> None:
    """Many entities append while every connection is cut, ten times: each append is
    answered with what is stored, exactly once, whether its commit's reply arrived or not."""
    pids = entity_ids("Pg", SliceRange.all(), 100)
    returned: dict[PersistenceId, list[EventRecord]] = {pid: [] for pid in pids}
    # How many connections were cut, and how many cuts found one: each cut closes every
    # connection there is, so each after the first found one the pool made again. (Asking for
    # a connection after the last cut raced: that cut may leave no append in flight.)
    cut = hits = 0
    async with (
        open_postgres_proxy() as proxy,
        open_postgres_journal(proxy.dsn, schema=postgres_schema, retry_for=10) as journal,
    ):
        cutting = True

        async def appender(pid: PersistenceId) -> None:
            seq_nr = 1
            while cutting:
                returned[pid] += await journal.append(events(pid, seq_nr, 1))
                seq_nr += 1

        with trio.fail_after(TIMEOUT * 2):
            async with trio.open_nursery() as nursery:
                for pid in pids:
                    nursery.start_soon(appender, pid)
                for _ in range(10):
                    await trio.sleep(0.1)
                    cut_now = proxy.cut()
                    cut += cut_now
                    hits += cut_now > 0
                cutting = False
        assert hits >= 3  # cut, and the pool reconnected, again and again
        assert cut <= proxy.connections  # each connection cut once: the cuts took
        for pid in pids:
            seq_nrs = [r.seq_nr for r in returned[pid]]
            assert seq_nrs == list(range(1, len(seq_nrs) + 1))
            assert len(seq_nrs) > 1
            assert await read_all(journal, pid) == returned[pid]


async def test_an_append_whose_commit_reply_was_lost_is_answered_by_reading_it_back(
    postgres_schema: str,
) -> None:
    async with (
        open_postgres_proxy() as proxy,
        open_postgres_journal(proxy.dsn, schema=postgres_schema, pool_size=1) as journal,
    ):
        stored = list(await journal.append(events(PID, 1, 1)))
        proxy.cut_after_next_request()  # the append's statement reaches the server, no reply
        with trio.fail_after(TIMEOUT):
            stored += await journal.append(events(PID, 2, 2))
        assert proxy.connections == 2  # its connection was cut and a new one read it back
        assert [r.seq_nr for r in stored] == [1, 2, 3]
        assert await read_all(journal, PID) == stored  # once, with the timestamps it was told


async def test_a_server_away_longer_than_retry_for_raises_postgres_unavailable(
    postgres_schema: str,
) -> None:
    async with (
        open_postgres_proxy() as proxy,
        open_postgres_journal(proxy.dsn, schema=postgres_schema, retry_for=0.5) as journal,
    ):
        stored = list(await journal.append(events(PID, 1, 1)))
        proxy.refusing = True
        proxy.cut()
        started = trio.current_time()
        with trio.fail_after(TIMEOUT), pytest.raises(PostgresUnavailable) as unavailable:
            await journal.append(events(PID, 2, 1))
        assert 0.4 <= trio.current_time() - started < TIMEOUT / 2
        assert "retry_for" in "".join(getattr(unavailable.value, "__notes__", []))
        with pytest.raises(PostgresUnavailable):
            await journal.highest_seq_nr(str(PID))
        proxy.refusing = False
        assert await read_all(journal, PID) == stored  # the failed append stored nothing
        stored += await journal.append(events(PID, 2, 1))
        assert [r.seq_nr for r in await read_all(journal, PID)] == [1, 2]
