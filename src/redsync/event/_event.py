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

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoPermissionError, ResponseError

from .._core import validate as _validate
from .._core.keys import KeySpace
from .._core.link import Client, Command, Link, retrying, text
from .._core.waiting import Dispatcher, Lane
from ..exceptions import RedisEventClosedError, RedisEventError, RedisEventTimeoutError
from ._queue import SCRIPTS, Queue

__all__ = ["EventStatistics", "RedisEvent"]

log = logging.getLogger("redsync")

MAX_LANES = 16
#: Longest single BLMOVE; a lane re-registers its inbox each time it blocks again.
MAX_BLOCK = 10.0
READ_GRACE = 5.0
#: How long after a lane blocks its inbox may be presumed abandoned (ms).  Only
#: speed depends on it: a live waiter whose signal is taken back sees its
#: acknowledgement fail and waits again.
INBOX_LEASE_MS = int((MAX_BLOCK + 10.0) * 1000)
#: How many abandoned inboxes one lane looks up per block.
REAP_BATCH = 8
#: How long a lane's acknowledgement record is kept (ms): for retries after a lost reply.
ACK_RECORD_TTL_MS = 120_000
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
        lanes = [Lane(i, self._keys.key(f"inbox:{instance}.{i}")) for i in range(MAX_LANES)]
        for lane in lanes:
            lane.extra["ack"] = self._keys.key(f"acked:{instance}.{lane.index}")
        closed = lambda: RedisEventClosedError(f"event {name!r} is closed")  # noqa: E731
        self._dispatcher: Dispatcher[str] = Dispatcher(
            self._link, self, lanes, closed, max_block=MAX_BLOCK
        )
        #: Waits in the event's queue in Redis (see ``_queue``); lanes are the
        #: fallback without scripts or channel rights.
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
        await self._unregister_lanes()
        await self._link.close()

    @property
    def _waiting(self) -> int:
        """Tasks of this instance waiting for a signal."""
        return self._dispatcher.waiting + self._queue.waiting

    def __repr__(self) -> str:
        return f"<RedisEvent {self.name!r} waiting={self._waiting}>"

    # -- lanes (called by the dispatcher) ------------------------------------

    async def _lane_pull(self, lane: Lane, block: float | None) -> str | None:
        if lane.dirty:
            await self._recover(lane)
        # Taken only now: recovering may replace the lane's connection and give
        # the old one back, to be lent to the next command on its node.
        lane.conn = conn = await self._link.ensure(lane.conn)
        if block is not None:
            move: Command = ("BLMOVE", self._signals, lane.key, "LEFT", "RIGHT", block)
            read_timeout = block + READ_GRACE
        else:
            move = ("LMOVE", self._signals, lane.key, "LEFT", "RIGHT")
            read_timeout = None
        now = int(time.time() * 1000)
        lane.blocked = block is not None
        lane.extra["used"] = True

        def on_reply(index: int, reply: Any) -> None:
            # Read before the BLMOVE answers: abandoned inboxes are emptied
            # while this lane waits, not after.
            if index == 1 and isinstance(reply, list) and reply:
                self._dispatcher.background(self._reap([text(key) for key in reply]))

        try:
            replies = await self._link.run(
                conn,
                [
                    ("ZADD", self._inboxes, now + INBOX_LEASE_MS, lane.key),
                    ("ZRANGEBYSCORE", self._inboxes, "-inf", now, "LIMIT", 0, REAP_BATCH),
                    move,
                ],
                read_timeout=read_timeout,
                on_reply=on_reply,
            )
        except ResponseError as exc:
            lane.dirty = True
            if not str(exc).startswith("UNBLOCKED"):
                raise
            # Woken by somebody else's CLIENT UNBLOCK (this library sends none).
            # A command postponed by CLIENT PAUSE may still run after that
            # answer (Redis 7.0), which would shift the replies of this batch:
            # drop the connection and recover the inbox instead of guessing.
            await self._link.discard(conn)
            return None
        except BaseException:
            lane.dirty = True
            raise
        finally:
            lane.blocked = False
        if replies[2] is None:
            return None
        return text(replies[2])

    async def _lane_accept(self, lane: Lane, signal: str) -> bool:
        """Acknowledge ``signal`` for the waiter the dispatcher claimed."""
        lane.extra["acking"] = signal
        try:
            acked = await retrying(lambda ambiguous: self._ack(lane, signal, ambiguous))
        except BaseException:
            lane.dirty = True
            raise
        lane.extra["acking"] = None
        return acked

    async def _lane_refuse(self, lane: Lane, signal: str) -> None:
        """Nobody waits any more: the signal goes from the inbox back to the head of
        the list in one transaction, so it is in sight of ``is_set()`` throughout."""
        try:
            await retrying(lambda _: self._recover(lane), what="event hand-back")
        except BaseException:
            lane.dirty = True
            raise

    async def _ack(self, lane: Lane, signal: str, ambiguous: bool) -> bool:
        """Take ``signal`` out of the lane's inbox; False if another waiter put it back.

        The signal moves into the lane's acknowledgement record, so an
        attempt whose reply was lost can be told apart from a reaped inbox.
        """
        record = lane.extra["ack"]
        lane.conn = conn = await self._link.ensure(lane.conn)
        if ambiguous:
            # Still in the inbox: the earlier attempt did not run.  Else it ran
            # if the record has the signal (and the inbox was reaped if not).
            # The inbox is looked at first: the record may hold this very signal
            # from an earlier acknowledgement, before it was handed back.
            replies = await self._link.run(
                conn,
                [("MULTI",), ("LRANGE", lane.key, 0, -1), ("LRANGE", record, 0, -1), ("EXEC",)],
            )
            in_inbox, in_record = replies[-1]
            if signal not in map(text, in_inbox):
                return signal in map(text, in_record)
        replies = await self._link.run(
            conn,
            [
                ("MULTI",),
                ("LMOVE", lane.key, record, "LEFT", "RIGHT"),
                ("LTRIM", record, -1, -1),
                ("PEXPIRE", record, ACK_RECORD_TTL_MS),
                ("ZREM", self._inboxes, lane.key),
                ("EXEC",),
            ],
        )
        moved = replies[-1][0]
        if moved is not None and text(moved) != signal:  # pragma: no cover - protocol bug
            raise RedisEventError(f"inbox {lane.key!r} held {text(moved)!r}, expected {signal!r}")
        return moved is not None

    async def _lane_settle(self, lane: Lane) -> None:
        await self._recover(lane)

    async def _lane_give_back(self, lane: Lane, item: str) -> None:
        # The copy in the inbox is dropped with the lane's next move.
        await self._push(item, head=True)

    # -- internals --------------------------------------------------------------

    async def _unregister_lanes(self) -> None:
        """At close: take this instance's inboxes out of the registry, so ``is_set()``
        and reapers stop looking at them.

        A lane whose blocked connection ``close()`` cut stays registered (for one
        inbox lease): should the server still run its BLMOVE after the recovery
        looked, a reaper finds the signal when the lease runs out.
        """
        commands: list[Command] = []
        deadline = int(time.time() * 1000) + INBOX_LEASE_MS
        for lane in self._dispatcher.lanes:
            if lane.extra.get("cut"):
                commands.append(("ZADD", self._inboxes, deadline, lane.key))
            elif lane.extra.get("used") and not lane.dirty:
                commands += self._put_back(lane.key)
        if commands:
            try:
                await asyncio.wait_for(self._link.pipeline(commands), 0.5)
            except Exception as exc:  # registrations run out on their own
                log.debug("unregistering the inboxes of %r failed: %r", self.name, exc)

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

    async def _recover(self, lane: Lane) -> None:
        """After a lost reply or a cancellation: hand back what this lane holds undelivered.

        That is a signal still in the inbox, or one acknowledged (moved into
        the record) but never returned to a waiter.
        """
        own = lane.conn is None
        conn = await self._link.borrow() if own else await self._link.ensure(lane.conn)
        if not own:
            lane.conn = conn
        try:
            await self._link.run(conn, self._put_back(lane.key))
            acking = lane.extra.get("acking")
            if isinstance(acking, str):
                record = lane.extra["ack"]
                replies = await self._link.run(conn, [("LRANGE", record, 0, -1)])
                if acking in map(text, replies[0]):
                    await self._link.run(
                        conn,
                        [
                            ("MULTI",),
                            ("LREM", record, 0, acking),
                            ("LPUSH", self._signals, acking),
                            ("EXEC",),
                        ],
                    )
        finally:
            if own:
                await self._link.give_back(conn)
        lane.extra["acking"] = None
        lane.dirty = False

    def _put_back(self, inbox: str) -> list[Command]:
        """One transaction: the inbox's signal (at most one) back to the head, unregistered."""
        return [
            ("MULTI",),
            ("LMOVE", inbox, self._signals, "RIGHT", "LEFT"),
            ("ZREM", self._inboxes, inbox),
            ("EXEC",),
        ]

    async def _reap(self, inboxes: list[str]) -> None:
        """Put back the signals of inboxes whose waiters stopped re-registering.

        No check that the owner is really gone is needed: if it is alive and
        was about to acknowledge, its acknowledgement finds the inbox empty
        and it waits again, so a signal is never delivered twice.
        """
        conn = await self._link.borrow()
        try:
            await self._link.run(conn, [cmd for inbox in inboxes for cmd in self._put_back(inbox)])
        finally:
            await self._link.give_back(conn)
