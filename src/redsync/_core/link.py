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
import contextlib
import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, TypeAlias, TypeVar

import redis
from redis import exceptions as rex
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection

from . import compat, resp

log = logging.getLogger("redsync")

T = TypeVar("T")

#: Errors after which a command may or may not have run on the server.
AMBIGUOUS: tuple[type[BaseException], ...] = (rex.ConnectionError, rex.TimeoutError, OSError)
#: Redis Cluster answers meaning "not here, not now": the command did not run,
#: and the slot's owner must be looked up again before it is sent again.
REROUTE: tuple[type[BaseException], ...] = (
    rex.MovedError,
    rex.AskError,
    rex.TryAgainError,
    rex.ClusterDownError,
    rex.MasterDownError,
)
#: Errors that mean the command did not run and may simply be sent again.
TRANSIENT: tuple[type[BaseException], ...] = (
    rex.ReadOnlyError,
    rex.BusyLoadingError,
    *REROUTE,
    rex.RedisClusterException,
)

# Older parsers of plain (non-cluster) connections leave these as ResponseError.
_REROUTE_BY_PREFIX: dict[str, type[rex.ResponseError]] = {
    "MOVED": rex.MovedError,
    "ASK": rex.AskError,
    "TRYAGAIN": rex.TryAgainError,
    "CLUSTERDOWN": rex.ClusterDownError,
    "MASTERDOWN": rex.MasterDownError,
}

Command = Sequence[Any]

#: What the library accepts as a client.
Client: TypeAlias = "Redis | RedisCluster"


#: A Lua line that stands for the fragment it names (see :class:`Script`).
INCLUDE = "--@include "


def _encode(value: Any, encoding: str, errors: str) -> bytes:
    if isinstance(value, str):
        return value.encode(encoding, errors)
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise rex.DataError(
        f"invalid argument of type {type(value).__name__!r}: pass bytes, str, int or float"
    )


def pack(commands: Sequence[Command], encoding: str, errors: str = "strict") -> bytes:
    """The RESP form of ``commands``, as redis-py's ``pack_commands`` writes it.

    Written here because redis-py's packer is a good part of the client's CPU
    per acquisition for commands with many arguments (a script's keys and
    values): it encodes argument by argument through several calls each.
    """
    out: list[bytes] = []
    for command in commands:
        first = command[0]
        if isinstance(first, str) and " " in first:
            command = (*first.split(), *command[1:])  # "SCRIPT LOAD" is two words
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = _encode(arg, encoding, errors)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class Script:
    """A Lua script shipped in ``<package>/lua``, run by SHA with a fallback to EVAL."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, package: str, name: str) -> None:
        self.name = f"{package}:{name}"
        folder = resources.files(package) / "lua"
        shared = resources.files(__package__ or "redsync._core") / "lua"
        lines = []
        for line in (folder / f"{name}.lua").read_text("utf-8").splitlines(keepends=True):
            if line.startswith(INCLUDE):
                # A shared fragment (``_<part>.lua``), so a step that several
                # scripts run is written once: the primitive's own, or one
                # of every primitive's (``redsync/_core/lua``).
                part = f"_{line[len(INCLUDE) :].strip()}.lua"
                found = folder / part
                line = (found if found.is_file() else shared / part).read_text("utf-8")
            lines.append(line)
        self.source = "".join(lines)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


#: redis-py's pure-Python parsers, which read the connection's stream directly
#: and keep nothing of it between replies (so :class:`_Replies` may read it).
_STREAM_PARSERS = frozenset({"_AsyncRESP2Parser", "_AsyncRESP3Parser"})
#: Connection classes whose read_response only parses.
_PLAIN: frozenset[type] = frozenset(
    {
        redis.asyncio.connection.Connection,
        redis.asyncio.connection.SSLConnection,
        redis.asyncio.connection.UnixDomainSocketConnection,
    }
)


class _Replies:
    """Reads the replies of one batch straight from the connection's stream.

    redis-py's pure-Python parser awaits the stream several times per element
    of every reply; this reads whatever has arrived in one call and parses it
    synchronously (see :mod:`.resp`), a good part of the client's CPU per
    acquisition.  Used only where redis-py's parser holds nothing itself (its
    C parser, hiredis, is fast and buffers: it is left alone).  Errors are
    made by redis-py's own ``parse_error``, so they are the classes redis-py
    raises; those that are connection errors (``LOADING``) are raised.  A read
    timeout closes the connection, as redis-py's does.
    """

    __slots__ = ("_buf", "_conn", "_pos", "_reader", "_timer", "expired")

    def __init__(self, conn: AbstractConnection, reader: asyncio.StreamReader) -> None:
        self._conn = conn
        self._reader = reader
        self._buf = b""
        self._pos = 0
        self._timer: asyncio.TimerHandle | None = None
        self.expired = False

    def _error(self, message: str) -> BaseException:
        """An error reply, as the exception redis-py's parser would make of it."""
        exc: BaseException = compat.reply_parser(self._conn).parse_error(message)
        if isinstance(exc, rex.ConnectionError):
            raise exc
        return exc

    @classmethod
    def of(cls, conn: AbstractConnection, timeout: float | None) -> _Replies | None:
        if type(conn) not in _PLAIN:
            # A subclass may act on replies in read_response (a Sentinel-managed
            # connection closes itself on READONLY, so the pool finds the new
            # master): leave those to redis-py.
            return None
        parser = compat.reply_parser(conn)
        reader = compat.stream_reader(conn)
        if type(parser).__name__ not in _STREAM_PARSERS or reader is None:
            return None
        if compat.parser_holds_data(parser):
            return None  # it holds part of a reply (cannot happen between commands)
        replies = cls(conn, reader)
        if timeout is not None:
            replies._timer = asyncio.get_running_loop().call_later(timeout, replies._expire)
        return replies

    def _expire(self) -> None:
        self.expired = True
        writer = compat.stream_writer(self._conn)
        if writer is not None:
            writer.transport.abort()  # the read in progress ends; the caller discards it

    async def next(self) -> Any:
        """The next reply (push frames are skipped); error replies are raised."""
        reply = await self._next()
        if isinstance(reply, rex.ResponseError):
            raise reply
        return reply

    async def _next(self) -> Any:
        try:
            while True:
                if self._pos < len(self._buf):
                    try:
                        reply, self._pos = resp.parse(self._buf, self._pos, self._error)
                    except resp.Incomplete:
                        pass
                    else:
                        if isinstance(reply, resp.Push):
                            continue  # out-of-band (RESP3): not this command's reply
                        return reply
                data = await self._reader.read(65536)
                if not data:
                    raise rex.ConnectionError("connection closed by the server")
                self._buf = self._buf[self._pos :] + data
                self._pos = 0
        except (OSError, rex.ConnectionError) as exc:
            if self.expired:
                raise rex.TimeoutError("timeout reading from the connection") from exc
            raise
        except BaseException:
            self.done()
            raise

    def done(self) -> None:
        """Every reply was read: stop the timer; bytes beyond them mean a
        desynchronised connection, which is closed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pos < len(self._buf):
            self._buf = b""
            self._expire()


def _cancelling(task: asyncio.Task[Any] | None) -> int:
    """Cancellations requested of ``task`` and not yet delivered (0 where unknown)."""
    counter = getattr(task, "cancelling", None)  # Python 3.11+
    return int(counter()) if counter is not None else 0


class _Pool:
    """Where connections come from: the client's pool, or one cluster node."""

    __slots__ = ("node", "pool")

    def __init__(self, pool: Any = None, node: ClusterNode | None = None) -> None:
        self.pool = pool
        self.node = node

    async def get(self) -> AbstractConnection:
        if self.node is not None:
            return self.node.acquire_connection()  # connected by its first send
        task = asyncio.current_task()
        before = _cancelling(task)
        conn = await compat.pool_get(self.pool)
        if _cancelling(task) > before:
            # The pool connects a new connection with the client's
            # socket_timeout, through asyncio.wait_for, which on Python <= 3.11
            # can drop a cancellation that races the handshake (the caller
            # would then wait on as if never cancelled).  Deliver it.
            await self.put(conn)
            raise asyncio.CancelledError()
        return conn

    async def put(self, conn: AbstractConnection) -> None:
        if self.node is None:
            await self.pool.release(conn)
        else:
            compat.node_put(self.node, conn)


#: Most packed commands one link remembers (see Link._pack).
PACK_CACHE = 64

#: Most connections one process keeps checked out of one connection pool (per
#: event loop) between operations, shared by every primitive instance using it.
MAX_KEPT = 4
#: Most short operations (one batch each) in flight on one pool per event loop:
#: a burst of a thousand tasks queues here instead of opening a thousand
#: connections (blocking lanes and transactions are not counted).
MAX_SHORT = MAX_KEPT + 2


class _Kept:
    """Connections kept out of one pool between operations, for one event loop.

    Borrowing from redis-py's pool takes its lock and updates its bookkeeping
    (redis-py 8 also records metrics), which is a good part of the client CPU
    of one acquisition.  So a few connections stay checked out and are lent
    directly, and they are shared by every instance of every primitive on that
    pool: however many instances a process holds, they keep at most
    ``MAX_KEPT`` connections, never one each (a default client's pool allows
    only 100).  They go back to the pool when the last instance closes.
    """

    __slots__ = ("free", "short", "users")

    def __init__(self) -> None:
        self.free: list[AbstractConnection] = []
        self.users = 0
        self.short = asyncio.Semaphore(MAX_SHORT)


_KEPT: weakref.WeakKeyDictionary[
    object, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Kept]
] = weakref.WeakKeyDictionary()


def _kept_for(pool: object) -> _Kept:
    per_loop = _KEPT.get(pool)
    if per_loop is None:
        per_loop = _KEPT[pool] = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    kept = per_loop.get(loop)
    if kept is None:
        kept = per_loop[loop] = _Kept()
    return kept


class Link:
    """Borrowed connections and un-retried command batches for one primitive.

    ``route_key`` is any key of the primitive: with a Redis Cluster client,
    connections come from the node that owns its slot (every key of a
    primitive shares that slot).  When the cluster answers MOVED or a node
    stops answering, the slot map is refreshed before the next borrow and
    connections to the old owner are retired.
    """

    def __init__(self, client: Client, route_key: str = "") -> None:
        self.client = client
        self.route_key = route_key
        self.cluster = isinstance(client, RedisCluster)
        self._pool = None if isinstance(client, RedisCluster) else _Pool(client.connection_pool)
        #: Cluster only: the pool of each borrowed connection's node.
        self._home: weakref.WeakKeyDictionary[AbstractConnection, _Pool] = (
            weakref.WeakKeyDictionary()
        )
        self._stale = False
        #: When the route was found stale (see compat.refresh_slots).
        self._stale_mark = 0
        self._routing: asyncio.Lock | None = None
        if isinstance(client, RedisCluster):
            compat.keep_cluster_nodes(client)
        #: Connections closed after an error.  They are never reconnected in
        #: place: the pool's own connect path is what finds a Sentinel's
        #: current master (redis-py 8 reconnects a dropped connection to its
        #: old address when it is simply used again).
        self._broken: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        #: Connections this link gave back and has not borrowed again: using one
        #: would share a socket with whoever borrowed it next (a bug, caught in run()).
        self._given: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        #: The process's kept connections of the client's pool (plain clients
        #: only: a cluster node lends its connections without locking).
        self._kept: _Kept | None = None
        self._closed = False
        #: Replicas every write must reach (WAIT) before it counts as done; 0: none.
        self.replicas = 0
        self.replica_timeout_ms = 0
        #: Writes that WAIT reported as reaching fewer replicas than asked.
        self.replica_shortfalls = 0
        #: Packed one-command batches, see :meth:`_pack`.
        self._packed: dict[tuple[Any, ...], Any] = {}

    # -- where connections come from -------------------------------------------

    async def _route(self) -> _Pool:
        """The pool of the node owning ``route_key`` (refreshing the map if stale)."""
        if self._pool is not None and not self._stale:
            return self._pool
        if self._routing is None:
            self._routing = asyncio.Lock()
        async with self._routing:
            if self._pool is not None and not self._stale:
                return self._pool
            assert isinstance(self.client, RedisCluster)
            try:
                await self.client.initialize()
                if self._stale:
                    await compat.refresh_slots(self.client, self._stale_mark)
                node = self.client.get_node_from_key(self.route_key)
            except TRANSIENT + AMBIGUOUS:
                raise
            except Exception as exc:  # e.g. no reachable startup node during a failover
                raise rex.ClusterDownError(f"cluster slot map unavailable: {exc!r}") from exc
            if node is None:  # pragma: no cover - redis-py raises instead
                raise rex.ClusterDownError(f"no node serves the slot of {self.route_key!r}")
            if self._pool is None or self._pool.node is not node:
                self._pool = _Pool(node=node)
            self._stale = False
            return self._pool

    def _mark_stale(self) -> None:
        if self.cluster and not self._stale:
            assert isinstance(self.client, RedisCluster)
            self._stale = True
            self._stale_mark = compat.refresh_mark(self.client)

    def current(self, conn: AbstractConnection) -> bool:
        """False when ``conn`` was closed after an error, or leads to a node that no
        longer owns the slot."""
        if conn in self._broken:
            return False
        return not self.cluster or (not self._stale and self._home.get(conn) is self._pool)

    def _kept_list(self) -> _Kept | None:
        if self._kept is None and not self._closed and self._pool is not None and not self.cluster:
            self._kept = _kept_for(self._pool.pool)
            self._kept.users += 1
        return self._kept

    async def borrow(self) -> AbstractConnection:
        kept = self._kept_list()
        while kept is not None and kept.free:
            conn = kept.free.pop()
            if self.current(conn):
                self._given.discard(conn)
                return conn
            await self._retire(conn)
        pool = await self._route()
        conn = await pool.get()
        self._given.discard(conn)
        if self.cluster:
            self._home[conn] = pool
        return conn

    async def ensure(self, conn: AbstractConnection | None) -> AbstractConnection:
        """``conn`` if it is still usable (see :meth:`current`), else a fresh connection.

        The old one is given up only once the fresh one is in hand: if borrowing
        fails, the caller still owns ``conn`` (and gives it back as usual), so no
        connection is ever returned to the pool twice.
        """
        if conn is not None and self.current(conn):
            return conn
        fresh = await self.borrow()
        if conn is not None:
            await self._retire(conn)
        return fresh

    async def _retire(self, conn: AbstractConnection) -> None:
        await self.discard(conn)
        await self._put(conn)

    async def _put(self, conn: AbstractConnection) -> None:
        self._broken.discard(conn)  # the pool reconnects it properly before lending it again
        self._given.add(conn)
        pool = self._home.pop(conn, None) if self.cluster else self._pool
        if pool is not None:
            await pool.put(conn)

    async def give_back(self, conn: AbstractConnection) -> None:
        kept = self._kept_list()
        if kept is not None and len(kept.free) < MAX_KEPT and self.current(conn):
            self._given.add(conn)
            kept.free.append(conn)
        elif self.current(conn):
            await self._put(conn)
        else:
            await self._retire(conn)

    async def close(self) -> None:
        """Stop using the kept connections; the last instance to close returns them."""
        self._closed = True
        kept, self._kept = self._kept, None
        if kept is None:
            return
        kept.users -= 1
        if kept.users <= 0:
            conns, kept.free = kept.free, []
            for conn in conns:
                await self._put(conn)

    async def discard(self, conn: AbstractConnection) -> None:
        """Close a connection whose state is unknown (a reply may be pending)."""
        self._broken.add(conn)
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
        on_reply: Callable[[int, Any], None] | None = None,
        wait_last: bool = False,
        tolerant: bool = False,
    ) -> list[Any]:
        """Send ``commands`` in one write and read one reply for each.

        Error replies are collected and the first is raised after every reply
        has been read, so the connection is left clean.  A broken connection
        raises ConnectionError/TimeoutError and is closed.  ``read_timeout``
        replaces the client's ``socket_timeout`` for this batch only (blocking
        commands set it from their own server-side timeout).  ``on_reply(i, reply)``
        sees each reply as soon as it is read, until the first error reply (after
        which the order of replies is not to be trusted: see :meth:`blocking`).

        ``wait_last``: the last command is a WAIT.  WAIT blocks, so another
        client's CLIENT UNBLOCK may interrupt it; its ``-UNBLOCKED`` answer then
        reads as None, not as an error.

        ``tolerant``: error replies stay in place in the returned list (each
        classified, as :meth:`check` would) instead of being raised; used to
        send the renewals of many instances in one batch.
        """
        if conn in self._given:
            raise RuntimeError(
                "redsync bug: a command was sent on a connection already given back "
                "(it may be in use elsewhere); please report it"
            )
        packed = self._pack(conn, commands)
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
            fast = None if wait_last else _Replies.of(conn, conn.socket_timeout)
            for index in range(len(commands)):
                try:
                    if fast is not None:
                        reply = await fast.next()
                    else:
                        reply = await conn.read_response(disable_decoding=True)
                except rex.ResponseError as exc:
                    error = error or exc
                    replies.append(exc)
                    continue
                replies.append(reply)
                if on_reply is not None and error is None:
                    on_reply(index, reply)
            if fast is not None:
                fast.done()
        except AttributeError as exc:
            if compat.stream_writer(conn) is not None and compat.stream_reader(conn) is not None:
                raise
            # redis-py's way of saying that something else (a client's aclose(),
            # a cluster node dropped from the slot map) closed it mid-command.
            await self.discard(conn)
            self._mark_stale()
            raise rex.ConnectionError(f"connection closed while in use ({exc})") from exc
        except BaseException as exc:
            await self.discard(conn)
            if isinstance(exc, AMBIGUOUS):
                self._mark_stale()  # a failed node: its replica may own the slot now
            raise
        finally:
            conn.socket_timeout = saved
        if error is not None and tolerant:
            return [self._classify(r) if isinstance(r, rex.ResponseError) else r for r in replies]
        if error is not None:
            last = replies[-1]
            if (
                wait_last
                and last is error
                and str(error).startswith("UNBLOCKED")
                and not any(isinstance(r, rex.ResponseError) for r in replies[:-1])
            ):
                replies[-1] = None
                return replies
            raise self._classify(error)
        return replies

    def _classify(self, error: rex.ResponseError) -> rex.ResponseError:
        if not isinstance(error, REROUTE):
            cls = _REROUTE_BY_PREFIX.get(str(error).split(" ", 1)[0])
            if cls is None:
                return error
            error = cls(str(error))
        self._mark_stale()
        return error

    def _pack(self, conn: AbstractConnection, commands: Sequence[Command]) -> Any:
        """The wire form of ``commands``, from a small cache for one-command batches.

        The hot path sends the same few commands again and again (a slot's
        LMOVE, a release of one token from one slot), and packing them is a
        good part of the client's CPU per acquisition.  Every connection of a
        link encodes alike (one client), so the bytes can be reused.
        """
        encoder = conn.encoder
        if len(commands) != 1:
            return pack(commands, encoder.encoding, encoder.encoding_errors)
        key = tuple(commands[0])
        packed = self._packed.get(key)
        if packed is None:
            packed = pack([key], encoder.encoding, encoder.encoding_errors)
            if len(self._packed) >= PACK_CACHE:
                self._packed.clear()
            self._packed[key] = packed
        return packed

    def check(self, reply: Any) -> Any:
        """``reply``, or raise it if it is an error reply of a tolerant batch."""
        if isinstance(reply, rex.ResponseError):
            raise self._classify(reply)
        return reply

    async def group(self) -> object:
        """What the batches of different links share when they go to the same
        node: the client's pool, or the cluster node owning the route key."""
        pool = await self._route()
        # By identity: ClusterNode is unhashable on redis-py < 5.1.
        return id(pool.pool) if pool.node is None else id(pool.node)

    async def call(self, *command: Any) -> Any:
        """Run one command on a borrowed connection."""
        return (await self.pipeline([command]))[0]

    def _short(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A place among the pool's short operations in flight (see ``MAX_SHORT``)."""
        kept = self._kept_list()
        return kept.short if kept is not None else contextlib.nullcontext()

    async def pipeline(self, commands: Sequence[Command], *, tolerant: bool = False) -> list[Any]:
        async with self._short():
            conn = await self.borrow()
            try:
                return await self.run(conn, commands, tolerant=tolerant)
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
        if conn is not None:
            return await self._script(script, keys, args, conn)
        async with self._short():
            conn = await self.borrow()
            try:
                return await self._script(script, keys, args, conn)
            finally:
                await self.give_back(conn)

    async def _script(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], conn: AbstractConnection
    ) -> Any:
        try:
            sha = ("EVALSHA", script.sha, len(keys), *keys, *args)
            return (await self.write(conn, [sha]))[0]
        except rex.NoScriptError:
            source = ("EVAL", script.source, len(keys), *keys, *args)
            return (await self.write(conn, [source]))[0]

    async def write(self, conn: AbstractConnection, commands: Sequence[Command]) -> list[Any]:
        """:meth:`run` for a batch that changes state: with ``replicas`` set, the
        same write also waits (WAIT, pipelined: no extra round trip) until that
        many replicas have it, and counts a shortfall if they do not in time."""
        if not self.replicas:
            return await self.run(conn, commands)
        replies = await self.run(conn, [*commands, self._wait_command()], wait_last=True)
        if replies[-1] is None:  # the WAIT was interrupted: wait again
            await self.replicate(conn)
        else:
            self._count_acks(replies[-1])
        return replies[:-1]

    async def replicate(self, conn: AbstractConnection) -> None:
        """Wait until ``replicas`` replicas have every write made on ``conn`` (if set).

        Never raises (but for cancellation): the writes are done whatever WAIT
        says; what could not be confirmed is counted as a shortfall.
        """
        if not self.replicas:
            return
        acks: Any = 0
        for _ in range(2):
            try:
                (acks,) = await self.run(conn, [self._wait_command()], wait_last=True)
            except Exception as exc:
                log.debug("WAIT failed: %r", exc)
                acks = 0
            if acks is not None:
                break
        self._count_acks(acks or 0)

    def _wait_command(self) -> Command:
        return ("WAIT", self.replicas, self.replica_timeout_ms)

    def _count_acks(self, acks: Any) -> None:
        if int(acks) < self.replicas:
            if not self.replica_shortfalls:
                log.warning(
                    "only %s of %s replicas acknowledged a write within %s ms; "
                    "a failover now could undo it (further shortfalls are counted "
                    "in statistics())",
                    acks,
                    self.replicas,
                    self.replica_timeout_ms,
                )
            self.replica_shortfalls += 1

    async def blocking(
        self, conn: AbstractConnection, command: Command, *, read_timeout: float
    ) -> Any:
        """Run one blocking command.

        This library never wakes its own blocked commands, but another client's
        ``CLIENT UNBLOCK`` can: such a command answers ``-UNBLOCKED``.  On Redis
        7.0 a command that CLIENT PAUSE had postponed still runs after that
        answer, so the connection is synchronised with a PING: a reply that
        arrives before the PONG is the command's real, late result, and is
        returned.
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


def now_ms(time_reply: Any) -> int:
    """Milliseconds since the epoch from a ``TIME`` reply."""
    return int(time_reply[0]) * 1000 + int(time_reply[1]) // 1000


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
