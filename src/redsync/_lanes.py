"""Local waiters served by a few blocking connections ("lanes").

A primitive instance may have thousands of tasks waiting on it.  Giving each
its own blocking connection would exhaust the client's pool, so waiters queue
locally in FIFO order and at most ``max_lanes`` lanes block on the server on
their behalf.  Each lane owns one borrowed connection while it runs and moves
items (permit tokens, event signals) with BLMOVE into a destination list of
its own, so an item the server has handed out is never in limbo: it is either
still at the source or in the lane's list, where the owner can find it again
after a lost reply.

Lanes never cancel a blocking read to stop it, because a cancelled read
closes the connection and may throw away an item the server already moved.
Instead, surplus lanes are woken with ``CLIENT UNBLOCK ... TIMEOUT`` and read
their real reply; an item that arrives for nobody is handed back.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from redis.asyncio.connection import AbstractConnection

from ._link import AMBIGUOUS, TRANSIENT, Link

log = logging.getLogger("redsync")

T = TypeVar("T")


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
    extra: dict[str, object] = field(default_factory=dict)


class LaneBackend(Protocol[T]):
    async def pull(self, lane: Lane, block: bool) -> T | None:
        """Move one item into ``lane`` (waiting server-side if ``block``)."""

    async def give_back(self, lane: Lane, item: T) -> None:
        """Return an item nobody is waiting for."""

    async def settle(self, lane: Lane) -> None:
        """Recover what a move with a lost reply may have left in ``lane``."""


class Dispatcher(Generic[T]):
    """FIFO hand-off of items pulled by lanes to local waiting tasks."""

    def __init__(
        self,
        link: Link,
        backend: LaneBackend[T],
        lanes: list[Lane],
        closed_error: Callable[[], BaseException],
    ) -> None:
        self._link = link
        self._backend = backend
        self.lanes = lanes
        self._closed_error = closed_error
        self._waiters: collections.deque[asyncio.Future[T]] = collections.deque()
        self._active = 0
        self._closed = False
        self._background: set[asyncio.Future[None]] = set()

    # -- inspection ---------------------------------------------------------

    @property
    def waiting(self) -> int:
        # Futures leave the queue when served, and right after they expire or
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
        self._waiters.append(fut)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _expire, fut, timeout_error)
        self._spawn()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # An item was handed to us just as we were cancelled or timed
                # out: pass it on rather than drop it.
                self.offer_or_return(None, fut.result())
            raise
        finally:
            if timer is not None:
                timer.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass
            self._trim()

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
                    return await self._backend.pull(lane, block=False)
                finally:
                    await self._settle(lane)
                    await self._park(lane)
                    lane.reserved = False
        return None

    # -- delivery -----------------------------------------------------------

    def deliver(self, item: T) -> bool:
        """Hand ``item`` to the longest-waiting task; False if none waits."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(item)
                return True
        return False

    def offer_or_return(self, lane: Lane | None, item: T) -> None:
        """Deliver ``item`` locally, or return it to Redis in the background."""
        if not self.deliver(item):
            self.background(self._backend.give_back(lane or self.lanes[0], item))

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

    def _trim(self) -> None:
        surplus = self._active - self.waiting
        if surplus <= 0:
            return
        for lane in self.lanes:
            if surplus <= 0:
                break
            if lane.task is not None and lane.blocked and lane.conn is not None:
                client_id = self._link.known_client_id(lane.conn)
                if client_id is not None:
                    lane.blocked = False  # one wake-up is enough
                    self.background(self._link.unblock(client_id, lane.conn))
                    surplus -= 1

    async def _run(self, lane: Lane) -> None:
        delay = 0.02
        cancelled = False
        try:
            while not self._closed and self._active <= self.waiting:
                try:
                    item = await self._backend.pull(lane, block=True)
                except AMBIGUOUS + TRANSIENT as exc:
                    log.debug("lane %s: %r; retrying in %.2fs", lane.key, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.02
                if item is not None:
                    self.offer_or_return(lane, item)
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
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(self._closed_error())

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
        """Stop every lane (waking them first) and fail the remaining waiters."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self._closed_error())
        tasks = [lane.task for lane in self.lanes if lane.task is not None]
        self._trim()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        if self._background:
            await asyncio.wait(list(self._background), timeout=grace)


def _expire(fut: asyncio.Future[T], error: Callable[[], BaseException]) -> None:
    if not fut.done():
        fut.set_exception(error())
