"""An asyncio TCP proxy that injects network faults between a client and Redis.

Create and use it on the test's own event loop::

    async with FaultProxy("127.0.0.1", 6379) as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url)
        proxy.cut_all()                       # abort every live connection
        proxy.swallow_next_reply()            # next reply is lost, connection aborted
        proxy.pause(); ...; proxy.resume()    # hold server->client bytes

Every client connection gets its own upstream connection, so "cutting" or
"swallowing" affects exactly the connections it says.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from .servers import is_loopback_host

__all__ = ["FaultProxy"]

_LISTEN_HOST = "127.0.0.1"
_CHUNK = 65536
_STOP_TIMEOUT = 10.0


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set when a request matching a pending swallow_next_reply(after_request=...) was seen.
    armed: bool = False

    def abort(self) -> None:
        for writer in (self.client, self.server):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


@dataclass
class _Swallow:
    match: bytes | None
    after_request: bytes | None


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` with fault injection.

    Counters: ``accepted`` (client connections accepted), ``cuts`` (connections
    aborted by :meth:`cut_all`), ``swallowed`` (replies dropped by
    :meth:`swallow_next_reply`), ``upstream_failures`` (client connections
    closed because the target refused).
    """

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 6379) -> None:
        if not is_loopback_host(target_host):
            raise ValueError(f"FaultProxy only targets loopback addresses, not {target_host!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.accepted = 0
        self.cuts = 0
        self.swallowed = 0
        self.upstream_failures = 0
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._swallow: _Swallow | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._server = await asyncio.start_server(self._handle, _LISTEN_HOST, 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening, abort every connection, and wait for all handlers."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        for link in list(self._links):
            link.abort()
        # Handlers end by themselves once their link is aborted. They are not
        # cancelled: asyncio.streams (3.11) logs an error for a cancelled one.
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=_STOP_TIMEOUT)
            if pending:
                raise RuntimeError(f"FaultProxy: {len(pending)} handler(s) did not finish")
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return _LISTEN_HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_LISTEN_HOST}:{self.port}/0"

    def rewrite(self, url: str) -> str:
        """``url`` with its host:port replaced by the proxy's (credentials, db, query kept)."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{_LISTEN_HOST}:{self.port}"
        if userinfo:
            netloc = f"{userinfo}@{netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def active(self) -> int:
        """Number of currently proxied connections."""
        return len(self._links)

    # -- faults -----------------------------------------------------------------------------

    def cut_all(self) -> int:
        """Abort (RST) every current connection on both sides; return how many."""
        links = list(self._links)
        for link in links:
            link.abort()
            self._links.discard(link)
        self.cuts += len(links)
        return len(links)

    def swallow_next_reply(
        self, match: bytes | None = None, *, after_request: bytes | None = None
    ) -> None:
        """Drop the next server->client chunk, then abort that connection.

        The command reached (and ran on) the server but the client never sees
        the reply: exactly the case where a retrying client re-sends it.

        ``match``: only a chunk containing these bytes qualifies.
        ``after_request``: only the reply on a connection whose client sent a
        chunk containing these bytes (e.g. ``b"EVALSHA"``) after this call.
        Without either, the first chunk on ANY proxied connection qualifies,
        including the handshake (HELLO/AUTH) reply of a new connection.
        One pending swallow at a time; a new call replaces it.
        """
        self._swallow = _Swallow(match, after_request)
        for link in self._links:
            link.armed = False

    def cancel_swallow(self) -> None:
        self._swallow = None

    @property
    def swallow_pending(self) -> bool:
        return self._swallow is not None

    def pause(self) -> None:
        """Hold server->client data (client->server still flows)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    # -- plumbing -------------------------------------------------------------------------------

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        link: _Link | None = None
        try:
            try:
                sreader, swriter = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError:
                self.upstream_failures += 1
                cwriter.transport.abort()
                return
            link = _Link(cwriter, swriter)
            if self._server is None:  # stopped while connecting
                link.abort()
                return
            self._links.add(link)
            up = asyncio.ensure_future(self._pump_up(link, creader))
            down = asyncio.ensure_future(self._pump_down(link, sreader))
            link.tasks = [up, down]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if link is None:
                cwriter.transport.abort()
            else:
                self._links.discard(link)
                for t in link.tasks:
                    t.cancel()
                if link.tasks:
                    await asyncio.gather(*link.tasks, return_exceptions=True)
                for writer in (link.client, link.server):
                    with contextlib.suppress(Exception):
                        writer.close()
            self._handlers.discard(task)

    async def _pump_up(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """client -> server"""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                sw = self._swallow
                if sw is not None and sw.after_request is not None and sw.after_request in data:
                    link.armed = True
                link.server.write(data)
                await link.server.drain()
        except (ConnectionError, OSError):
            return

    async def _pump_down(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """server -> client"""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                if self._should_swallow(link, data):
                    self._swallow = None
                    self.swallowed += 1
                    self._links.discard(link)
                    link.client.transport.abort()
                    link.server.transport.abort()
                    return
                link.client.write(data)
                await link.client.drain()
        except (ConnectionError, OSError):
            return

    def _should_swallow(self, link: _Link, data: bytes) -> bool:
        sw = self._swallow
        if sw is None:
            return False
        if sw.after_request is not None and not link.armed:
            return False
        return sw.match is None or sw.match in data
