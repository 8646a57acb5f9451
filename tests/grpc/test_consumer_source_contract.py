"""The Source contract, run against the gRPC consumer's source: a producer on loopback serving
a SQLite journal's entity types as stream ids of the same names, events as stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Both before their import: the journal contract's package is imported here first (its record
# helpers), before the journal tests register it.
pytest.register_assert_rewrite(
    "fluvial.testing.source_contract", "fluvial.testing.journal_contract"
)

from fluvial.core.serialization import SerializerRegistry  # noqa: E402
from fluvial.grpc import (  # noqa: E402
    EventProducerSource,
    ProducerSettings,
    ProducerStreamSettings,
    open_grpc_consumer,
    serve_producer,
)
from fluvial.journal.sqlite import open_sqlite_journal  # noqa: E402
from fluvial.nursery_errors import open_service_nursery  # noqa: E402
from fluvial.projection._source_settings import SourceSettings  # noqa: E402
from fluvial.testing.journal_contract._records import ENTITY_TYPE, OTHER_ENTITY_TYPE  # noqa: E402
from fluvial.testing.source_contract import SourceContract, SourceUnderTest  # noqa: E402

# Small pages on the producer, so that catching up takes several; no backtracking, as the
# contract asks of what it counts.
SETTINGS = ProducerSettings(
    stream=ProducerStreamSettings(source=SourceSettings(page_size=3, backtracking_interval=None)),
    heartbeat_interval=0.2,
)


class TestGrpcConsumerSource(SourceContract):
    @pytest.fixture
    async def source_under_test(self, tmp_path: Path) -> AsyncIterator[SourceUnderTest]:
        sources: list[EventProducerSource[Any, Any]] = [
            EventProducerSource(
                stream_id=entity_type, entity_type=entity_type, serializers=SerializerRegistry()
            )
            for entity_type in (ENTITY_TYPE, OTHER_ENTITY_TYPE)
        ]
        async with (
            open_sqlite_journal(tmp_path / "producer.db") as journal,
            open_service_nursery() as nursery,
        ):
            port = await nursery.start(
                lambda task_status: serve_producer(
                    journal,
                    sources,
                    serializers=SerializerRegistry(),
                    settings=SETTINGS,
                    task_status=task_status,
                )
            )
            async with open_grpc_consumer("127.0.0.1", port) as consumer:
                yield SourceUnderTest(consumer, journal.append)
            nursery.cancel_scope.cancel()
