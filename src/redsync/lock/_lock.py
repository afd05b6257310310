"""A distributed mutex with fencing tokens, for asyncio.

How it works, in short (ARCHITECTURE.md has the details and invariants):

* A lock is a semaphore of count 1 under its own key prefix: one permit
  token, taken into a leased slot of the holding instance, renewed by the
  event loop's one renewal task, handed straight to the oldest live waiter
  on release, reclaimed from a holder that died.  Everything the semaphore
  guarantees under faults holds for the lock.
* A *fence* is issued to every new holder by ``lua/fence.lua``, only while
  its token is in its slot: the server time in microseconds, raised above
  the last fence.  Holds never overlap in the server's order, so fences rise
  in the order of holds, and a resource that refuses a fence lower than one
  it has seen refuses a holder that stalled past its lease.  An uncontended
  acquisition sends the take from the pool and the fence in one round trip;
  a release that hands the lock to a waiter issues the waiter's fence and
  sends it with the notice.
* Ownership is local: the task that acquired holds it (``owned()``,
  ``fence``); a re-entrant lock counts the owner's nested acquisitions and
  sends nothing for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .._core import validate as _validate
from .._core.keys import KeySpace
from .._core.link import Client, Command, Link, Script, retrying, text
from ..exceptions import (
    RedisLockClosedError,
    RedisLockError,
    RedisLockLeaseLostError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
    RedisSemaphoreClosedError,
    RedisSemaphoreCountMismatchError,
    RedisSemaphoreLeaseLostError,
    RedisSemaphoreTimeoutError,
)
from ..semaphore import RedisSemaphore
from ..semaphore._ops import LuaOps
from ..semaphore._semaphore import _link_for
from ..semaphore._slot import Holding, Slot

__all__ = ["LockStatistics", "RedisLock"]

log = logging.getLogger("redsync")

FENCE = Script("redsync.lock", "fence")
#: ``guarded()`` cancels its body once no renewal has been confirmed for this
#: share of the lease, measured from the send time of the last confirmed one.
GUARD_SHARE = 2 / 3


@dataclass(frozen=True)
class LockStatistics:
    """A snapshot from :meth:`RedisLock.statistics`."""

    name: str
    #: Somebody, anywhere, holds the lock (or it is on its way to a waiter).
    locked: bool
    #: This instance holds it.
    held_here: bool
    #: The fence of the hold through this instance, if any.
    fence: int | None
    #: How deep the owning task's re-entrant acquisitions go (0: not held here).
    depth: int
    tasks_waiting: int
    leases_lost: int


@dataclass(eq=False)
class _Hold:
    """The lock as held through this instance."""

    holding: Holding
    owner: object
    fence: int
    depth: int = 1


class RedisLock:
    """A lock shared by every process that uses the same Redis, name and prefix.

    ::

        lock = RedisLock(redis, "invoice-42")
        async with lock as fence:
            await store.write(data, fence=fence)  # the store refuses older fences

    Like :class:`asyncio.Lock`: one holder at a time, any task may
    :meth:`release` a lock held through the instance, waiters get it in
    FIFO order (across processes too).  Unlike it, the hold is a lease:
    a holder whose process dies or stalls for longer than ``lease_ttl``
    loses it, and :meth:`guarded` steps down before that can happen.

    ``reentrant=True`` lets the owning task acquire again (counted; the
    outermost release returns the lock); with ``reentrant=False`` a second
    acquisition by the owning task raises :class:`RedisLockError` at once
    instead of deadlocking.  ``replicas``/``replica_timeout`` are as for
    :class:`~redsync.RedisSemaphore`.  The constructor does no I/O.
    """

    def __init__(
        self,
        redis_client: Client,
        name: str,
        *,
        lease_ttl: float = 30.0,
        key_prefix: str = "redsync:lock",
        reentrant: bool = False,
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        _validate.client(redis_client)
        self.name = _validate.name(name)
        self._prefix = _validate.key_prefix(key_prefix)
        self.lease_ttl = _validate.lease_ttl(lease_ttl)
        if not isinstance(reentrant, bool):
            raise TypeError(f"reentrant must be True or False, got {reentrant!r}")
        self.reentrant = reentrant
        self._client = redis_client
        self._keys = KeySpace(self._prefix, name)
        # Built now so that bad replication options raise here, not later.
        self._link: Link = _link_for(redis_client, self._keys, replicas, replica_timeout)
        self._replicas = replicas
        self._replica_timeout = replica_timeout
        self._fence_key = self._keys.key("fence")
        self._sem: RedisSemaphore | None = None
        self._opening: asyncio.Lock | None = None
        self._hold: _Hold | None = None
        self._closed = False
        self._leases_lost = 0
        self._lost_event = asyncio.Event()
        self._lost_callbacks: list[Callable[[], object]] = []

    # -- the asyncio.Lock-like API ---------------------------------------------

    async def acquire(self, timeout: float | None = None) -> int:
        """Take the lock, waiting up to ``timeout`` seconds; return its fence.

        ``None`` waits as long as it takes; ``0`` or less makes one attempt
        that does not block.  Raises :class:`RedisLockTimeoutError` when time
        runs out.  The fence is an int greater than every fence handed out
        before for this lock.  Cancelling the call at any point leaves the
        lock held by nobody it should not be.
        """
        return await self._acquire_for(asyncio.current_task(), timeout)

    async def _acquire_for(self, task: object, timeout: float | None) -> int:
        """:meth:`acquire` on behalf of ``task`` (a task, or a thread of the
        blocking facade), which then owns the hold."""
        wait = _validate.timeout(timeout)
        hold = self._hold
        if hold is not None and hold.owner is task and not hold.holding.lost:
            if not self.reentrant:
                raise RedisLockError(
                    f"lock {self.name!r} is already held by this task; release it first, "
                    "or create the lock with reentrant=True"
                )
            hold.depth += 1
            return hold.fence
        sem = await self._semaphore()
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                holding = await sem._acquire_for(task, left)
            except RedisSemaphoreTimeoutError:
                raise RedisLockTimeoutError(
                    f"lock {self.name!r}: not acquired within {timeout} s"
                ) from None
            except RedisSemaphoreClosedError:
                raise self._closed_error() from None
            try:
                fence = await self._fence_of(holding)
            except BaseException:
                # Cancelled or failed after the take: the permit goes back.
                sem._spawn(self._give_back(sem, holding))
                raise
            if fence is not None:
                self._hold = _Hold(holding, task, fence)
                return fence
            # The lease ran out between the take and the fence: not ours.
            await self._give_back(sem, holding)

    async def release(self) -> None:
        """Release the lock held through this instance (by any of its tasks).

        For a re-entrant lock, undoes one acquisition; the outermost returns
        the lock (the inner ones send nothing).  Raises
        :class:`RedisLockNotAcquiredError` when nothing is held through this
        instance, and :class:`RedisLockLeaseLostError` when the lease had run
        out and the lock was taken back.
        """
        hold = self._hold
        if hold is None:
            raise RedisLockNotAcquiredError(
                f"lock {self.name!r}: release() called, but it is not held through this "
                "instance; call acquire() (or use 'async with') first"
            )
        if hold.depth > 1:
            hold.depth -= 1
            return
        self._hold = None
        assert self._sem is not None
        try:
            await self._sem._release_for(hold.owner)
        except RedisSemaphoreLeaseLostError:
            raise self._lost_error() from None

    def owned(self) -> bool:
        """Whether the calling task holds the lock (as far as is known here; no I/O)."""
        return self._owned_by(_current())

    @property
    def fence(self) -> int | None:
        """The calling task's fence, or None if it does not hold the lock."""
        return self._fence_of_owner(_current())

    def _owned_by(self, owner: object) -> bool:
        hold = self._hold
        return hold is not None and hold.owner is owner and not hold.holding.lost

    def _fence_of_owner(self, owner: object) -> int | None:
        hold = self._hold
        return hold.fence if hold is not None and hold.owner is owner else None

    async def locked(self) -> bool:
        """Whether somebody, anywhere, holds the lock (one round trip)."""
        pool, meta = self._keys.key("pool"), self._keys.key("meta")
        exists, free = await retrying(
            lambda _: self._link.pipeline([("EXISTS", meta), ("LLEN", pool)]),
            what="lock locked",
        )
        return bool(exists) and not int(free)

    @contextlib.asynccontextmanager
    async def guarded(self, timeout: float | None = None) -> AsyncIterator[int]:
        """Hold the lock for the body, and stop the body before the lease can run out.

        The body is cancelled as soon as the lease is found lost, or once no
        renewal has been confirmed for ``2/3 * lease_ttl`` (counted from the
        send time of the last confirmed one, on this process's clock): the
        holder steps down before the server could give the lock to anyone
        else.  The block then raises :class:`RedisLockLeaseLostError`.
        """
        fence = await self.acquire(timeout)
        hold = self._hold
        assert hold is not None
        guard = _Guard(hold.holding, self.lease_ttl * GUARD_SHARE)
        assert self._sem is not None
        self._sem._lost_callbacks.append(guard.check)
        sem = self._sem
        try:
            yield fence
        except asyncio.CancelledError:
            if not guard.fired:
                raise
            guard.uncancel()
            raise self._lost_error(stepped_down=True) from None
        finally:
            guard.stop()
            sem._lost_callbacks.remove(guard.check)
            if self._hold is hold:
                if guard.fired:
                    # Stepping down must not wait for a server that may not
                    # answer: the permit goes back when it does, or its lease
                    # runs out.
                    self._hold = None
                    sem._spawn(self._give_back(sem, hold.holding))
                else:
                    await self.release()

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    # -- lost leases, inspection, closing ------------------------------------

    def add_lease_lost_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever the hold through this instance is found lost."""
        self._lost_callbacks.append(callback)

    async def wait_lease_lost(self) -> None:
        """Return once a hold through this instance has been found lost."""
        await self._lost_event.wait()

    async def statistics(self) -> LockStatistics:
        """Whether it is locked anywhere, and this instance's hold, waiters and losses."""
        hold = self._hold
        return LockStatistics(
            name=self.name,
            locked=await self.locked(),
            held_here=hold is not None,
            fence=None if hold is None else hold.fence,
            depth=0 if hold is None else hold.depth,
            tasks_waiting=self._waiting,
            leases_lost=self._leases_lost,
        )

    async def close(self) -> None:
        """Stop waiting and renewing.  Waiting tasks get :class:`RedisLockClosedError`.

        A lock still held stays held until its lease runs out (or it is
        released); then other processes may take it.
        """
        if self._closed:
            return
        self._closed = True
        if self._sem is not None:
            await self._sem.close()
        await self._link.close()

    @property
    def _waiting(self) -> int:
        """Tasks of this instance waiting for the lock."""
        return 0 if self._sem is None else self._sem._waiting

    def __repr__(self) -> str:
        state = "locked here" if self._hold is not None else "not held here"
        return f"<RedisLock {self.name!r} {state}{' closed' if self._closed else ''}>"

    # -- internals ---------------------------------------------------------------

    async def _semaphore(self) -> RedisSemaphore:
        """The lock's semaphore, created (or joined) on first use."""
        if self._closed:
            raise self._closed_error()
        if self._sem is not None:
            return self._sem
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._sem is None:
                try:
                    sem = await RedisSemaphore.create(
                        self._client,
                        self.name,
                        count=1,
                        lease_ttl=self.lease_ttl,
                        key_prefix=self._prefix,
                        replicas=self._replicas,
                        replica_timeout=self._replica_timeout,
                    )
                except RedisSemaphoreCountMismatchError as exc:
                    raise RedisLockError(
                        f"the keys of lock {self.name!r} hold a semaphore of count "
                        f"{exc.actual}; pick another name or key_prefix"
                    ) from None
                sem._take_extra = self._fence_command
                if isinstance(sem._ops, LuaOps):  # hand-offs issue the next fence
                    sem._ops.fence_key = self._fence_key
                sem.add_lease_lost_callback(self._lost)
                if self._closed:  # closed while it was being made
                    await sem.close()
                    raise self._closed_error()
                self._sem = sem
        return self._sem

    def _fence_command(self, slot: Slot) -> Command:
        """The fence script, sent in the same round trip as an uncontended take."""
        keys, args = self._fence_call(slot.key, slot.member, "")
        # The token is not known before the take: with '' the script checks
        # that the slot holds a token.
        return ("EVALSHA", FENCE.sha, len(keys), *keys, *args)

    def _fence_call(self, slot_key: str, member: str, token: str) -> tuple[list[str], list[Any]]:
        keys = [slot_key, self._keys.key("handed"), self._fence_key]
        return keys, [member, token]

    async def _fence_of(self, holding: Holding) -> int | None:
        """The fence of a fresh ``holding``: from the take's round trip or the
        hand-off's notice if it came with one, else issued now.  None if the
        token is no longer held."""
        if holding.extra:
            (reply,) = holding.extra
            holding.extra = []
            if not isinstance(reply, Exception):
                return None if reply is None else int(text(reply))
            # NOSCRIPT after a restart, or the take lost its route: ask again.
        slot = holding.slot
        keys, args = self._fence_call(slot.key, slot.member, holding.token)
        reply = await retrying(lambda _: self._link.script(FENCE, keys, args), what="lock fence")
        return None if reply is None else int(text(reply))

    def _release_later(self) -> None:
        """Give the lock back without waiting (on a path that was cancelled or
        failed): the permit returns when the server answers, or its lease
        runs out."""
        hold, self._hold = self._hold, None
        if hold is not None and self._sem is not None:
            self._sem._spawn(self._give_back(self._sem, hold.holding))

    async def _give_back(self, sem: RedisSemaphore, holding: Holding) -> None:
        """Return a permit taken for an acquisition that did not complete."""
        if sem._held.get(holding.key) is not holding:
            return
        try:
            await sem._release_for(holding.owner)
        except RedisSemaphoreLeaseLostError:
            pass  # already taken back: nothing to return

    def _lost(self) -> None:
        hold = self._hold
        if hold is None or not hold.holding.lost:
            return
        self._leases_lost += 1
        self._lost_event.set()
        for callback in self._lost_callbacks:
            try:
                callback()
            except Exception:
                log.exception("lease-lost callback failed")

    def _closed_error(self) -> RedisLockClosedError:
        return RedisLockClosedError(f"lock {self.name!r} is closed")

    def _lost_error(self, *, stepped_down: bool = False) -> RedisLockLeaseLostError:
        if stepped_down:
            return RedisLockLeaseLostError(
                f"lock {self.name!r}: the body was stopped because the lease could no "
                "longer be confirmed (renewals failed or the lease was lost)"
            )
        return RedisLockLeaseLostError(
            f"lock {self.name!r}: the lease had expired and the lock was taken back "
            "before release(); raise lease_ttl above the longest stall of this process"
        )


class _Guard:
    """Cancels the task running a ``guarded()`` body once its lease is in doubt.

    A timer, not a task: it fires at the last confirmed renewal's send time
    plus ``limit`` and re-arms itself if a renewal was confirmed meanwhile.
    """

    def __init__(self, holding: Holding, limit: float) -> None:
        self._holding = holding
        self._limit = limit
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self.fired = False
        self.check()

    def check(self) -> None:
        """Fire if the lease is lost or unconfirmed for too long; else re-arm."""
        if self.fired or self._task is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        until = self._holding.slot.renewed_at + self._limit
        if self._holding.lost or self._loop.time() >= until:
            self.fired = True
            self._task.cancel()
            return
        self._timer = self._loop.call_at(until, self.check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def uncancel(self) -> None:
        """Take back the cancellation this guard asked for (Python 3.11+ counts them)."""
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()


def _current() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None
