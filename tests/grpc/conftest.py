"""Fixtures of the gRPC tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from consumer_helpers import RestartableProducer, World

from fluvial.journal.sqlite import open_sqlite_journal
from producer_fixtures import Appender


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    consumer_file = tmp_path / "consumer.db"
    async with (
        open_sqlite_journal(tmp_path / "producer.db") as producer_journal,
        open_sqlite_journal(consumer_file) as consumer_journal,
        trio.open_nursery() as nursery,
    ):
        producer = RestartableProducer(nursery, producer_journal)
        await producer.start()
        yield World(
            producer_journal,
            consumer_journal,
            consumer_file,
            Appender(producer_journal),
            producer,
            nursery,
        )
        nursery.cancel_scope.cancel()
