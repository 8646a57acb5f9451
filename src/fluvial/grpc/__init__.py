"""Projections over gRPC: brokerless event replication between services (DESIGN.md section 6).

A producer serves its journal's events under public stream ids (`EventProducerSource`);
docs/producer.md says what a producer offers.
"""

from fluvial.grpc._producer_source import EventProducerSource as EventProducerSource
from fluvial.grpc._producer_stream import ProducerStreamSettings as ProducerStreamSettings

__all__ = [
    "EventProducerSource",
    "ProducerStreamSettings",
]
