"""The committed protobuf code (src/fluvial/grpc/_proto) is what proto/ generates, and the
generated classes carry the protocol the .proto files describe.

No `__init__.py` in this folder: `tests` is on sys.path (pyproject's pythonpath), and a regular
package named `grpc` there would hide grpcio's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import betterproto2

from fluvial.grpc._proto.fluvial import v1 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_generated_code_is_what_the_proto_files_generate() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_stream_message_round_trips_with_its_oneof_case() -> None:
    request = pb.StreamEventsRequest(
        init=pb.StreamInit(
            stream_id="carts",
            slice_min=0,
            slice_max=511,
            offsets=[pb.SliceOffset(slice=3, timestamp=1_700_000_000_000_000, seen={"Cart|a": 2})],
            filter=[
                pb.FilterCriterion(exclude_regexes=pb.Regexes([".*"])),
                pb.FilterCriterion(
                    include_entity_ids=pb.IncludeEntityIds([pb.IncludedEntityId("a", 1)])
                ),
            ],
        )
    )
    parsed = pb.StreamEventsRequest.parse(bytes(request))
    case, init = betterproto2.which_one_of(parsed, "kind")
    assert case == "init"
    assert init == request.init


def test_a_message_of_a_newer_kind_arrives_with_no_case_set() -> None:
    # Field 15 of StreamEventsResponse is kept for a later kind: an old reader sees no case.
    newer = bytes([15 << 3 | 2, 0])  # field 15, length-delimited, empty
    assert betterproto2.which_one_of(pb.StreamEventsResponse.parse(newer), "kind") == ("", None)


def test_the_service_paths_are_the_protocols() -> None:
    handlers = pb.EventProducerServiceBase().__mapping__()
    assert sorted(handlers) == [
        "/fluvial.v1.EventProducerService/EventTimestamp",
        "/fluvial.v1.EventProducerService/LatestEventTimestamp",
        "/fluvial.v1.EventProducerService/LoadEvent",
        "/fluvial.v1.EventProducerService/Replay",
        "/fluvial.v1.EventProducerService/StreamEvents",
    ]
