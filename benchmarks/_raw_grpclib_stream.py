"""The raw baseline of benchmarks/bench_replication.py: grpclib under plain asyncio, no fluvial.

Two roles, each its own process (bench_replication.py starts them):

- `server MESSAGES [--tls-dir D]`: serves one bidirectional method that, once the client's
  first message arrives, sends every message of the file MESSAGES (4-byte big-endian length,
  then the bytes: the encoded `StreamEventsResponse`s a fluvial producer would send) and ends
  the call OK. Prints `{"port": N}`, stops when standard input closes.
- `client PORT [--tls-dir D]`: opens the call, sends one message, reads replies until the
  call ends; prints `{"seconds": s, "cpu": s, "messages": m, "bytes": b}`, timed from before the
  connection to the last reply, as bench_replication.py times a consumer.

Both sides pass bytes through a codec that does nothing, so what is measured is HTTP/2 framing,
flow control and the socket (and TLS with `--tls-dir`: the files bench_replication.py wrote).
Nothing here imports fluvial: `fluvial.grpc` patches asyncio's loop policy (trio-asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler
from grpclib.encoding.base import CodecBase
from grpclib.server import Server, Stream

METHOD = "/bench.v1.Raw/Stream"
# The HTTP/2 settings fluvial's transport uses (`fluvial.grpc._settings`): the connection
# window as large as HTTP/2 allows, no keep-alive pings during a run.
CONFIG = Configuration(_keepalive_time=None, http2_connection_window_size=2**31 - 1)


class PassThrough(CodecBase):
    """Messages are bytes already: sent and received as they are."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


def read_messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    messages, position = [], 0
    while position < len(data):
        size = int.from_bytes(data[position : position + 4], "big")
        messages.append(data[position + 4 : position + 4 + size])
        position += 4 + size
    return messages


def write_messages(path: Path, messages: list[bytes]) -> None:
    path.write_bytes(b"".join(len(m).to_bytes(4, "big") + m for m in messages))


def _context(tls_dir: Path | None, *, server: bool) -> ssl.SSLContext | None:
    # The same protocol floor and ALPN as `fluvial.grpc._tls`.
    if tls_dir is None:
        return None
    if server:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "server.pem")
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=tls_dir / "ca.pem")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


async def serve(messages: list[bytes], tls_dir: Path | None) -> None:
    async def stream_all(stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        for message in messages:
            await stream.send_message(message)

    class Service:
        def __mapping__(self) -> dict[str, Handler]:
            return {METHOD: Handler(stream_all, Cardinality.STREAM_STREAM, bytes, bytes)}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    server = Server([Service()], codec=PassThrough(), config=CONFIG)
    await server.start(sock=sock, ssl=_context(tls_dir, server=True))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    cpu = time.process_time()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    print(json.dumps({"cpu": time.process_time() - cpu}), flush=True)
    server.close()
    await server.wait_closed()


async def read_all(port: int, tls_dir: Path | None) -> dict[str, float]:
    started, cpu = time.perf_counter(), time.process_time()
    channel = Channel(
        "127.0.0.1", port, ssl=_context(tls_dir, server=False), codec=PassThrough(), config=CONFIG
    )
    count = size = 0
    try:
        async with channel.request(METHOD, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
            await stream.send_message(b"start", end=True)
            while (message := await stream.recv_message()) is not None:
                count += 1
                size += len(message)
    finally:
        channel.close()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": elapsed, "cpu": cpu, "messages": count, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("target", help="server: the messages file; client: the port")
    parser.add_argument("--tls-dir", type=Path)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(serve(read_messages(Path(args.target)), args.tls_dir))
    else:
        print(json.dumps(asyncio.run(read_all(int(args.target), args.tls_dir))), flush=True)


if __name__ == "__main__":
    main()
