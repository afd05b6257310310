"""The event's fallback way of waiting: a few blocking connections ("lanes").

Used where waiting in the event's queue is not possible (no scripts or no
channel rights, see ``_queue``).  Each lane moves a signal with BLMOVE from
the event's list into an inbox of its own, registered in the ``inboxes``
sorted set under a lease, and acknowledges it by moving it on into a record.
A waiter that dies between the two leaves the signal in its inbox, where any
other lane finds it (through the registry) and puts it back; a cancelled or
timed-out wait hands back a signal that reached it too late.

:class:`EventLanes` is what :class:`~redsync._core.waiting.Dispatcher` calls:
it lives beside :class:`~redsync.event.RedisEvent`, not on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from .._core.keys import KeySpace
from .._core.link import Command, Link, retrying, text
from .._core.waiting import Dispatcher, Lane
from ..exceptions import RedisEventError

__all__ = ["MAX_BLOCK", "MAX_LANES", "EventLanes"]

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


class EventLanes:
    """One instance's lanes: the backend its dispatcher pulls signals through.

    ``push(signal)`` hands a signal back to the event (to the
    oldest queued waiter, or the head of the list).
    """

    def __init__(
        self,
        link: Link,
        keys: KeySpace,
        instance: str,
        name: str,
        closed_error: Callable[[], BaseException],
        push: Callable[[str], Awaitable[None]],
    ) -> None:
        self.name = name
        self._link = link
        self._push_back = push
        self.signals = keys.key("signals")
        self.inboxes = keys.key("inboxes")
        lanes = [Lane(i, keys.key(f"inbox:{instance}.{i}")) for i in range(MAX_LANES)]
        for lane in lanes:
            lane.extra["ack"] = keys.key(f"acked:{instance}.{lane.index}")
        self.dispatcher: Dispatcher[str] = Dispatcher(
            link, self, lanes, closed_error, max_block=MAX_BLOCK
        )

    # -- called by the dispatcher -------------------------------------------------

    async def pull(self, lane: Lane, block: float | None) -> str | None:
        if lane.dirty:
            await self._recover(lane)
        # Taken only now: recovering may replace the lane's connection and give
        # the old one back, to be lent to the next command on its node.
        lane.conn = conn = await self._link.ensure(lane.conn)
        if block is not None:
            move: Command = ("BLMOVE", self.signals, lane.key, "LEFT", "RIGHT", block)
            read_timeout = block + READ_GRACE
        else:
            move = ("LMOVE", self.signals, lane.key, "LEFT", "RIGHT")
            read_timeout = None
        now = int(time.time() * 1000)
        lane.blocked = block is not None
        lane.extra["used"] = True

        def on_reply(index: int, reply: Any) -> None:
            # Read before the BLMOVE answers: abandoned inboxes are emptied
            # while this lane waits, not after.
            if index == 1 and isinstance(reply, list) and reply:
                self.dispatcher.background(self._reap([text(key) for key in reply]))

        try:
            replies = await self._link.run(
                conn,
                [
                    ("ZADD", self.inboxes, now + INBOX_LEASE_MS, lane.key),
                    ("ZRANGEBYSCORE", self.inboxes, "-inf", now, "LIMIT", 0, REAP_BATCH),
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

    async def accept(self, lane: Lane, signal: str) -> bool:
        """Acknowledge ``signal`` for the waiter the dispatcher claimed."""
        lane.extra["acking"] = signal
        try:
            acked = await retrying(lambda ambiguous: self._ack(lane, signal, ambiguous))
        except BaseException:
            lane.dirty = True
            raise
        lane.extra["acking"] = None
        return acked

    async def refuse(self, lane: Lane, signal: str) -> None:
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
                ("ZREM", self.inboxes, lane.key),
                ("EXEC",),
            ],
        )
        moved = replies[-1][0]
        if moved is not None and text(moved) != signal:  # pragma: no cover - protocol bug
            raise RedisEventError(f"inbox {lane.key!r} held {text(moved)!r}, expected {signal!r}")
        return moved is not None

    async def settle(self, lane: Lane) -> None:
        await self._recover(lane)

    async def give_back(self, lane: Lane, item: str) -> None:
        # The copy in the inbox is dropped with the lane's next move.
        await self._push_back(item)

    # -- internals -------------------------------------------------------------------

    async def unregister(self) -> None:
        """At close: take this instance's inboxes out of the registry, so ``is_set()``
        and reapers stop looking at them.

        A lane whose blocked connection ``close()`` cut stays registered (for one
        inbox lease): should the server still run its BLMOVE after the recovery
        looked, a reaper finds the signal when the lease runs out.
        """
        commands: list[Command] = []
        deadline = int(time.time() * 1000) + INBOX_LEASE_MS
        for lane in self.dispatcher.lanes:
            if lane.extra.get("cut"):
                commands.append(("ZADD", self.inboxes, deadline, lane.key))
            elif lane.extra.get("used") and not lane.dirty:
                commands += self._put_back(lane.key)
        if commands:
            try:
                await asyncio.wait_for(self._link.pipeline(commands), 0.5)
            except Exception as exc:  # registrations run out on their own
                log.debug("unregistering the inboxes of %r failed: %r", self.name, exc)

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
                            ("LPUSH", self.signals, acking),
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
            ("LMOVE", inbox, self.signals, "RIGHT", "LEFT"),
            ("ZREM", self.inboxes, inbox),
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
