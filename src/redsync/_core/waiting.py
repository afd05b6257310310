"""Local waiters served by a few blocking connections ("lanes").

A primitive instance may have thousands of tasks waiting on it.  Giving each
its own blocking connection would exhaust the client's pool, so waiters queue
locally in FIFO order and at most ``max_lanes`` lanes block on the server on
their behalf.  Each lane owns one borrowed connection while it runs and moves
items (permit tokens, event signals) with BLMOVE into a destination list of
its own, so an item the server has handed out is never in limbo: it is either
still at the source or in the lane's list, where the owner can find it again
after a lost reply.

Lanes are never woken early: no ``CLIENT UNBLOCK`` (an ``@dangerous``
command that managed Redis refuses), and no cancelled read (a cancelled read
closes the connection and loses the reply of an item the server may already
have moved).  Instead each server-side block is only as long as the waiters
need: a lane blocks until the deadline of the waiter it covers (capped), so a
``timeout`` that runs out ends the block with it.  A lane whose waiters left
early (cancelled) ends at its own server-side timeout; an item it receives for
nobody is *refused*: returned to where other waiters take it from.  Only
``close()`` stops blocked lanes at once, by closing their connections; what a
closed lane's last move may have delivered is then recovered by the owner.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from redis.asyncio.connection import AbstractConnection

from .link import AMBIGUOUS, TRANSIENT, Link

log = logging.getLogger("redsync")

T = TypeVar("T")


#: Shortest server-side block (seconds): BLMOVE's 0 would mean "forever".
MIN_BLOCK = 0.01


@dataclass(eq=False)
class Lane:
    """One blocking consumer: an index, an optional destination key and, while active,
    a task and a borrowed connection."""

    index: int
    #: The lane's own destination list, for primitives that move into one per lane.
    key: str = ""
    conn: AbstractConnection | None = None
    task: asyncio.Task[None] | None = None
    #: The server is (or may be) blocking this lane's connection.
    blocked: bool = False
    #: The outcome of the last move is unknown (its reply was lost).
    dirty: bool = False
    #: Taken by a one-off non-blocking attempt (see Dispatcher.try_get).
    reserved: bool = False
    #: While the lane is pulling: the waiter deadline (loop time, inf allowed)
    #: its server-side block was sized for.
    covers: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


class LaneBackend(Protocol[T]):
    """What a primitive supplies to its :class:`Dispatcher`: how items move.

    An object of its own beside the primitive's public class, so that the
    dispatcher's calls are not part of any public namespace.
    """

    async def pull(self, lane: Lane, block: float | None) -> T | None:
        """Move one item into ``lane``: without waiting if ``block`` is None, else
        waiting server-side for at most ``block`` seconds (at least MIN_BLOCK)."""

    async def accept(self, lane: Lane, item: T) -> bool:
        """Make ``item`` the claimed waiter's (the event acknowledges it); False if
        it turned out to be gone (then nothing is delivered)."""

    async def refuse(self, lane: Lane, item: T) -> None:
        """Return an item that arrived for nobody, straight from the lane."""

    async def give_back(self, lane: Lane, item: T) -> None:
        """Return an accepted item nobody is waiting for any more."""

    async def settle(self, lane: Lane) -> None:
        """Recover what a move with a lost reply may have left in ``lane``."""


@dataclass(eq=False)
class _Waiter(Generic[T]):
    fut: asyncio.Future[T]
    #: Loop time by which the waiter gives up (inf: never).
    deadline: float
    timeout_error: Callable[[], BaseException]
    timer: asyncio.TimerHandle | None = None


class Dispatcher(Generic[T]):
    """FIFO hand-off of items pulled by lanes to local waiting tasks.

    A lane that receives an item *claims* the longest-waiting task first (its
    timeout is then suspended for the one round trip the hand-over takes: the
    item reached it in time), and only then makes the item the task's.  With
    no task left to claim, the item is refused and goes back at once, so it
    is never out of sight of other waiters for longer than that one step.
    """

    def __init__(
        self,
        link: Link,
        backend: LaneBackend[T],
        lanes: list[Lane],
        closed_error: Callable[[], BaseException],
        max_block: float,
    ) -> None:
        self._link = link
        self._backend = backend
        self.lanes = lanes
        self._closed_error = closed_error
        self._max_block = max_block
        self._waiters: collections.deque[_Waiter[T]] = collections.deque()
        self._active = 0
        self._closed = False
        self._background: set[asyncio.Future[None]] = set()

    # -- inspection ---------------------------------------------------------

    @property
    def waiting(self) -> int:
        # Waiters leave the queue when claimed, and right after they expire or
        # are cancelled, so its length is the number of waiting tasks.
        return len(self._waiters)

    @property
    def active_lanes(self) -> int:
        return self._active

    # -- waiting ------------------------------------------------------------

    async def get(self, timeout: float | None, timeout_error: Callable[[], BaseException]) -> T:
        """Wait for an item, in FIFO order with the other local waiters."""
        if self._closed:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        waiter = _Waiter(
            fut, loop.time() + timeout if timeout is not None else math.inf, timeout_error
        )
        if timeout is not None:
            waiter.timer = loop.call_later(timeout, _expire, fut, timeout_error)
        self._waiters.append(waiter)
        self._spawn()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # An item was handed to us just as we were cancelled: pass it
                # on rather than drop it.
                self.offer_or_return(None, fut.result())
            raise
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    async def try_get(self) -> T | None:
        """One attempt that does not block: use an idle lane, if any."""
        if self._closed:
            raise self._closed_error()
        if self.waiting:
            return None  # the tasks already queued come first
        for lane in self.lanes:
            if lane.task is None and not lane.reserved:
                lane.reserved = True  # keep _spawn() off this lane and its connection
                try:
                    item = await self._backend.pull(lane, None)
                    if item is not None and not await self._backend.accept(lane, item):
                        item = None
                    return item
                finally:
                    await self._settle(lane)
                    await self._park(lane)
                    lane.reserved = False
                    if not self._closed:
                        self._spawn()  # a waiter may have queued meanwhile
        return None

    # -- delivery -----------------------------------------------------------

    def deliver(self, item: T) -> bool:
        """Hand ``item`` to the longest-waiting task; False if none waits."""
        waiter = self._claim()
        if waiter is None:
            return False
        waiter.fut.set_result(item)
        return True

    def offer_or_return(self, lane: Lane | None, item: T) -> None:
        """Deliver ``item`` locally, or return it to Redis in the background."""
        if not self.deliver(item):
            self.background(self._backend.give_back(lane or self.lanes[0], item))

    def _claim(self) -> _Waiter[T] | None:
        """Take the longest-waiting live task off the queue, its timeout suspended."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.fut.done():
                if waiter.timer is not None:
                    waiter.timer.cancel()
                return waiter
        return None

    def _unclaim(self, waiter: _Waiter[T]) -> None:
        """Put a claimed task back at the head of the queue (nothing was delivered)."""
        if waiter.fut.done():
            return
        if self._closed:
            waiter.fut.set_exception(self._closed_error())
            return
        loop = asyncio.get_running_loop()
        left = waiter.deadline - loop.time()
        if left <= 0:
            waiter.fut.set_exception(waiter.timeout_error())
            return
        if waiter.deadline != math.inf:
            waiter.timer = loop.call_later(left, _expire, waiter.fut, waiter.timeout_error)
        self._waiters.appendleft(waiter)

    async def _hand_over(self, lane: Lane, item: T) -> None:
        waiter = self._claim()
        if waiter is None:
            await self._backend.refuse(lane, item)
            return
        try:
            accepted = await self._backend.accept(lane, item)
        except BaseException:
            self._unclaim(waiter)
            raise
        if not accepted:
            self._unclaim(waiter)
        elif waiter.fut.done():  # cancelled during the hand-over
            self.offer_or_return(lane, item)
        else:
            waiter.fut.set_result(item)

    def background(self, work: Awaitable[None]) -> None:
        """Run ``work`` without waiting for it; keep a reference until it is done."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("redsync background operation failed: %r", task.exception())

    # -- lanes --------------------------------------------------------------

    def _spawn(self) -> None:
        want = min(self.waiting, len(self.lanes))
        for lane in self.lanes:
            if self._active >= want:
                return
            if lane.task is None and not lane.reserved:
                self._active += 1
                lane.task = asyncio.ensure_future(self._run(lane))

    def _block_for(self, lane: Lane) -> float:
        """How long ``lane`` blocks on the server this time.

        Pulling lanes cover the waiters' deadlines from the latest down: this
        lane takes the latest deadline that no other pulling lane already
        covers.  So when a waiter's timeout runs out, the block that was there
        for it ends too, and no connection stays blocked for a wait that is
        over (a waiter without a timeout gets ``max_block``, and again after).
        """
        now = asyncio.get_running_loop().time()
        covered = sorted(
            (o.covers for o in self.lanes if o.covers is not None and o is not lane),
            reverse=True,
        )
        # Only the latest len(covered) + 1 deadlines matter; waiters without a
        # timeout (the usual case) come first, so stop counting them early.
        untimed = 0
        for waiter in self._waiters:
            untimed += waiter.deadline == math.inf
            if untimed > len(covered):
                wanted = math.inf
                break
        else:
            deadlines = heapq.nlargest(len(covered) + 1, (w.deadline for w in self._waiters))
            wanted = deadlines[-1] if deadlines else now
            for index, deadline in enumerate(deadlines):
                if index >= len(covered) or covered[index] < deadline:
                    wanted = deadline
                    break
        lane.covers = wanted
        return round(max(MIN_BLOCK, min(self._max_block, wanted - now)), 3)

    async def _run(self, lane: Lane) -> None:
        delay = 0.02
        cancelled = False
        try:
            while not self._closed and self._active <= self.waiting:
                block = self._block_for(lane)
                try:
                    try:
                        item = await self._backend.pull(lane, block)
                    finally:
                        lane.covers = None
                    if item is not None:
                        await self._hand_over(lane, item)
                except AMBIGUOUS + TRANSIENT as exc:
                    if self._closed:
                        break
                    log.debug("lane %s: %r; retrying in %.2fs", lane.key, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.02
        except asyncio.CancelledError:
            cancelled = True
            raise
        except Exception:  # a bug or a misconfigured server: wake the waiters with it
            log.exception("redsync lane %s stopped", lane.key)
            self._fail_all_if_idle()
            raise
        finally:
            self._active -= 1
            lane.blocked = False
            await self._settle(lane)
            await self._park(lane)
            lane.task = None  # only now may another task take this lane
            # A waiter may have arrived between the loop test and here (but a
            # cancelled lane must not start another: its loop is shutting down).
            if not self._closed and not cancelled:
                self._spawn()

    def _fail_all_if_idle(self) -> None:
        if self._active <= 1:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.fut.done():
                    waiter.fut.set_exception(self._closed_error())

    async def _settle(self, lane: Lane) -> None:
        if lane.dirty:
            try:
                await self._backend.settle(lane)
            except Exception as exc:  # retried when the lane is next used
                log.debug("lane %s: recovery failed: %r", lane.key, exc)

    async def _park(self, lane: Lane) -> None:
        conn, lane.conn = lane.conn, None
        if conn is not None:
            await self._link.give_back(conn)

    async def close(self, grace: float = 0.5) -> None:
        """Stop every lane and fail the remaining waiters.

        Blocked lanes are stopped by closing their connections (the server then
        drops their BLMOVE); each lane then recovers what its last move may have
        delivered (``settle``) before it ends.
        """
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.fut.done():
                waiter.fut.set_exception(self._closed_error())
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        for lane in self.lanes:
            if lane.task is not None and lane.blocked and lane.conn is not None:
                lane.extra["cut"] = True
                await self._link.discard(lane.conn)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        await self.drain(grace)

    async def drain(self, grace: float) -> None:
        """Wait (at most ``grace`` seconds) for the background returns in flight."""
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace)


def _expire(fut: asyncio.Future[T], error: Callable[[], BaseException]) -> None:
    if not fut.done():
        fut.set_exception(error())
