"""Talking to Redis without surprises.

redis-py's client methods retry on ConnectionError/TimeoutError and re-send
a write whose reply was lost, and they apply the client's ``socket_timeout``
to blocking reads.  Neither is safe for permit bookkeeping, so every command
of this package goes through :class:`Link`, which borrows a connection from
the caller's own pool, sends one pipelined batch and reads exactly one reply
per command, with no hidden re-send.  Retrying is decided by the caller,
through :func:`retrying`, and only for operations built to be idempotent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import redis
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger("redsync")

T = TypeVar("T")

#: Errors after which a command may or may not have run on the server.
AMBIGUOUS: tuple[type[BaseException], ...] = (rex.ConnectionError, rex.TimeoutError, OSError)
#: Errors that mean the command did not run and may simply be sent again.
TRANSIENT: tuple[type[BaseException], ...] = (rex.ReadOnlyError, rex.BusyLoadingError)

_OLD_POOL_API = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3)

Command = Sequence[Any]


class Script:
    """A Lua script shipped in ``redsync/lua``, run by SHA with a fallback to EVAL."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (resources.files("redsync") / "lua" / f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class Link:
    """Borrowed connections and un-retried command batches for one client."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.pool = client.connection_pool
        self._client_ids: weakref.WeakKeyDictionary[AbstractConnection, tuple[object, int]] = (
            weakref.WeakKeyDictionary()
        )
        #: One connection kept between operations, so the common case skips
        #: the pool's locking and bookkeeping.
        self._spare: AbstractConnection | None = None
        self._closed = False

    async def borrow(self) -> AbstractConnection:
        conn, self._spare = self._spare, None
        if conn is not None:
            return conn
        if _OLD_POOL_API:
            conn = await self.pool.get_connection("_")  # type: ignore[no-untyped-call]
        else:
            conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        return conn  # type: ignore[no-any-return]

    async def give_back(self, conn: AbstractConnection) -> None:
        if self._spare is None and not self._closed:
            self._spare = conn
        else:
            await self.pool.release(conn)

    async def close(self) -> None:
        """Return the kept connection to the client's pool, and keep none from now on."""
        self._closed = True
        conn, self._spare = self._spare, None
        if conn is not None:
            await self.pool.release(conn)

    @staticmethod
    async def discard(conn: AbstractConnection) -> None:
        """Close a connection whose state is unknown (a reply may be pending)."""
        try:
            await conn.disconnect(nowait=True)
        except Exception:  # pragma: no cover - closing a broken socket
            pass

    async def run(
        self,
        conn: AbstractConnection,
        commands: Sequence[Command],
        *,
        read_timeout: float | None = None,
    ) -> list[Any]:
        """Send ``commands`` in one write and read one reply for each.

        Error replies are collected and the first is raised after every reply
        has been read, so the connection is left clean.  A broken connection
        raises ConnectionError/TimeoutError and is closed.  ``read_timeout``
        replaces the client's ``socket_timeout`` for this batch only (blocking
        commands set it from their own server-side timeout).
        """
        packed = conn.pack_commands([tuple(c) for c in commands])
        saved = conn.socket_timeout
        # A write of a few hundred bytes does not block, and without a socket
        # timeout redis-py writes directly instead of through wait_for(), which
        # costs a task per command and can swallow a cancellation.
        conn.socket_timeout = None
        try:
            await conn.send_packed_command(packed, check_health=False)
            conn.socket_timeout = saved if read_timeout is None else read_timeout
            replies: list[Any] = []
            error: rex.ResponseError | None = None
            for _ in commands:
                try:
                    replies.append(await conn.read_response(disable_decoding=True))
                except rex.ResponseError as exc:
                    error = error or exc
                    replies.append(exc)
        except BaseException:
            await self.discard(conn)
            raise
        finally:
            conn.socket_timeout = saved
        if error is not None:
            raise error
        return replies

    async def call(self, *command: Any) -> Any:
        """Run one command on a borrowed connection."""
        return (await self.pipeline([command]))[0]

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        conn = await self.borrow()
        try:
            return await self.run(conn, commands)
        finally:
            await self.give_back(conn)

    async def script(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[Any],
        conn: AbstractConnection | None = None,
    ) -> Any:
        """EVALSHA ``script``; on NOSCRIPT (a restarted or flushed server) send its source."""
        own = conn is None
        if conn is None:
            conn = await self.borrow()
        try:
            try:
                return (await self.run(conn, [("EVALSHA", script.sha, len(keys), *keys, *args)]))[0]
            except rex.NoScriptError:
                return (await self.run(conn, [("EVAL", script.source, len(keys), *keys, *args)]))[0]
        finally:
            if own:
                await self.give_back(conn)

    async def client_id(self, conn: AbstractConnection) -> int:
        """The server-side id of ``conn``, fetched once per physical connection."""
        writer = getattr(conn, "_writer", None)
        cached = self._client_ids.get(conn)
        if cached is not None and cached[0] is writer and writer is not None:
            return cached[1]
        reply = await self.run(conn, [("CLIENT", "ID")])
        self._client_ids[conn] = (getattr(conn, "_writer", None), int(reply[0]))
        return int(reply[0])

    def known_client_id(self, conn: AbstractConnection) -> int | None:
        cached = self._client_ids.get(conn)
        if cached is None or cached[0] is not getattr(conn, "_writer", None):
            return None
        return cached[1]

    async def blocking(
        self, conn: AbstractConnection, command: Command, *, read_timeout: float
    ) -> Any:
        """Run one blocking command that :meth:`unblock` may wake.

        A woken command answers ``-UNBLOCKED``.  On Redis 7.0 a command that
        CLIENT PAUSE had postponed still runs after that answer, so the
        connection is synchronised with a PING: a reply that arrives before
        the PONG is the command's real, late result, and is returned.
        """
        try:
            return (await self.run(conn, [command], read_timeout=read_timeout))[0]
        except rex.ResponseError as exc:
            if not str(exc).startswith("UNBLOCKED"):
                raise
        late: Any = None
        saved = conn.socket_timeout
        conn.socket_timeout = None
        try:
            await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
            conn.socket_timeout = read_timeout
            while True:
                try:
                    reply = await conn.read_response(disable_decoding=True)
                except rex.ResponseError:
                    continue
                if reply == b"PONG":
                    return late
                late = reply
        except BaseException:
            await self.discard(conn)
            raise
        finally:
            conn.socket_timeout = saved

    async def unblock(self, client_id: int) -> None:
        """Wake a connection blocked in BLMOVE, which then answers ``-UNBLOCKED``.

        The ERROR form is used on purpose: on Redis 7.0, ``CLIENT UNBLOCK ...
        TIMEOUT`` aimed at a command postponed by CLIENT PAUSE WRITE (as
        during a failover) crashes the server.
        """
        try:
            await self.call("CLIENT", "UNBLOCK", client_id, "ERROR")
        except AMBIGUOUS + TRANSIENT as exc:
            log.debug("CLIENT UNBLOCK %s failed: %r", client_id, exc)


async def retrying(
    operation: Callable[[bool], Awaitable[T]],
    *,
    budget: float = 15.0,
    what: str = "operation",
) -> T:
    """Run ``operation(ambiguous)`` until it gets an answer from Redis.

    ``ambiguous`` tells the operation that an earlier attempt may have taken
    effect on the server (its reply was lost), so it can interpret the answer
    accordingly.  Retries back off from 20 ms to 1 s and stop after
    ``budget`` seconds, re-raising the last connection error.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    ambiguous = False
    delay = 0.02
    while True:
        try:
            return await operation(ambiguous)
        except TRANSIENT as exc:
            error: BaseException = exc
        except AMBIGUOUS as exc:
            ambiguous = True
            error = exc
        if loop.time() + delay > deadline:
            raise error
        log.debug("%s failed (%r); retrying in %.2fs", what, error, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
