"""A distributed counting semaphore with leases, for asyncio.

How it works, in short (ARCHITECTURE.md has the details and invariants):

* The pool is a Redis list of ``count`` permit tokens, each unique
  (``<generation>:<index>``).  Acquiring moves a token with BLMOVE from the
  pool into a *slot*: a list owned by this instance, registered with a lease
  in the ``holders`` sorted set.  Releasing moves that token back, by
  identity, in one script, so a repeated release cannot add a permit.
* The event loop's one renewal task (:mod:`redsync._core.renewal`) renews the
  lease of the instance's slots and the TTL of every key, by the server's
  clock, in one round trip shared with every other instance.  A slot whose
  lease ran out (its process died) is emptied back into the pool by any
  surviving instance.
* Many tasks waiting on one instance share at most ``min(count, 16)``
  blocking connections; see :mod:`redsync._core.waiting`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rex

from .._core import validate as _validate
from .._core.keys import KeySpace
from .._core.link import AMBIGUOUS, TRANSIENT, Client, Command, Link, now_ms, retrying, text
from .._core.push import PushUnavailable, Subscription
from .._core.renewal import Batch, renewer
from .._core.waiting import Dispatcher, Lane
from ..exceptions import (
    RedisSemaphoreClosedError,
    RedisSemaphoreCountError,
    RedisSemaphoreCountMismatchError,
    RedisSemaphoreLeaseLostError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
)
from ._lanes import SlotLanes
from ._ops import (
    SCRIPTS,
    LuaOps,
    Meta,
    RenewResult,
    SemaphoreOps,
    SlotState,
    TxOps,
    recovery_window_ms,
    renew_result,
)
from ._slot import Check, Holding, Phase, Slot

__all__ = [
    "HolderInfo",
    "RedisSemaphore",
    "SemaphoreInitStrategy",
    "SemaphoreStatistics",
]

log = logging.getLogger("redsync")

MAX_COUNT = 4096
#: Most blocking connections one instance uses, however many tasks wait.
MAX_LANES = 16
#: Longest single server-side block; a wait is a series of these.
MAX_BLOCK = 60.0
#: Wait in the waiter queue, told by a notice (see ``_queue_get``), where the
#: server and the user allow it; else on blocking connections.
PUSH = True
#: How long an acquisition retries a move whose connection failed.
RETRY_BUDGET = 15.0


class SemaphoreInitStrategy(str, enum.Enum):
    """How the semaphore's state is changed in Redis.

    ``LUA`` (the default) runs each change as one atomic script.
    ``OPTIMISTIC_LOCKING`` uses WATCH + MULTI/EXEC with retries and sends no
    EVAL/EVALSHA/FCALL at all, for servers or ACL users without scripting.
    The creator's choice is stored with the semaphore and followed by
    instances that ``attach()``.
    """

    LUA = "lua"
    OPTIMISTIC_LOCKING = "optimistic_locking"


@dataclass(frozen=True)
class HolderInfo:
    """One instance holding permits, as Redis sees it."""

    instance: str
    permits: int
    lease_remaining: float


@dataclass(frozen=True)
class SemaphoreStatistics:
    """A snapshot from :meth:`RedisSemaphore.statistics`."""

    name: str
    count: int
    available: int
    holders: tuple[HolderInfo, ...]
    held_here: int
    tasks_waiting: int
    lanes_active: int
    leases_lost: int
    #: Acquisitions and releases that fewer than ``replicas`` replicas acknowledged in time.
    replica_shortfalls: int = 0


@dataclass(eq=False)
class _RenewRequest:
    """What a renewal sent, to compare with what it finds."""

    sent_at: float
    slots: list[Slot]
    #: Per slot: (epoch, phase, holding) when it was sent.
    snapshot: list[tuple[int, Phase, Holding | None]]
    states: list[SlotState]
    partial: bool
    #: The instance's channel, if it was subscribed (the renewal reports
    #: whether the node has it), and which subscription that was.
    channel: str = ""
    joined: int = -1


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise RedisSemaphoreCountError(value)
    return value


def _link_for(client: Client, keys: KeySpace, replicas: int, replica_timeout: float) -> Link:
    """The semaphore's connection handler, checking the replication options first."""
    wanted = _validate.replicas(replicas)
    timeout_ms = max(1, round(_validate.replica_timeout(replica_timeout) * 1000))
    link = Link(client, keys.key("meta"))
    link.replicas = wanted
    link.replica_timeout_ms = timeout_ms
    return link


def _ops_for(strategy: SemaphoreInitStrategy, link: Link, keys: KeySpace) -> SemaphoreOps:
    """The backend that performs every state change for ``strategy``."""
    if strategy is SemaphoreInitStrategy.LUA:
        return LuaOps(link, keys)
    return TxOps(link, keys)


def _strategy(value: object) -> SemaphoreInitStrategy:
    """The strategy ``value`` names: a member, or its value, name or ``str()`` form.

    Strings are matched case-insensitively, so ``"lua"``, ``"LUA"`` and
    ``str(SemaphoreInitStrategy.LUA)`` (``"SemaphoreInitStrategy.LUA"`` on
    Python 3.11+) all work, as they did with 2.0.0 (code passes the strategy
    across process boundaries as a string).
    """
    if isinstance(value, SemaphoreInitStrategy):
        return value
    if isinstance(value, str):
        wanted = value.strip().lower()
        for member in SemaphoreInitStrategy:
            forms = (member.value, member.name, f"{SemaphoreInitStrategy.__name__}.{member.name}")
            if wanted in (form.lower() for form in forms):
                return member
    allowed = ", ".join(repr(s.value) for s in SemaphoreInitStrategy)
    raise ValueError(
        f"semaphore_init_strategy must be a SemaphoreInitStrategy or one of {allowed} "
        f"(its name or str() also work), got {value!r}"
    )


class RedisSemaphore:
    """A semaphore shared by every process that uses the same Redis, name and prefix.

    Build one with :meth:`create` (makes the semaphore if needed) or
    :meth:`attach` (joins one somebody else made), then use it like
    :class:`asyncio.Semaphore`::

        sem = await RedisSemaphore.create(redis, "gpu", count=4)
        async with sem:
            ...  # at most 4 holders across all processes
        await sem.close()

    One instance may be shared by any number of tasks.  Permits held by a
    process that dies return to the pool at most ``lease_ttl`` plus one
    renewal period later.  Call :meth:`close` when done, to stop the
    background renewal.
    """

    def __init__(
        self,
        redis_client: Client,
        name: str,
        *,
        meta: Meta,
        lease_ttl: float,
        keys: KeySpace,
        link: Link,
    ) -> None:
        """Use :meth:`create` or :meth:`attach`; this only wires up what they found."""
        strategy = _strategy(meta.strategy)
        meta_count = meta.count
        self.name = name
        self._client = redis_client
        self._link = link
        self._keys = keys
        self._count = meta_count
        self._gen = meta.gen
        self.strategy = strategy
        self.lease_ttl = lease_ttl
        self._ttl_ms = max(1, round(lease_ttl * 1000))
        self._block = round(min(lease_ttl * 0.45, MAX_BLOCK), 3)
        self._ops = _ops_for(strategy, link, keys)
        self._instance = uuid.uuid4().hex[:16]
        lanes = [Lane(i) for i in range(min(meta_count, MAX_LANES))]
        self._slots: list[Slot] = []
        #: Numbers slots, never reusing a member name (idle slots are dropped).
        self._slot_seq = 0
        #: Renewals that found nothing held, waited for or moving, in a row.
        self._quiet = 0
        #: The next renewal must be a full one (the shared keys looked lost).
        self._full_due = False
        #: Slots that may have become free, so finding one costs O(1) however
        #: many permits this instance holds (each entry is checked when taken).
        self._maybe_free: collections.deque[Slot] = collections.deque()
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._held: dict[str, Holding] = {}
        self._dispatcher: Dispatcher[str] = Dispatcher(
            link, SlotLanes(self), lanes, self._closed_error, max_block=self._block
        )
        self._sync_lock = asyncio.Lock()
        self._last_renew = -1e18
        self._closed = False
        self._leases_lost = 0
        self._lost_event = asyncio.Event()
        self._lost_callbacks: list[Callable[[], object]] = []
        #: Push mode: the member of each slot a task waits on, and its future.
        self._waits: dict[str, asyncio.Future[str | None]] = {}
        self._by_member: dict[str, Slot] = {}
        self._sub: Subscription | None = None
        #: Background steps (leaving the queue after a cancellation).
        self._tasks: set[asyncio.Task[None]] = set()
        #: A command a primitive built on this one sends in the same round trip
        #: as the plain take from the pool (its reply lands in Holding.extra).
        self._take_extra: Callable[[Slot], Command] | None = None
        self._lean = (
            ("PEXPIRE", keys.key("meta"), self._ttl_ms),
            ("PEXPIRE", keys.key("pool"), self._ttl_ms),
            ("ZRANGE", keys.key("holders"), 0, 0, "WITHSCORES"),
        )
        self._renewal = renewer().add(self, lease_ttl / 3, f"semaphore {name!r} renewal")

    # -- construction -------------------------------------------------------

    @classmethod
    async def create(
        cls,
        redis_client: Client,
        name: str,
        *,
        count: int = 1,
        lease_ttl: float = 300.0,
        semaphore_init_strategy: SemaphoreInitStrategy = SemaphoreInitStrategy.LUA,
        key_prefix: str = "redsync:semaphore",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> RedisSemaphore:
        """Create the semaphore ``name`` with ``count`` permits, or join it.

        Idempotent: the first caller fills the pool atomically; later callers
        with the same ``count`` join it.  A different ``count`` raises
        :class:`RedisSemaphoreCountMismatchError`.  ``lease_ttl`` (seconds,
        fractions honoured to the millisecond) is how long the keys and this
        instance's permits outlive it if it crashes.

        ``replicas=N`` (default 0) makes every acquisition and release wait,
        with Redis ``WAIT``, until N replicas have it (at most
        ``replica_timeout`` seconds): a failover promoting one of them then
        cannot undo it.  A write that fewer replicas acknowledged in time
        still counts, and is counted in ``statistics().replica_shortfalls``.
        """
        _validate.client(redis_client)
        _validate.name(name)
        key_prefix = _validate.key_prefix(key_prefix)
        count = _count(count)
        ttl = _validate.lease_ttl(lease_ttl)
        strategy = _strategy(semaphore_init_strategy)
        keys = KeySpace(key_prefix, name)
        link = _link_for(redis_client, keys, replicas, replica_timeout)
        ops = _ops_for(strategy, link, keys)
        gen = uuid.uuid4().hex[:12]
        ttl_ms = max(1, round(ttl * 1000))

        async def init(_: bool) -> Any:
            return await ops.init(count, ttl_ms, gen, strategy.value)

        meta = await retrying(init, what="semaphore create")
        if meta.count != count:
            raise RedisSemaphoreCountMismatchError(count, meta.count)
        return cls(redis_client, name, meta=meta, lease_ttl=ttl, keys=keys, link=link)

    @classmethod
    async def attach(
        cls,
        redis_client: Client,
        name: str,
        *,
        timeout: float | None = 60.0,
        lease_ttl: float = 300.0,
        key_prefix: str = "redsync:semaphore",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> RedisSemaphore:
        """Join the semaphore ``name`` once somebody has created it.

        Never creates anything.  Waits up to ``timeout`` seconds (``None``:
        forever; ``<= 0``: one look) for a creator, then raises
        :class:`RedisSemaphoreTimeoutError`.  The count and the init
        strategy are taken from the semaphore itself.
        """
        _validate.client(redis_client)
        _validate.name(name)
        key_prefix = _validate.key_prefix(key_prefix)
        wait = _validate.timeout(timeout)
        ttl = _validate.lease_ttl(lease_ttl)
        keys = KeySpace(key_prefix, name)
        link = _link_for(redis_client, keys, replicas, replica_timeout)
        reader = LuaOps(link, keys)
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        delay = 0.01
        while True:

            async def look(_: bool) -> Any:
                return await reader.meta()

            meta = await retrying(look, what="semaphore attach")
            if meta is not None:
                return cls(redis_client, name, meta=meta, lease_ttl=ttl, keys=keys, link=link)
            if deadline is not None and loop.time() >= deadline:
                raise RedisSemaphoreTimeoutError(
                    f"no semaphore named {name!r} was created within {timeout} s "
                    "(attach() never creates one; call create() somewhere first)"
                )
            pause = delay if deadline is None else min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)
            delay = min(delay * 2, 0.25)

    # -- the asyncio.Semaphore-like API --------------------------------------

    async def acquire(self, timeout: float | None = None) -> None:
        """Take one permit, waiting up to ``timeout`` seconds.

        ``None`` waits as long as it takes; ``0`` or less makes one attempt
        that does not block.  Raises :class:`RedisSemaphoreTimeoutError` when
        time runs out.  Cancelling the call at any point neither loses a
        permit nor leaves one held by nobody.
        """
        await self._acquire_for(asyncio.current_task(), timeout)

    async def _acquire_for(self, owner: object, timeout: float | None) -> Holding:
        """:meth:`acquire` on behalf of ``owner`` (a task, or a thread of the
        blocking facade): :meth:`release` prefers a permit of the same owner.
        Returns what was taken."""
        wait = _validate.timeout(timeout)
        while True:
            if wait == 0:
                token = await retrying(
                    lambda _: self._dispatcher.try_get(), what="semaphore acquire"
                )
                if token is None:
                    raise RedisSemaphoreTimeoutError(f"semaphore {self.name!r}: no permit was free")
            else:
                pushed = None
                if self._push_mode():
                    pushed = await self._queue_get(wait, lambda: self._timeout_error(timeout))
                token = pushed or await self._dispatcher.get(
                    wait, lambda: self._timeout_error(timeout)
                )
            holding = self._held.get(token)
            if holding is not None and not holding.lost:
                holding.owner = owner
                return holding
            # The lease of this token was found lost between the hand-off and
            # now: it is not ours to use.  Try again.
            if holding is not None:
                del self._held[token]
                self._vacate(holding)

    async def release(self) -> None:
        """Return one permit held by this instance (preferably one taken by this task).

        Raises :class:`RedisSemaphoreNotAcquiredError` when the instance holds
        none, and :class:`RedisSemaphoreLeaseLostError` when the permit had
        been taken back because its lease ran out.  The permit is returned
        exactly once even if this call is cancelled or the connection drops.
        """
        await self._release_for(asyncio.current_task())

    async def _release_for(self, owner: object) -> None:
        """:meth:`release`, preferring a permit that ``owner`` acquired."""
        holding = self._pick(owner)
        if holding is None:
            raise RedisSemaphoreNotAcquiredError(
                f"semaphore {self.name!r}: release() called, but this instance holds no "
                "permit; call acquire() (or use 'async with') first"
            )
        del self._held[holding.key]
        if holding.lost:
            self._vacate(holding)
            raise self._lost_error()
        # Cancelling this await cannot lose or double the permit: the slot
        # is then marked for a check, and the next renewal settles where the
        # token is.
        result = await self._return(holding)
        if result in (0, -2):
            self._mark_lost(holding)
            raise self._lost_error()

    async def get_count(self) -> int | None:
        """The semaphore's count as stored in Redis, or None if it does not exist."""
        meta = await retrying(lambda _: self._ops.meta(), what="semaphore get_count")
        return None if meta is None else meta.count

    async def close(self) -> None:
        """Stop the renewal task and the blocking connections; returns within a second or two.

        Tasks still waiting in :meth:`acquire` get a :class:`RedisSemaphoreError`.
        Permits still held stay valid until their lease runs out and can be
        released as usual; after that other instances reclaim them.
        """
        if self._closed:
            return
        self._closed = True
        for fut in self._waits.values():
            if not fut.done():
                fut.set_exception(self._closed_error())
        await self._dispatcher.close(grace=0.3)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        if self._sub is not None:
            try:
                await asyncio.wait_for(self._sub.close(), 0.3)
            except Exception as exc:  # the listener drops it with its connection
                log.debug("unsubscribing %s failed: %r", self.name, exc)
        await self._renewal.stop(grace=0.3)
        # Slots of lanes stopped mid-move (close() closes blocked connections).
        cut = {slot for slot in self._slots if slot.checks & Check.CONTENT}
        if cut:
            # One last renewal finds a permit such a move delivered and returns
            # it, so it does not wait in this instance's slot for the lease.
            try:
                await asyncio.wait_for(self._renew(), 1.0)
            except Exception as exc:  # its lease runs out and survivors reclaim it
                log.debug("settling %s on close failed: %r", self.name, exc)
        await self._dispatcher.drain(0.5)
        # Cut slots stay registered: should the server still run a move into
        # one after the renewal looked, its lease runs out and survivors
        # reclaim the permit.
        idle = [
            slot.member for slot in self._slots if slot.registered and slot.free and slot not in cut
        ]
        if idle:
            try:
                await asyncio.wait_for(self._ops.deregister(idle), 0.3)
            except Exception as exc:  # the slots expire on their own
                log.debug("deregistering %s failed: %r", idle, exc)
        await self._link.close()

    async def __aenter__(self) -> RedisSemaphore:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    # -- lost leases ----------------------------------------------------------

    def add_lease_lost_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever a permit held here is found to be lost."""
        self._lost_callbacks.append(callback)

    async def wait_lease_lost(self) -> None:
        """Return once any permit held by this instance has been found lost.

        Run it beside long critical sections (for example in a task group)
        to stop work whose exclusivity can no longer be guaranteed.
        """
        await self._lost_event.wait()

    def locked(self) -> bool:
        """True if tasks of this instance are waiting (like asyncio.Semaphore.locked)."""
        return self._dispatcher.waiting > 0 or bool(self._waits)

    async def statistics(self) -> SemaphoreStatistics:
        """Count, free permits, live holders with their remaining lease, and local state."""
        holders_key = self._keys.key("holders")
        replies = await retrying(
            lambda _: self._link.pipeline(
                [
                    ("TIME",),
                    ("LLEN", self._keys.key("pool")),
                    ("ZRANGE", holders_key, 0, -1, "WITHSCORES"),
                    ("HKEYS", self._keys.key("handed")),
                ]
            ),
            what="semaphore statistics",
        )
        handed = {text(m) for m in replies[3]}
        now = now_ms(replies[0])
        flat = replies[2]
        pairs: list[tuple[str, float]] = []
        if flat and isinstance(flat[0], (list, tuple)):  # RESP3
            pairs = [(text(m), float(s)) for m, s in flat]
        else:
            pairs = [(text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        commands = [("LLEN", self._ops.slot_key(m)) for m, _ in pairs]
        lengths = (
            await retrying(lambda _: self._link.pipeline(commands), what="semaphore statistics")
            if commands
            else []
        )
        per_instance: dict[str, tuple[int, float]] = {}
        for (member, score), length in zip(pairs, lengths):
            instance = member.rsplit(".", 1)[0]
            permits, remaining = per_instance.get(instance, (0, 0.0))
            per_instance[instance] = (
                permits + max(0, int(length) - 1) + (member in handed),
                max(remaining, (score - now) / 1000),
            )
        holders = tuple(HolderInfo(i, p, r) for i, (p, r) in sorted(per_instance.items()) if p > 0)
        return SemaphoreStatistics(
            name=self.name,
            count=self._count,
            available=int(replies[1]),
            holders=holders,
            held_here=len(self._held),
            tasks_waiting=self._dispatcher.waiting + len(self._waits),
            lanes_active=self._dispatcher.active_lanes,
            leases_lost=self._leases_lost,
            replica_shortfalls=self._link.replica_shortfalls,
        )

    @property
    def instance_id(self) -> str:
        """This instance's id, as it appears in :attr:`HolderInfo.instance`."""
        return self._instance

    def __repr__(self) -> str:
        return (
            f"<RedisSemaphore {self.name!r} count={self._count} held_here={len(self._held)} "
            f"waiting={self._dispatcher.waiting + len(self._waits)}"
            f"{' closed' if self._closed else ''}>"
        )

    # -- waiting in the queue (push mode) --------------------------------------

    @property
    def _waiting(self) -> int:
        """Tasks of this instance waiting for a permit (lanes or queue)."""
        return self._dispatcher.waiting + len(self._waits)

    def _push_mode(self) -> bool:
        """Wait in the semaphore's waiter queue, told of hand-offs by a notice.

        Needs scripts and channel rights; with ``replicas`` the lanes' WAIT
        after each move keeps a hand-off durable, so lanes are used there too.
        """
        return (
            PUSH
            and isinstance(self._ops, LuaOps)
            and not self._link.replicas
            and (self._sub is None or self._sub.refused is None)
        )

    async def _queue_get(
        self, wait: float | None, timeout_error: Callable[[], BaseException]
    ) -> str | None:
        """Take one permit through the waiter queue; None if push mode is unavailable.

        The task's own slot is its ticket: ``enqueue.lua`` takes a free permit
        into it or queues it, and a release hands the next permit straight
        into it (``handed[member]``) and publishes a notice.  The slot stays
        reserved or waiting until the wait is settled, so no renewal mistakes what arrives
        for an orphan; a wait that ends without a permit leaves the queue with
        ``dequeue.lua``, which reports a permit handed over meanwhile.
        """
        assert isinstance(self._ops, LuaOps)
        ops = self._ops
        if self._sub is None:
            # The instance's own channel: a release that finds nobody
            # listening on it knows this waiter is gone (see _give.lua).
            channel = f"{ops.channel}:{self.instance_id}"
            self._sub = Subscription(self._link, channel, self._pushed, self._gap)
        sub = self._sub
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        give_up, delay = loop.time() + RETRY_BUDGET, 0.02
        while True:
            if self._closed:
                raise self._closed_error()
            slot = self._free_slot(unbounded=True)
            assert slot is not None
            slot.to(Phase.RESERVED)
            try:
                if not slot.registered or loop.time() - self._last_renew > self.lease_ttl / 2:
                    await self._sync(slot)
            except BaseException:
                self._clear(slot)
                raise
            if not slot.registered:  # a new generation: start over
                self._clear(slot)
                continue
            if not sub.active:
                # Not subscribed (this instance has not had to wait lately):
                # try the pool first, so an uncontended acquisition is one
                # plain LMOVE and subscribes to nothing.  The pool holds
                # tokens only while no live ticket waits, so this is FIFO.
                take: list[Command] = [("LMOVE", ops.pool_key, slot.key, "LEFT", "RIGHT")]
                if self._take_extra is not None:
                    take.append(self._take_extra(slot))
                try:
                    taken, *extra = await self._link.pipeline(take, tolerant=True)
                    taken = self._link.check(taken)
                except BaseException as exc:
                    # The move may have happened: the renewal this kicks adopts
                    # what the slot holds (and hands it to the queue's head).
                    self._abandon(slot)
                    if not isinstance(exc, (*TRANSIENT, *AMBIGUOUS)) or loop.time() > give_up:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if taken is not None:
                    holding = self._hold(slot, text(taken))
                    holding.extra = extra
                    return holding.token
                try:
                    await sub.start()  # before queueing: no notice can be missed
                except PushUnavailable as exc:
                    self._clear(slot)
                    log.info("semaphore %r: waiting on blocking connections (%s)", self.name, exc)
                    return None
                except BaseException:
                    self._clear(slot)
                    raise
            if self._closed:  # closed while this acquisition was on its way
                self._clear(slot)
                raise self._closed_error()
            fut: asyncio.Future[str | None] = loop.create_future()
            self._waits[slot.member] = fut
            slot.to(Phase.WAITING)
            member, joined = slot.member, sub.joined
            try:
                status, answer, listening = await retrying(
                    lambda _, member=member: ops.enqueue(  # type: ignore[misc]
                        member, self._gen, self._ttl_ms, sub.channel
                    ),
                    what="semaphore acquire",
                )
            except BaseException:
                self._abandon(slot)
                raise
            if not listening:
                # Queued where nobody hears this instance: releases skip the
                # ticket until the listener has moved (its gap renews, and
                # the renewal queues the ticket again).
                sub.misplaced(joined)
            token = answer if status == 1 else None
            if status == 0 and answer is not None:
                self._numbered(slot, answer)
            if status < 0:
                # Gone (-1), re-created (-2) or the slot expired (-3): a full
                # renewal re-establishes, or drops what is stale; then again.
                self._waits.pop(slot.member, None)
                slot.registered = False
                self._clear(slot)
                await self._renew()
                continue
            if status == 0:
                if self._closed and not fut.done():
                    # close() ran while the ticket was being queued, after it
                    # failed the waits it could see: this one leaves too.
                    fut.set_exception(self._closed_error())
                timer = None if deadline is None else loop.call_at(deadline, _settle, fut, None)
                try:
                    token = await fut
                except BaseException:
                    self._spawn(self._leave(slot, keep=False))
                    raise
                finally:
                    if timer is not None:
                        timer.cancel()
                if token is None:  # time is up: leave, unless a permit came meanwhile
                    token = await self._leave(slot, keep=True)
                    if token is None:
                        raise timeout_error()
            self._waits.pop(slot.member, None)
            assert token is not None
            fence, slot.fence = slot.fence, None
            holding = self._hold(slot, token)
            if fence is not None and fence[0] == token:
                holding.extra = [fence[1]]
            return holding.token

    def _numbered(self, slot: Slot, number: str) -> None:
        """The current wait on ``slot`` is ticket ``number``: take a notice for it
        that came before the number was known."""
        slot.number = number
        early, slot.early = slot.early, []
        for token, named, fence in early:
            if named == number:
                self._delivered(slot, token, fence)

    def _abandon(self, slot: Slot) -> None:
        """A wait ended in an unknown state: the next renewal drops its ticket
        and adopts whatever its slot holds."""
        self._waits.pop(slot.member, None)
        self._unsure(slot, Check.CONTENT | Check.TICKET)

    async def _leave(self, slot: Slot, *, keep: bool) -> str | None:
        """Leave the queue.  A permit handed over meanwhile is returned
        (``keep``) or given back to the next waiter."""
        self._waits.pop(slot.member, None)
        slot.to(Phase.RESERVED)
        try:
            token = await retrying(
                lambda _: self._ops.dequeue(slot.member),  # type: ignore[attr-defined]
                what="semaphore acquire",
            )
        except BaseException:
            self._abandon(slot)
            raise
        if token is None:
            self._clear(slot)
            return None
        if keep:
            return str(token)
        holding = self._hold(slot, token)
        # Forgotten before the release is sent: its notice may reach another
        # waiter of this instance before the release's own reply comes back.
        del self._held[holding.key]
        await self._return(holding)
        return None

    def _spawn(self, step: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await step
            except Exception as exc:  # the renewal settles it
                log.debug("semaphore %r: leaving the queue failed: %r", self.name, exc)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pushed(self, data: str) -> None:
        """A notice ``<member> <token> <number>[ <fence>]``: ``token`` was handed
        to ticket ``number`` of ``member`` (with a lock's fence for that hold).

        Taken only by the wait that queued that ticket: a notice that arrives
        late (after a renewal delivered its token, which was then released,
        and the slot waits again) names an earlier number and is ignored.
        """
        member, token, number, fence = ([*data.split(" "), "", "", ""])[:4]
        slot = self._by_member.get(member)
        if slot is None or slot.phase is not Phase.WAITING or member not in self._waits:
            return
        if slot.number is None:
            slot.early.append((token, number, fence))
        elif slot.number == number:
            self._delivered(slot, token, fence)

    def _delivered(self, slot: Slot, token: str, fence: str) -> None:
        """The notice of the current wait on ``slot`` came: settle the wait, and
        keep the fence it carried for the hold it starts."""
        if fence:
            slot.fence = (token, fence)
        _settle(self._waits.get(slot.member), token)

    def _gap(self) -> None:
        """Notices may have been missed: look for permits handed to our waiters,
        and renew at once (a restart lost the queue: the renewal queues again)."""
        if self._waits:
            self._spawn(self._look())
            self._renewal.kick()

    async def _look(self) -> None:
        """Settle the waits whose permit is already in the handed hash.

        Only a wait that was on before the look was sent, and is still on,
        takes what it finds: while the reply was on its way, the wait it was
        meant for may have ended (the notice came), its permit been released
        and handed on, and its slot wait again, so what the reply shows is
        no longer that slot's.
        """
        waits = dict(self._waits)
        if not waits:
            return
        handed_key = self._ops.handed_key  # type: ignore[attr-defined]
        found = await self._link.call("HMGET", handed_key, *waits)
        for (member, fut), token in zip(waits.items(), found):
            if token is not None and self._waits.get(member) is fut:
                _settle(fut, text(token))

    # -- internals ------------------------------------------------------------

    def _pick(self, current: object) -> Holding | None:
        fallback: Holding | None = None
        for holding in reversed(self._held.values()):
            if holding.owner is current:
                return holding
            if holding.owner is not None:
                fallback = holding
        return fallback

    def _free_slot(self, unbounded: bool = False) -> Slot | None:
        while self._maybe_free:
            slot = self._maybe_free.popleft()
            slot.queued = False
            if slot.free:
                return slot
        # Enough slots for every permit to be held here and every permit to be
        # on its way back, plus one per lane: a lane never waits for a release
        # reply before blocking for the next permit, so the server hands a
        # released permit over in one round trip.  Slots are created on demand
        # (and registered one by one, see _sync).
        # In push mode every waiting task has a slot of its own (a ticket).
        if not unbounded and len(self._slots) >= 2 * self._count + len(self._dispatcher.lanes):
            return next((slot for slot in self._slots if slot.free), None)
        member = f"{self._instance}.{self._slot_seq}"
        self._slot_seq += 1
        slot = Slot(member, self._ops.slot_key(member))
        self._slots.append(slot)
        self._by_member[member] = slot
        return slot

    def _freed(self, slot: Slot) -> None:
        """``slot`` may be free now: queue it and wake lanes waiting for one."""
        if not slot.queued:
            slot.queued = True
            self._maybe_free.append(slot)
        self._wake_slot_waiters()

    def _hold(self, slot: Slot, token: str) -> Holding:
        earlier = self._held.pop(token, None)
        if earlier is not None:
            # The server handed out a token this instance already holds: the
            # move that gave it to us the first time was undone (a failover
            # lost it).  That earlier holding is void; it stays known here so
            # its owner's release() reports the loss instead of "not acquired".
            earlier.key = f"{token}#{uuid.uuid4().hex[:8]}"
            self._held[earlier.key] = earlier
            self._mark_lost(earlier)
        holding = Holding(token, slot, key=token)
        slot.to(Phase.HELD, holding=holding)
        self._held[token] = holding
        return holding

    def _vacate(self, holding: Holding) -> None:
        """Drop ``holding`` (lost) from its slot, which is then free again."""
        slot = holding.slot
        if slot.holding is holding:
            slot.to(Phase.FREE)
            self._freed(slot)

    def _clear(self, slot: Slot) -> None:
        """``slot`` holds nothing now (a move brought nothing, a wait ended
        empty, a release went through): it is free again."""
        slot.to(Phase.FREE)
        self._freed(slot)

    def _unsure(self, slot: Slot, checks: Check) -> None:
        """A move or wait on ``slot`` ended without knowing what the slot holds:
        it is left to the renewal this kicks, which adopts what it finds."""
        slot.to(Phase.FREE)
        slot.mark(checks)
        self._renewal.kick()

    async def _slot_freed(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(fut)
        timer = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            if fut in self._slot_waiters:
                self._slot_waiters.remove(fut)

    def _wake_slot_waiters(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, []
        for fut in waiters:
            _resolve(fut)

    def _return(self, holding: Holding) -> Awaitable[int]:
        """Start returning ``holding``'s token to the pool.

        The slot is releasing before this returns, so a renewal that still
        sees the token in it never mistakes it for an orphan.
        """
        slot = holding.slot
        slot.to(Phase.RELEASING, token=holding.token)
        return self._returning(slot, holding.token)

    async def _returning(self, slot: Slot, token: str) -> int:
        gen = token.rsplit(":", 1)[0]

        async def release(ambiguous: bool) -> int:
            result, notice = await self._ops.release(slot.member, token, gen, self._ttl_ms)
            if notice is not None:
                # Handed to one of our own waiters: told here, not published.
                self._pushed(notice)
            # The slot holds nothing else, so after a lost reply "not held"
            # means the earlier attempt went through.
            return 1 if ambiguous and result == 0 else result

        try:
            result = await retrying(release, what="semaphore release")
        except BaseException:
            self._unsure(slot, Check.CONTENT)  # the renewal finds out where the token is
            raise
        self._clear(slot)
        return result

    def _closed_error(self) -> RedisSemaphoreClosedError:
        return RedisSemaphoreClosedError(f"semaphore {self.name!r} is closed")

    def _timeout_error(self, timeout: object) -> RedisSemaphoreTimeoutError:
        return RedisSemaphoreTimeoutError(f"semaphore {self.name!r}: no permit within {timeout} s")

    def _lost_error(self) -> RedisSemaphoreLeaseLostError:
        return RedisSemaphoreLeaseLostError(
            f"semaphore {self.name!r}: the permit's lease had expired and it was reclaimed "
            "before release(); raise lease_ttl above the longest stall of this process"
        )

    def _mark_lost(self, holding: Holding) -> None:
        if holding.lost:
            return
        holding.lost = True
        self._leases_lost += 1
        self._lost_event.set()
        log.warning("semaphore %r: a permit held by this instance was lost", self.name)
        for callback in self._lost_callbacks:
            try:
                callback()
            except Exception:
                log.exception("lease-lost callback failed")

    async def _sync(self, slot: Slot) -> None:
        """Make sure ``slot`` is registered under a fresh lease before a move into it.

        After a recent renewal only ``slot`` itself is registered (a renewal of
        that one slot), so taking many permits in one instance costs the same
        per permit however many it already holds; otherwise everything is
        renewed.
        """
        async with self._sync_lock:
            fresh = asyncio.get_running_loop().time() - self._last_renew < self.lease_ttl / 4
            if fresh and slot.registered and not slot.checks:
                return
            only = [slot] if fresh and not slot.checks else None
            await retrying(lambda _: self._renew_once(only), what="semaphore renewal")

    # -- renewal (called by the event loop's renewer) -------------------------

    async def _renew_tick(self) -> None:
        """A full renewal on its own (kicked while busy, or not batchable)."""
        await self._renew()

    async def _renew_batch(self) -> Batch | None:
        """This instance's part of the shared renewal round trip.

        An instance without slots only keeps the shared keys alive and looks
        at the oldest lease (three plain commands, sent once per process for
        every idle instance of the semaphore, every ``lease_ttl/2``).  With
        slots it runs the renewal script, under its renewal lock.  Scripts
        that must wait for replicas, and transactions, run on their own.
        """
        if self._sync_lock.locked():
            return None
        if not self._slots and not self._full_due:
            return Batch(
                self._link,
                self._lean,
                self._lean_done,
                dedupe=(self._lean[0][1], self._ttl_ms),
                period=self.lease_ttl / 2,
                inline=True,
            )
        if not isinstance(self._ops, LuaOps) or self._link.replicas:
            return None
        await self._sync_lock.acquire()
        try:
            request = self._renewal_request(None)
            keys, args = self._ops.renew_call(request.states, *self._renew_args(), request.channel)
            command: Command = ("EVALSHA", SCRIPTS["renew"].sha, len(keys), *keys, *args)
        except BaseException:
            self._sync_lock.release()
            raise
        return Batch(self._link, [command], functools.partial(self._batch_done, request))

    async def _lean_done(self, replies: list[Any] | BaseException, now: int) -> None:
        if isinstance(replies, BaseException):
            return
        meta, _, oldest = (self._link.check(r) for r in replies)
        if oldest and isinstance(oldest[0], (list, tuple)):  # RESP3
            oldest = oldest[0]
        late = bool(oldest) and float(oldest[1]) <= now + self._ttl_ms / 2
        if not int(meta) or late:
            # Keys lost (restart, flush, expiry) or a lease more than half
            # spent (a holder may be dead): the full renewal re-establishes
            # or reclaims.
            self._full_due = True
            self._renewal.kick()

    async def _batch_done(
        self, request: _RenewRequest, replies: list[Any] | BaseException, _: int
    ) -> None:
        try:
            if isinstance(replies, BaseException):
                return
            (reply,) = replies
            if isinstance(reply, rex.NoScriptError):  # a restarted or flushed server
                assert isinstance(self._ops, LuaOps)
                result = await self._ops.renew(request.states, *self._renew_args(), request.channel)
            else:
                result = renew_result(self._link.check(reply))
            await self._renewed(request, result)
        finally:
            self._sync_lock.release()

    async def _renew(self) -> None:
        async with self._sync_lock:
            await self._renew_once()

    def _renew_args(self) -> tuple[int, str, str, int, int]:
        return (
            self._count,
            self._gen,
            self.strategy.value,
            self._ttl_ms,
            recovery_window_ms(self._ttl_ms),
        )

    def _renewal_request(self, only: list[Slot] | None) -> _RenewRequest:
        slots = list(self._slots) if only is None else only
        snapshot = [(slot.epoch, slot.phase, slot.holding) for slot in slots]
        states = []
        for slot in slots:
            tokens = [slot.holding.token] if slot.holding and not slot.holding.lost else []
            if slot.releasing:
                tokens.append(slot.releasing)
            if slot.phase is Phase.WAITING:
                mode = "w" + (slot.number or "")
            else:
                mode = "d" if slot.checks & Check.TICKET else "-"
            states.append(SlotState(slot.member, slot.key, tokens, mode))
        sent_at = asyncio.get_running_loop().time()
        request = _RenewRequest(sent_at, slots, snapshot, states, only is not None)
        sub = self._sub
        if sub is not None and sub.active and self._waits:
            request.channel, request.joined = sub.channel, sub.joined
        return request

    async def _renew_once(self, only: list[Slot] | None = None) -> None:
        """Renew every slot's lease (or only those of ``only``) and settle what it finds."""
        request = self._renewal_request(only)
        result = await self._ops.renew(request.states, *self._renew_args(), request.channel)
        await self._renewed(request, result)

    async def _renewed(self, request: _RenewRequest, result: RenewResult) -> None:
        """Act on what a renewal found: lost holdings, orphans, dead holders, recovery."""
        slots = request.slots
        if result.status == "stale" and request.partial:
            # Only the slots renewed were dropped: renew everything, so that
            # every slot of the old generation is dropped before _gen moves on.
            await self._renew_once(None)
            return
        if result.status == "stale":
            log.warning(
                "semaphore %r was re-created (generation %s -> %s); permits held here are lost",
                self.name,
                self._gen,
                result.gen,
            )
            for held in list(self._held.values()):
                self._mark_lost(held)
            self._gen = result.gen
            for slot in slots:
                slot.registered = False
            self._renewal.kick()
            return
        if result.status == "restored":
            log.warning("semaphore %r: keys were missing; re-established them", self.name)
        if not result.listening and self._sub is not None:
            self._sub.misplaced(request.joined)
        for slot, (epoch, phase, holding), state, contents in zip(
            slots, request.snapshot, request.states, result.slots
        ):
            slot.registered = True
            slot.renewed_at = request.sent_at
            unmoved = slot.epoch == epoch  # no transition since the renewal was sent
            if state.mode[:1] == "w" and contents:
                if unmoved:
                    # A hand-off whose notice never came (or a permit the
                    # renewal took for a dropped ticket): the waiter has it.
                    _settle(self._waits.get(slot.member), contents[0])
                elif slot.phase is Phase.FREE:
                    # Sent while a wait was on, run after it ended (the renewal
                    # took a free permit for it): a renewal now adopts the
                    # permit, instead of leaving it in the slot until then.
                    slot.mark(Check.CONTENT)
                    self._renewal.kick()
            if unmoved and state.mode == "d":
                slot.checks &= ~Check.TICKET
            if holding is not None and slot.holding is holding and holding.token not in contents:
                self._mark_lost(holding)
            if unmoved and phase is Phase.FREE:
                # Nothing moved in or out of this slot during the renewal: a
                # token in it is an orphan of a lost reply.  Hand it on.
                slot.checks &= ~Check.CONTENT
                for token in contents:
                    if slot.holding is None:
                        self._dispatcher.offer_or_return(None, self._hold(slot, token).token)
                    else:  # pragma: no cover - a slot never holds two tokens
                        log.error("slot %s holds more than one token: %s", slot.key, contents)
                if slot.holding is None:
                    self._freed(slot)
        epochs = {slot.member: snap[0] for slot, snap in zip(slots, request.snapshot)}
        for member, number in result.requeued:
            again = self._by_member.get(member)
            if again is None:
                continue
            if again.phase is Phase.WAITING and again.epoch == epochs.get(member):
                if again.number is None:
                    self._numbered(again, number)
            else:
                # Queued again for a wait that ended meanwhile: drop it.
                again.mark(Check.CONTENT | Check.TICKET)
                self._renewal.kick()
        if not request.partial:
            self._last_renew = request.sent_at
            self._full_due = False
        if result.stale_members:
            returned = await self._ops.reclaim(result.stale_members, self._gen, self._ttl_ms)
            if returned > 0:
                log.info(
                    "semaphore %r: reclaimed %d permit(s) of dead holders", self.name, returned
                )
        if result.refill_due:
            await self._refill()
        if not request.partial:
            await self._drop_idle_slots()

    async def _drop_idle_slots(self) -> None:
        """Forget the slots of an instance that has been idle for two renewals.

        An idle instance then renews only the shared keys (see
        :meth:`renewal`), so a thousand semaphores used once cost a thousand
        times three plain commands per half lease, not a script each.  The
        next acquisition registers a new slot (one more round trip).
        """
        quiet = (
            not self._closed
            and not self._held
            and self._dispatcher.waiting == 0
            and self._dispatcher.active_lanes == 0
            and not self._waits
            and not self._tasks
            and all(slot.free and slot.registered for slot in self._slots)
        )
        self._quiet = self._quiet + 1 if quiet else 0
        if self._quiet < 2 or not self._slots:
            return
        members = [slot.member for slot in self._slots]
        self._slots = []
        self._by_member.clear()
        self._maybe_free.clear()
        if self._sub is not None:
            # Idle: no listener connection is kept for it.
            sub, self._sub = self._sub, None
            try:
                await sub.close()
            except Exception as exc:  # the listener drops it with its connection
                log.debug("unsubscribing %s failed: %r", self.name, exc)
        try:
            await self._ops.deregister(members)
        except Exception as exc:  # the slots expire; survivors drop the registrations
            log.debug("deregistering idle slots of %s failed: %r", self.name, exc)

    async def _refill(self) -> None:
        holders_key = self._keys.key("holders")
        for _ in range(5):
            members = [text(m) for m in await self._link.call("ZRANGE", holders_key, 0, -1)]
            minted = await self._ops.refill(members, self._count, self._gen, self._ttl_ms)
            if minted != -2:
                if minted > 0:
                    log.info(
                        "semaphore %r: recovery done, %d permit(s) re-created", self.name, minted
                    )
                return


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _settle(fut: asyncio.Future[str | None] | None, value: str | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)
