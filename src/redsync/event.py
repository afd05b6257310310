"""A distributed one-to-one signal for asyncio.

Each :meth:`RedisEvent.set` adds one signal to a Redis list; each
:meth:`RedisEvent.wait` takes exactly one.  Signals nobody waits for stay in
Redis until a waiter comes.  Waiting blocks on the server (BLMOVE into a
per-lane inbox, so a signal handed out is never in limbo), and a cancelled or
timed-out wait hands back a signal that reached it too late.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import _validate
from ._keys import KeySpace
from ._lanes import Dispatcher, Lane
from ._link import Command, Link, retrying, text
from .exceptions import RedisEventError, RedisEventTimeoutError

__all__ = ["EventStatistics", "RedisEvent"]

MAX_LANES = 16
MAX_BLOCK = 30.0
READ_GRACE = 5.0
#: How long an inbox (a lane's hand-off list) outlives its last use, in ms.
INBOX_TTL_MS = 3_600_000
#: How long the record that a push happened is kept, so a retried push is not doubled (ms).
PUSH_RECORD_TTL_MS = 120_000


@dataclass(frozen=True)
class EventStatistics:
    """A snapshot from :meth:`RedisEvent.statistics`."""

    name: str
    pending_signals: int
    tasks_waiting: int
    lanes_active: int


class RedisEvent:
    """A signal between processes: each ``set()`` wakes exactly one ``wait()``.

    ::

        event = RedisEvent(redis, "job-done")
        await event.set()            # in one process
        await event.wait(timeout=5)  # in another

    Unlike :class:`asyncio.Event`, a signal is consumed by the waiter it
    wakes; ``set()`` with nobody waiting is kept in Redis until a waiter
    takes it, and ``clear()`` drops the pending ones.
    """

    def __init__(
        self, redis_client: Redis, name: str, *, key_prefix: str = "redsync:event"
    ) -> None:
        _validate.client(redis_client)
        self.name = _validate.name(name)
        _validate.key_prefix(key_prefix)
        self._keys = KeySpace(key_prefix, name)
        self._signals = self._keys.key("signals")
        self._link = Link(redis_client)
        instance = uuid.uuid4().hex[:16]
        lanes = [Lane(i, self._keys.key(f"inbox:{instance}.{i}")) for i in range(MAX_LANES)]
        self._dispatcher: Dispatcher[str] = Dispatcher(
            self._link, self, lanes, lambda: RedisEventError(f"event {name!r} is closed")
        )

    async def set(self) -> None:
        """Add one signal.  Exactly one, even if the connection drops mid-call."""
        await self._push(uuid.uuid4().hex, head=False)

    async def wait(self, timeout: float | None = None) -> None:
        """Take one signal, waiting up to ``timeout`` seconds.

        ``None`` waits as long as it takes; ``0`` or less checks once without
        blocking.  Raises :class:`RedisEventTimeoutError` when time runs out.
        A wait that is cancelled or times out never consumes a signal.
        """
        wait = _validate.timeout(timeout)
        if wait == 0:
            taken = await retrying(lambda _: self._dispatcher.try_get(), what="event wait")
            if taken is None:
                raise RedisEventTimeoutError(f"event {self.name!r}: no signal was pending")
            return
        await self._dispatcher.get(
            wait,
            lambda: RedisEventTimeoutError(f"event {self.name!r}: no signal within {timeout} s"),
        )

    async def clear(self) -> None:
        """Drop every pending signal."""
        await retrying(lambda _: self._link.call("DEL", self._signals), what="event clear")

    async def is_set(self) -> bool:
        """Whether at least one signal is pending."""
        length = await retrying(lambda _: self._link.call("LLEN", self._signals))
        return int(length) > 0

    async def statistics(self) -> EventStatistics:
        length = await retrying(lambda _: self._link.call("LLEN", self._signals))
        return EventStatistics(
            self.name, int(length), self._dispatcher.waiting, self._dispatcher.active_lanes
        )

    async def close(self) -> None:
        """Stop waiting: pending ``wait()`` calls raise :class:`RedisEventError`.

        Optional: an event holds no background task while nobody waits.
        """
        await self._dispatcher.close(grace=0.3)
        await self._link.close()

    def __repr__(self) -> str:
        return f"<RedisEvent {self.name!r} waiting={self._dispatcher.waiting}>"

    # -- lanes (called by the dispatcher) ------------------------------------

    async def pull(self, lane: Lane, block: bool) -> str | None:
        if lane.conn is None:
            lane.conn = await self._link.borrow()
        conn = lane.conn
        if lane.dirty:
            await self._recover(lane)
        prefix: list[Command] = [("DEL", lane.key)] if lane.extra.get("taken") else []
        if block:
            await self._link.client_id(conn)
            move: Command = ("BLMOVE", self._signals, lane.key, "LEFT", "RIGHT", MAX_BLOCK)
        else:
            move = ("LMOVE", self._signals, lane.key, "LEFT", "RIGHT")
        lane.blocked = block
        try:
            replies = await self._link.run(
                conn,
                [*prefix, move, ("PEXPIRE", lane.key, INBOX_TTL_MS)],
                read_timeout=MAX_BLOCK + READ_GRACE,
            )
        except ResponseError as exc:
            if not str(exc).startswith("UNBLOCKED"):
                raise
            # Woken by CLIENT UNBLOCK.  A command postponed by CLIENT PAUSE
            # may still run after this answer (Redis 7.0), which would shift
            # the replies of this batch: drop the connection and recover the
            # inbox instead of guessing.
            await self._link.discard(conn)
            lane.dirty = True
            return None
        except BaseException:
            lane.dirty = True
            raise
        finally:
            lane.blocked = False
        reply = replies[len(prefix)]
        lane.extra["taken"] = reply is not None
        if reply is None:
            return None
        signal = text(reply)
        lane.extra["delivered"] = signal
        return signal

    async def settle(self, lane: Lane) -> None:
        await self._recover(lane)

    async def give_back(self, lane: Lane, item: str) -> None:
        # The copy in the inbox is dropped with the lane's next move.
        await self._push(item, head=True)

    # -- internals --------------------------------------------------------------

    async def _push(self, signal: str, *, head: bool) -> None:
        # The record names this push, not the signal: one signal can be
        # handed back more than once.
        record = self._keys.key(f"pushed:{uuid.uuid4().hex}")
        command = "LPUSH" if head else "RPUSH"

        async def push(ambiguous: bool) -> Any:
            if ambiguous and await self._link.call("EXISTS", record):
                return None  # the earlier attempt went through
            return await self._link.pipeline(
                [
                    ("MULTI",),
                    (command, self._signals, signal),
                    ("SET", record, 1, "PX", PUSH_RECORD_TTL_MS),
                    ("EXEC",),
                ]
            )

        await retrying(push, what="event set")

    async def _recover(self, lane: Lane) -> None:
        """After a lost reply: put back any signal the server moved into the inbox for us."""
        conn = lane.conn or await self._link.borrow()
        try:
            (items,) = await self._link.run(conn, [("LRANGE", lane.key, 0, -1)])
            delivered = lane.extra.get("delivered")
            for item in map(text, items):
                if item != delivered:
                    # Atomic: a repeated recovery cannot push the same copy twice.
                    await self._link.run(
                        conn,
                        [
                            ("MULTI",),
                            ("LREM", lane.key, 1, item),
                            ("LPUSH", self._signals, item),
                            ("EXEC",),
                        ],
                    )
            await self._link.run(conn, [("DEL", lane.key)])
        finally:
            if lane.conn is None:
                await self._link.give_back(conn)
        lane.extra["taken"] = False
        lane.dirty = False
