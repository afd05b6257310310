"""A distributed one-to-one signal for asyncio.

Each :meth:`RedisEvent.set` adds one signal to a Redis list; each
:meth:`RedisEvent.wait` takes exactly one.  Signals nobody waits for stay in
Redis until a waiter comes.  Waiting blocks on the server (BLMOVE into a
per-lane inbox) and a signal counts as delivered only once the waiter has
acknowledged it, by moving it out of the inbox.  A waiter that dies between
the two leaves the signal in its inbox, where any other waiter finds it
(through the registry of inboxes) and puts it back; a cancelled or timed-out
wait hands back a signal that reached it too late.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError

from .._core import validate as _validate
from .._core.keys import KeySpace
from .._core.link import Client, Link, retrying, text
from ..exceptions import RedisEventClosedError, RedisEventTimeoutError
from ._lanes import EventLanes
from ._queue import SCRIPTS, Queue

__all__ = ["EventStatistics", "RedisEvent"]

log = logging.getLogger("redsync")

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
        self, redis_client: Client, name: str, *, key_prefix: str = "redsync:event"
    ) -> None:
        _validate.client(redis_client)
        self.name = _validate.name(name)
        key_prefix = _validate.key_prefix(key_prefix)
        self._keys = KeySpace(key_prefix, name)
        self._signals = self._keys.key("signals")
        self._inboxes = self._keys.key("inboxes")
        self._link = Link(redis_client, self._signals)
        instance = uuid.uuid4().hex[:16]
        closed = lambda: RedisEventClosedError(f"event {name!r} is closed")  # noqa: E731
        #: Blocking connections: the fallback without scripts or channel rights.
        self._lanes = EventLanes(
            self._link, self._keys, instance, name, closed, functools.partial(self._push, head=True)
        )
        self._dispatcher = self._lanes.dispatcher
        #: Waits in the event's queue in Redis (see ``_queue``).
        self._queue = Queue(self._link, self._keys, instance, name, closed)

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
        timeout_error = lambda: RedisEventTimeoutError(  # noqa: E731
            f"event {self.name!r}: no signal within {timeout} s"
        )
        if await self._queue.get(wait, timeout_error):
            return
        await self._dispatcher.get(wait, timeout_error)

    async def clear(self) -> None:
        """Drop every pending signal."""
        await retrying(lambda _: self._link.call("DEL", self._signals), what="event clear")

    async def is_set(self) -> bool:
        """Whether at least one signal is pending (set and not yet taken by a ``wait()``).

        A signal the server has just moved into a waiter's inbox, but that no
        ``wait()`` has acknowledged yet, is still pending: it is counted, so
        ``is_set()`` never says False for a moment while a signal is on its way
        to a waiter that has already given up.
        """
        return await retrying(lambda _: self._pending(exact=False), what="event is_set") > 0

    async def statistics(self) -> EventStatistics:
        pending = await retrying(lambda _: self._pending(exact=True), what="event statistics")
        return EventStatistics(self.name, pending, self._waiting, self._dispatcher.active_lanes)

    async def _pending(self, *, exact: bool) -> int:
        """Signals in the list plus signals sitting in inboxes, read atomically.

        Every non-empty inbox is registered (a lane registers before it moves
        into it, and leaves the registry in the same transaction that empties
        it), so one transaction reading the list and the registered inboxes
        sees every signal not yet taken.  Each read also learns the registry's
        members; when it has members whose inboxes this read did not count (the
        first read counts none), look again.  Unless ``exact``, any signal
        found answers at once.
        """
        inboxes: list[str] = []
        total = 0
        for _ in range(9):
            replies = await self._link.pipeline(
                [
                    ("MULTI",),
                    ("LLEN", self._signals),
                    ("HLEN", self._queue.handed),
                    ("ZRANGE", self._inboxes, 0, -1),
                    *[("LLEN", inbox) for inbox in inboxes],
                    ("EXEC",),
                ]
            )
            length, handed, members, *sizes = replies[-1]
            total = int(length) + int(handed) + sum(int(size) for size in sizes)
            registered = {text(m) for m in members}
            if registered <= set(inboxes) or (total and not exact):
                return total
            inboxes = sorted(registered)
        return total

    async def close(self) -> None:
        """Stop waiting: pending ``wait()`` calls raise :class:`RedisEventError`.

        Optional: an event holds no background task while nobody waits.
        """
        await self._queue.close()
        await self._dispatcher.close(grace=0.3)
        await self._lanes.unregister()
        await self._link.close()

    @property
    def _waiting(self) -> int:
        """Tasks of this instance waiting for a signal."""
        return self._dispatcher.waiting + self._queue.waiting

    def __repr__(self) -> str:
        return f"<RedisEvent {self.name!r} waiting={self._waiting}>"

    async def _push(self, signal: str, *, head: bool) -> None:
        """One signal: handed to the oldest live queued waiter, else onto the
        list (its head for a signal handed back).  Exactly once, even when
        retried after a lost reply."""
        # The record names this push, not the signal: one signal can be
        # handed back more than once.
        record = self._keys.key(f"pushed:{uuid.uuid4().hex}")
        queue = self._queue

        async def push(ambiguous: bool) -> Any:
            if queue.usable:
                try:
                    return await self._link.script(
                        SCRIPTS["set"],
                        [self._signals, queue.waiters, queue.leases, queue.handed, record],
                        [signal, queue.channel, PUSH_RECORD_TTL_MS, "1" if head else "0"],
                    )
                except NoPermissionError as exc:
                    # Nothing ran.  Waiters of this process then wait on
                    # lanes; a queued one elsewhere takes it with its renewal.
                    queue.refused(exc)
            if ambiguous and await self._link.call("EXISTS", record):
                return None  # the earlier attempt went through
            command = "LPUSH" if head else "RPUSH"
            return await self._link.pipeline(
                [
                    ("MULTI",),
                    (command, self._signals, signal),
                    ("SET", record, 1, "PX", PUSH_RECORD_TTL_MS),
                    ("EXEC",),
                ]
            )

        await retrying(push, what="event set")
