"""A client that knows only our .proto files and events.proto's description of the batch
encoding reads what fluvial sends, and fluvial reads what it sends.

The foreign client is a separate Python process that never imports fluvial: its message
classes are generated from proto/ by grpcio-tools' protoc for the official protobuf runtime,
and it decodes the batch bytes with a generic msgpack decoder (msgspec without types),
following the documented layout field by field, as a Go or Java client would. A grpcio
client of the same generated code consumes a live StreamEvents stream of `serve_producer`
over loopback: catch-up, then an event committed while it listens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import betterproto2
import trio

from fluvial.core.records import EventRecord
from fluvial.core.replication_metadata import ReplicationMetadata, VersionVector
from fluvial.core.serialization import SerializedPayload
from fluvial.grpc import serve_producer
from fluvial.grpc._batch_codec import decode_events, encode_events
from fluvial.grpc._proto.fluvial import v1 as pb
from fluvial.journal.memory import MemoryJournal
from producer_fixtures import INTERNAL, SOURCE, Appender

ROOT = Path(__file__).resolve().parents[2]

# The foreign client: reads a StreamEventsResponse from stdin, prints what it understood, and
# builds a StreamInit and an event batch of its own.
FOREIGN_CLIENT = r"""
import json, sys
import msgspec
from fluvial.v1 import events_pb2, filters_pb2, producer_pb2

response = producer_pb2.StreamEventsResponse.FromString(sys.stdin.buffer.read())
assert response.WhichOneof("kind") == "batch", response.WhichOneof("kind")
batch = response.batch
assert batch.encoding == events_pb2.BATCH_ENCODING_MSGPACK_ROWS_V1
events = []
for row in msgspec.msgpack.decode(batch.events):  # events.proto: an array of rows
    pid, seq_nr, entity_type, slice_, payload, tags, timestamp, write_timestamp, repl = row[:9]
    events.append({
        "persistence_id": pid, "seq_nr": seq_nr, "entity_type": entity_type, "slice": slice_,
        "payload": None if payload is None
            else {"manifest": payload[0], "version": payload[1], "data": payload[2].hex()},
        "tags": sorted(tags), "timestamp": timestamp, "write_timestamp": write_timestamp,
        "replication": None if repl is None else {
            "origin_replica": repl[0], "origin_seq_nr": repl[1],
            "version_vector": {replica: counter for replica, counter in repl[2]}},
    })

init = producer_pb2.StreamEventsRequest(init=producer_pb2.StreamInit(
    stream_id="carts", slice_min=512, slice_max=1023, omit_payloads=True,
    offsets=[producer_pb2.SliceOffset(slice=600, timestamp=1764640000000000,
                                      seen={"Cart|a": 3, "Cart|b": 1})],
    filter=[
        filters_pb2.FilterCriterion(exclude_regexes=filters_pb2.Regexes(regexes=[".*"])),
        filters_pb2.FilterCriterion(include_entity_ids=filters_pb2.IncludeEntityIds(
            entity_ids=[filters_pb2.IncludedEntityId(entity_id="a", seq_nr=1)])),
        filters_pb2.FilterCriterion(include_topics=filters_pb2.Topics(topics=["eu/+/#"])),
    ]))
own_rows = [["Cart|z", 2, "Cart", 17, ["cart-item-added", 2, b"\x01\x02"], ["t:eu"], 5, 4, None]]
own = producer_pb2.StreamEventsResponse(batch=events_pb2.EventBatch(
    path=events_pb2.EVENT_PATH_REPLAY, encoding=events_pb2.BATCH_ENCODING_MSGPACK_ROWS_V1,
    events=msgspec.msgpack.encode(own_rows),
    replay=events_pb2.ReplayPart(correlation_id=9, persistence_id="Cart|z", complete=True)))
print(json.dumps({
    "path": events_pb2.EventPath.Name(batch.path),
    "events": events,
    "init": init.SerializeToString().hex(),
    "own_batch": own.SerializeToString().hex(),
}))
"""

RECORDS = [
    EventRecord(
        "Cart|a",
        3,
        "Cart",
        677,
        SerializedPayload("cart-item-added", 1, b"\x81\xa4item\xa5apple"),
        frozenset({"t:eu/fruit", "cart"}),
        1_764_640_000_000_002,
        1_764_640_000_000_001,
    ),
    EventRecord("Cart|b", 1, "Cart", 12, None, timestamp=2**63 - 1, write_timestamp=0),
    EventRecord(
        "Cart|c|B",
        2**40,
        "Cart",
        1023,
        SerializedPayload("m", 7, b""),
        timestamp=5,
        write_timestamp=4,
        replication=ReplicationMetadata("A", 9, VersionVector.of({"A": 9, "B": 2})),
    ),
]


def _generated(tmp_path: Path) -> Path:
    """The foreign client's code, generated from proto/ by the official tooling: messages
    (protobuf runtime) and the grpcio client stub."""
    generated = tmp_path / "generated"
    generated.mkdir()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={ROOT / 'proto'}",
            f"--python_out={generated}",
            f"--grpc_python_out={generated}",
            *sorted(str(p) for p in (ROOT / "proto").rglob("*.proto")),
        ],
        check=True,
        timeout=60,
    )
    # Regular packages, so that this `fluvial` (only the generated code) hides ours.
    for package in (generated / "fluvial", generated / "fluvial" / "v1"):
        (package / "__init__.py").touch()
    return generated


def _foreign_env(generated: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(generated), "PATH": "/usr/bin:/bin"}


def _foreign_client(tmp_path: Path, stdin: bytes) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", FOREIGN_CLIENT],
        input=stdin,
        capture_output=True,
        env=_foreign_env(_generated(tmp_path)),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_a_client_of_the_official_protobuf_runtime_reads_fluvials_batches_and_fluvial_its(
    tmp_path: Path,
) -> None:
    sent = pb.StreamEventsResponse(
        batch=pb.EventBatch(
            path=pb.EventPath.LIVE,
            encoding=pb.BatchEncoding.MSGPACK_ROWS_V1,
            events=encode_events(RECORDS),
        )
    )
    answer = _foreign_client(tmp_path, bytes(sent))

    assert answer["path"] == "EVENT_PATH_LIVE"
    assert answer["events"] == [_as_foreign_client_sees_it(record) for record in RECORDS]

    init = pb.StreamEventsRequest.parse(bytes.fromhex(str(answer["init"])))
    assert init == pb.StreamEventsRequest(
        init=pb.StreamInit(
            stream_id="carts",
            slice_min=512,
            slice_max=1023,
            omit_payloads=True,
            offsets=[
                pb.SliceOffset(
                    slice=600, timestamp=1764640000000000, seen={"Cart|a": 3, "Cart|b": 1}
                )
            ],
            filter=[
                pb.FilterCriterion(exclude_regexes=pb.Regexes([".*"])),
                pb.FilterCriterion(
                    include_entity_ids=pb.IncludeEntityIds([pb.IncludedEntityId("a", 1)])
                ),
                pb.FilterCriterion(include_topics=pb.Topics(["eu/+/#"])),
            ],
        )
    )

    own = pb.StreamEventsResponse.parse(bytes.fromhex(str(answer["own_batch"])))
    case, batch = betterproto2.which_one_of(own, "kind")
    assert case == "batch" and isinstance(batch, pb.EventBatch)
    assert (batch.path, batch.replay) == (pb.EventPath.REPLAY, pb.ReplayPart(9, "Cart|z", True))
    assert decode_events(batch.events, encoding=batch.encoding) == [
        EventRecord(
            "Cart|z",
            2,
            "Cart",
            17,
            SerializedPayload("cart-item-added", 2, b"\x01\x02"),
            frozenset({"t:eu"}),
            5,
            4,
        )
    ]


def _as_foreign_client_sees_it(record: EventRecord) -> dict[str, object]:
    payload, replication = record.payload, record.replication
    return {
        "persistence_id": record.persistence_id,
        "seq_nr": record.seq_nr,
        "entity_type": record.entity_type,
        "slice": record.slice,
        "payload": None
        if payload is None
        else {"manifest": payload.manifest, "version": payload.version, "data": payload.data.hex()},
        "tags": sorted(record.tags),
        "timestamp": record.timestamp,
        "write_timestamp": record.write_timestamp,
        "replication": None
        if replication is None
        else {
            "origin_replica": replication.origin_replica,
            "origin_seq_nr": replication.origin_seq_nr,
            "version_vector": replication.version_vector.as_dict(),
        },
    }


# A grpcio consumer: opens StreamEvents, says "started" once the producer did, then collects
# events (decoding rows and payloads with a generic msgpack decoder) until it has `want`.
GRPCIO_CONSUMER = r"""
import json, sys, threading
import grpc, msgspec
from fluvial.v1 import events_pb2, producer_pb2, producer_pb2_grpc

port, want = int(sys.argv[1]), int(sys.argv[2])
done = threading.Event()

def requests():
    yield producer_pb2.StreamEventsRequest(init=producer_pb2.StreamInit(
        stream_id="accounts", slice_min=0, slice_max=1023))
    done.wait()  # the consumer's side stays open while it listens

with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    call = producer_pb2_grpc.EventProducerServiceStub(channel).StreamEvents(
        requests(), timeout=30)
    kinds, events = [], {}
    for response in call:
        kind = response.WhichOneof("kind")
        kinds.append(kind)
        if kind == "started":
            print("started", flush=True)
        elif kind == "batch":
            assert response.batch.encoding == events_pb2.BATCH_ENCODING_MSGPACK_ROWS_V1
            path = events_pb2.EventPath.Name(response.batch.path)
            for row in msgspec.msgpack.decode(response.batch.events):
                pid, seq_nr, payload = row[0], row[1], row[4]
                events.setdefault(f"{pid} {seq_nr}", {
                    "path": path,
                    "manifest": payload[0],
                    "event": msgspec.msgpack.decode(payload[2]),
                })
        if len(events) >= want:
            break
    done.set()
    call.cancel()
print(json.dumps({"first": kinds[0], "events": events}), flush=True)
"""


async def test_a_grpcio_client_consumes_a_live_stream_of_serve_producer(tmp_path: Path) -> None:
    generated = _generated(tmp_path)
    journal = MemoryJournal()
    appender = Appender(journal)
    await appender.append("a", 1, 2)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_producer(
                journal, [SOURCE], serializers=INTERNAL, task_status=task_status
            )
        )
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", GRPCIO_CONSUMER, str(port), "3"],
            stdout=subprocess.PIPE,
            env=_foreign_env(generated),
        )
        assert process.stdout is not None
        output = b""
        try:
            with trio.fail_after(60):
                while b"started\n" not in output:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"the consumer ended: {output!r}"
                    output += chunk
                await appender.append("b", 3)  # committed while the consumer listens: live
                while chunk := await process.stdout.receive_some():
                    output += chunk
                assert await process.wait() == 0
        finally:
            process.kill()  # a no-op once it exited
        nursery.cancel_scope.cancel()
    answer = json.loads(output.decode().splitlines()[-1])
    assert answer["first"] == "started"
    events = answer["events"]
    live_path = events["Account|b 1"].pop("path")
    assert live_path in {"EVENT_PATH_LIVE", "EVENT_PATH_QUERY"}  # whichever came first
    credited = "public.Credited"
    assert events == {
        "Account|a 1": {"path": "EVENT_PATH_QUERY", "manifest": credited, "event": {"cents": 100}},
        "Account|a 2": {"path": "EVENT_PATH_QUERY", "manifest": credited, "event": {"cents": 200}},
        "Account|b 1": {"manifest": credited, "event": {"cents": 300}},
    }
