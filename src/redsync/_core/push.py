"""Hand-off notices: one subscribed connection per node and event loop.

A primitive whose waiters queue in Redis learns that one of them was handed
something from a message on its *channel* (a sharded channel in the
primitive's hash slot, published by the script that did the hand-off).  Every
primitive of every instance in the process shares one :class:`_Listener` per
node (the client's pool, or one cluster node): one connection, one reader
task, however many channels.

A notice is only a shortcut.  What was handed already sits in Redis under
the waiter's name, leased and renewed, so a lost notice costs latency, not a
permit: a renewal finds it, and after the listener's connection broke (or
the server dropped a subscription because its slot moved), every
subscription is made again and its owner is told to look (``on_gap``).

A primitive instance subscribes its own channel, so a message goes to the
subscriptions of its channel only (one dict lookup), however many instances
the listener serves.

The connection is read and parsed by this module's own loop (see
:class:`_Tap`), so RESP2 and RESP3 clients (redis-py 8 defaults to RESP3,
where messages are push frames) and the async cluster client of redis-py 5.0,
which has no pub/sub, all work alike.  One control command (SSUBSCRIBE,
SUNSUBSCRIBE, PING) is in flight at a time, and its answer is the next frame
that is not a message.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from redis import exceptions as rex
from redis.asyncio.connection import AbstractConnection

from . import compat
from .link import AMBIGUOUS, TRANSIENT, Link, _Pool, text
from .resp import Incomplete, parse

__all__ = ["PushUnavailable", "Subscription"]

log = logging.getLogger("redsync")

#: How long a control command may wait for its answer.
CONTROL_TIMEOUT = 5.0
#: How often an idle listener checks that its connection still answers.
PING_EVERY = 15.0
#: How long subscribing retries after connection errors.
JOIN_BUDGET = 15.0


#: Failures after which subscribing is tried again.
_RETRY: tuple[type[BaseException], ...] = (rex.ResponseError, *TRANSIENT, *AMBIGUOUS)


def _no_answer(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(rex.TimeoutError(f"no answer within {CONTROL_TIMEOUT} s"))
        answer.exception()  # its asker may be gone: never "unretrieved"


class _Tap(asyncio.Protocol):
    """The subscribed connection's frames, parsed as they arrive.

    Put in front of the connection's own stream protocol once it is set up,
    so that a notice is parsed and delivered in the event loop's callback for
    the data itself: the waiting task then runs in the loop's next step, as
    a task blocked on its own connection would, instead of a step after a
    reader task has run (a step on every hand-off between processes).  The
    parse is this module's own (see :mod:`.resp`), one synchronous pass over
    whatever arrived.  Flow control and the end of the connection still go
    to the stream protocol, so redis-py sees the connection close.
    """

    def __init__(
        self, inner: Any, on_frame: Callable[[Any], None], on_end: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._on_frame = on_frame
        self._on_end = on_end
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf = self._buf[self._pos :] + data if self._pos < len(self._buf) else data
        self._pos = 0
        while self._pos < len(self._buf):
            try:
                frame, self._pos = parse(self._buf, self._pos)
            except Incomplete:
                return
            self._on_frame(frame)

    def data_received(self, data: bytes) -> None:
        try:
            self.feed(data)
        except Exception:  # a frame that cannot be parsed: the connection is unusable
            log.exception("hand-off listener: unreadable frame")
            self._on_end()

    def eof_received(self) -> bool | None:
        self._on_end()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._on_end()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class PushUnavailable(Exception):
    """The server or the user cannot subscribe (no sharded pub/sub, no channel rights)."""


class _Listener:
    """One connection subscribed to every channel of this process on one node."""

    def __init__(self, pool: _Pool, registry: dict[int, _Listener], key: int) -> None:
        self._pool = pool
        self._registry = registry
        self.key = key
        self._conn: AbstractConnection | None = None
        #: In front of the connection's stream protocol once it is set up.
        self._tap: _Tap | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._control = asyncio.Lock()
        #: The answer the control command in flight waits for.
        self._answer: asyncio.Future[Any] | None = None
        self.channels: dict[str, set[Subscription]] = {}
        #: Subscriptions sent and not yet confirmed.
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._dead = False
        #: The connection's own read timeout, restored when it goes back.
        self._timeout: float | None = None
        #: The connection on its way back to the pool, once the listener ended.
        self._closing: asyncio.Future[None] | None = None

    async def add(self, channel: str, sub: Subscription) -> None:
        """Subscribe ``sub`` to ``channel``; returns once the server confirmed it."""
        pending = self._pending.get(channel)
        if pending is None and channel in self.channels:
            self._attach(channel, sub)
            return
        if pending is None:
            pending = asyncio.ensure_future(self._subscribe(channel))
            self._pending[channel] = pending
            pending.add_done_callback(lambda _: self._pending.pop(channel, None))
        await asyncio.shield(pending)
        if self._dead:
            raise rex.ConnectionError("hand-off listener closed")
        self._attach(channel, sub)

    def _attach(self, channel: str, sub: Subscription) -> None:
        self.channels.setdefault(channel, set()).add(sub)

    def _detach(self, channel: str, sub: Subscription) -> None:
        self.channels.get(channel, set()).discard(sub)

    async def _subscribe(self, channel: str) -> None:
        reply = await self._command(("SSUBSCRIBE", channel))
        if isinstance(reply, rex.ResponseError):
            message = str(reply)
            # redis-py strips the NOPERM code into the exception's class.
            if isinstance(reply, rex.NoPermissionError) or message.lower().startswith(
                ("noperm", "unknown command", "err unknown command")
            ):
                raise PushUnavailable(message)
            raise reply
        self.channels.setdefault(channel, set())

    async def remove(self, channel: str, sub: Subscription) -> None:
        subs = self.channels.get(channel)
        if subs is None:
            return
        self._detach(channel, sub)
        if subs:
            return
        del self.channels[channel]
        if not self.channels:
            # The last one: the connection goes back to the pool before this
            # returns (a closing primitive leaves nothing in use).
            self._die()
            if self._closing is not None:
                await asyncio.shield(self._closing)
            return
        try:
            await self._command(("SUNSUBSCRIBE", channel))
        except Exception as exc:  # the connection is gone: nothing stays subscribed
            log.debug("unsubscribing %s failed: %r", channel, exc)

    async def _command(self, command: tuple[Any, ...]) -> Any:
        async with self._control:
            if self._dead:
                raise rex.ConnectionError("hand-off listener closed")
            loop = asyncio.get_running_loop()
            self._answer = answer = loop.create_future()
            try:
                if self._conn is None:
                    self._conn = await self._pool.get()
                    # Always a new connection: one the pool kept may lead to a
                    # server that is no longer the master (a Sentinel-managed
                    # connection looks the master up when it connects).
                    await self._conn.disconnect()
                    await self._conn.connect()  # type: ignore[no-untyped-call]
                    # The reader waits as long as it takes; the pool's timeout is
                    # put back with the connection (see _give_back).
                    self._timeout = self._conn.socket_timeout
                    self._conn.socket_timeout = None
                    self._tap = self._listen(self._conn)
                    self._pinger = asyncio.ensure_future(self._ping())
                await self._conn.send_packed_command(
                    self._conn.pack_command(*command), check_health=False
                )
                # A timer, not wait_for(): on Python <= 3.11 wait_for can drop a
                # cancellation that races the answer.
                timer = loop.call_later(CONTROL_TIMEOUT, _no_answer, answer)
                try:
                    return await asyncio.shield(answer)
                finally:
                    timer.cancel()
            except BaseException as exc:
                # A cancelled command leaves the listener as it was, unless it
                # was cut short while the connection was being set up.
                if not isinstance(exc, asyncio.CancelledError) or self._tap is None:
                    self._die()
                raise
            finally:
                self._answer = None

    async def _ping(self) -> None:
        while not self._dead:
            await asyncio.sleep(PING_EVERY)
            try:
                await self._command(("PING",))
            except Exception:
                return  # _command ended the listener

    def _listen(self, conn: AbstractConnection) -> _Tap:
        """Put a tap in front of the set-up connection's stream protocol."""
        writer = compat.stream_writer(conn)
        reader = compat.stream_reader(conn)
        if writer is None or reader is None:
            raise rex.ConnectionError("hand-off listener: connection not open")
        transport = writer.transport
        tap = _Tap(transport.get_protocol(), self._frame, self._ended)
        transport.set_protocol(tap)
        left = compat.take_buffered(reader)  # nothing, after the handshake
        if left:
            tap.feed(left)
        return tap

    def _ended(self) -> None:
        if not self._dead:
            log.debug("hand-off listener lost its connection")
        self._die()

    def _frame(self, frame: Any) -> None:
        if isinstance(frame, rex.ResponseError):
            self._resolve(frame)
            return
        if isinstance(frame, (list, tuple)) and frame:
            kind = text(frame[0]).lower()
            if kind in ("smessage", "message") and len(frame) >= 3:
                self._deliver(text(frame[1]), text(frame[2]))
                return
            if kind == "sunsubscribe" and self._answer is None:
                # Not asked for: the server dropped it (its slot moved).
                self._dropped(text(frame[1]))
                return
        self._resolve(frame)

    def _resolve(self, frame: Any) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_result(frame)

    def _deliver(self, channel: str, data: str) -> None:
        for sub in list(self.channels.get(channel, ())):
            try:
                sub.on_message(data)
            except Exception:  # pragma: no cover - a primitive's bug must not stop the reader
                log.exception("hand-off notice handler failed")

    def _dropped(self, channel: str) -> None:
        for sub in self.channels.pop(channel, set()):
            sub.lost()

    def _die(self) -> None:
        """Close the connection; every subscription on it subscribes again elsewhere."""
        if self._dead:
            return
        self._dead = True
        if self._registry.get(self.key) is self:
            del self._registry[self.key]
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(rex.ConnectionError("hand-off listener closed"))
            answer.exception()  # its asker may be gone (timed out): never "unretrieved"
        current = asyncio.current_task()
        if self._pinger is not None and self._pinger is not current:
            self._pinger.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            self._closing = closing = asyncio.ensure_future(self._give_back(conn))
            _CLOSING.add(closing)
            closing.add_done_callback(_CLOSING.discard)
        subs = [sub for group in self.channels.values() for sub in group]
        self.channels = {}
        for sub in subs:
            sub.lost()

    async def _give_back(self, conn: AbstractConnection) -> None:
        conn.socket_timeout = self._timeout
        try:
            await conn.disconnect(nowait=True)
        except Exception:  # pragma: no cover - closing a broken socket
            pass
        try:
            await self._pool.put(conn)  # the pool reconnects it before lending it again
        except Exception as exc:  # pragma: no cover - a closed pool
            log.debug("returning the listener's connection failed: %r", exc)


#: Connections of ended listeners on their way back to their pool.
_CLOSING: set[asyncio.Future[None]] = set()
#: Per loop: (node, prefix) -> why subscribing was refused there.
_REFUSED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, str], str]] = (
    weakref.WeakKeyDictionary()
)
_LISTENERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Listener]] = (
    weakref.WeakKeyDictionary()
)


async def _listener(link: Link) -> _Listener:
    pool = await link._route()
    key = id(pool.pool) if pool.node is None else id(pool.node)
    registry = _LISTENERS.setdefault(asyncio.get_running_loop(), {})
    found = registry.get(key)
    if found is None:
        found = registry[key] = _Listener(pool, registry, key)
    return found


class Subscription:
    """One primitive instance's interest in its channel.

    ``on_message(data)`` gets every message published on the channel;
    ``on_gap()`` is called after the subscription was lost and made again
    (messages may have been missed meanwhile: look for what was handed).
    """

    def __init__(
        self,
        link: Link,
        channel: str,
        on_message: Callable[[str], None],
        on_gap: Callable[[], None],
    ) -> None:
        self._link = link
        self.channel = channel
        self.on_message = on_message
        self._on_gap = on_gap
        self._listener: _Listener | None = None
        self._joining: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None
        self.refused: str | None = None
        self._closed = False
        #: Counts the subscriptions made, so a report about one of them
        #: (see :meth:`misplaced`) is not taken for a later one.
        self.joined = 0

    @property
    def active(self) -> bool:
        return self._listener is not None

    async def start(self) -> None:
        """Subscribe (once; later calls wait for the first).  Raises
        :class:`PushUnavailable` when the server or user cannot."""
        if self.refused is not None:
            raise PushUnavailable(self.refused)
        if self._listener is not None:
            return
        if self._joining is None or self._joining.done():
            self._joining = asyncio.ensure_future(self._join())
        await asyncio.shield(self._joining)

    async def _join(self) -> None:
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + JOIN_BUDGET, 0.02
        while True:
            try:
                await self._join_once()
                return
            except (*TRANSIENT, *AMBIGUOUS) as exc:
                # A listener whose connection broke has left the registry:
                # the next attempt opens a new one, routed afresh (the node
                # may have failed, and its replica taken over).
                self._link._mark_stale()
                if loop.time() + delay > give_up:
                    raise
                log.debug("subscribing %s failed (%r); retrying", self.channel, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _join_once(self) -> None:
        listener = await _listener(self._link)
        # Channel rights follow the prefix: one refusal per prefix, node and
        # loop, not one per instance (each refusal is an ACL LOG entry).
        scope = (listener.key, self.channel.split("{", 1)[0])
        refused = _REFUSED.setdefault(asyncio.get_running_loop(), {})
        if scope in refused:
            self.refused = refused[scope]
            raise PushUnavailable(self.refused)
        try:
            await listener.add(self.channel, self)
        except PushUnavailable as exc:
            self.refused = refused[scope] = str(exc)
            raise
        except rex.ResponseError as exc:
            # MOVED and the like (the slot map changed under us) come back as
            # transient errors, retried by _join; anything else is raised.
            raise self._link._classify(exc) from None
        if self._closed:
            await listener.remove(self.channel, self)
            return
        self._listener = listener
        self.joined += 1

    def misplaced(self, joined: int) -> None:
        """The node the scripts run on has no connection subscribed to this
        channel, although subscription ``joined`` was on when they ran.

        So the listener is on another node: a failover made its node a
        replica (a replica takes subscriptions, and hears what the master
        publishes, but the master's count of listeners leaves it out), or
        its connection is gone and it has not noticed yet.  Its connection
        is closed, and every subscription on it is made again through a
        fresh route.
        """
        listener = self._listener
        if listener is None or joined != self.joined or self._closed:
            return
        log.info("hand-off listener of %s is not on the node serving it; moving", self.channel)
        self._link._mark_stale()
        listener._die()

    def lost(self) -> None:
        """The listener lost this subscription: make it again, then report a gap."""
        self._listener = None
        self._link._mark_stale()
        if self._closed or (self._rejoin is not None and not self._rejoin.done()):
            return
        self._rejoin = asyncio.ensure_future(self._again())

    async def _again(self) -> None:
        delay = 0.02
        while not self._closed:
            try:
                await self.start()
            except PushUnavailable:
                self._on_gap()
                return
            except _RETRY as exc:
                log.debug("re-subscribing %s failed: %r", self.channel, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self._on_gap()
            return

    async def close(self) -> None:
        self._closed = True
        for task in (self._rejoin,):
            if task is not None:
                task.cancel()
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.remove(self.channel, self)
