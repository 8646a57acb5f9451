"""A TCP proxy on loopback in front of the test PostgreSQL server, run in the test's trio loop,
that cuts the connections through it when told: the server going away without being
restarted (other tests share the real cluster)."""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from postgres_server import DSN


class _Pair:
    """One client connection and its server connection."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.dropping = False  # the server's replies are dropped from now on


class PostgresProxy:
    """Forwards 127.0.0.1:`port` to the server of `DSN`."""

    def __init__(self, server_host: str, server_port: int) -> None:
        self._server = (server_host, server_port)
        self._pairs: set[_Pair] = set()
        self.port = 0
        self.refusing = False  # close new connections at once (the server is down)
        self._cut_after_next_request = False
        self.connections = 0  # accepted and forwarded, for tests to see reconnects

    @property
    def dsn(self) -> str:
        """The DSN of the server through this proxy."""
        parts = urllib.parse.urlsplit(DSN)
        netloc = (
            f"{parts.username}@127.0.0.1:{self.port}"
            if parts.username
            else (f"127.0.0.1:{self.port}")
        )
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> int:
        """Close every connection through the proxy now; how many that were not cut before.
        (A pair cut by the last call may still be closing when a busy loop runs this one
        first: counting it twice would report more cuts than connections.)"""
        fresh = [pair for pair in self._pairs if not pair.scope.cancel_called]
        for pair in fresh:
            pair.scope.cancel()
        return len(fresh)

    def cut_after_next_request(self) -> None:
        """Forward the next thing a client sends, let the server act on it (0.3 s), then cut
        that connection without forwarding the server's reply: the client cannot know
        whether its statement committed."""
        self._cut_after_next_request = True

    async def _handle(self, client: trio.SocketStream) -> None:
        pair = _Pair()
        async with client:
            if self.refusing:
                return
            with pair.scope:
                server = await trio.open_tcp_stream(*self._server)
                async with server:
                    self.connections += 1
                    self._pairs.add(pair)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._requests, client, server, pair)
                            nursery.start_soon(self._replies, server, client, pair)
                    finally:
                        self._pairs.discard(pair)

    async def _requests(
        self, client: trio.SocketStream, server: trio.SocketStream, pair: _Pair
    ) -> None:
        async for data in client:
            cut = self._cut_after_next_request
            if cut:
                self._cut_after_next_request = False
                pair.dropping = True
            await server.send_all(data)
            if cut:
                await trio.sleep(0.3)
                pair.scope.cancel()
        pair.scope.cancel()

    async def _replies(
        self, server: trio.SocketStream, client: trio.SocketStream, pair: _Pair
    ) -> None:
        async for data in server:
            if not pair.dropping:
                await client.send_all(data)
        pair.scope.cancel()


@asynccontextmanager
async def open_postgres_proxy() -> AsyncIterator[PostgresProxy]:
    """A proxy to the test server, serving while the block runs."""
    parts = urllib.parse.urlsplit(DSN)
    proxy = PostgresProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, proxy._handle, 0)
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()
