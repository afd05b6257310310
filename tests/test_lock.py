"""RedisLock: ownership, fences, re-entrancy, guarded(), and real faults.

Timeouts, cancellation at any point, close and statistics are covered for
the lock by the contract suite (``test_contract.py``).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.proxy import FaultProxy
from devtools.servers import RedisServer

from helpers import WorkerProcess, keys_of, keyspace
from redsync import (
    RedisLock,
    RedisLockError,
    RedisLockLeaseLostError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
    RedsyncError,
)

LOCK_HOLDER = str(Path(__file__).parent / "workers" / "lock_holder.py")
PREFIX = "redsync:lock"


def lock_keys(name: str) -> Any:
    return keyspace(name, PREFIX)


class LockHolder(WorkerProcess):
    """A worker process that holds a lock (tests/workers/lock_holder.py)."""

    def __init__(self, url: str, name: str, ttl: float) -> None:
        super().__init__(LOCK_HOLDER, url, name, ttl)

    #: When it got the lock, on this machine's monotonic clock.
    at: float = 0.0

    async def held(self, timeout: float = 20) -> int:
        """The fence it took, once it holds the lock."""
        word, fence, at = (await self.line(timeout)).split()
        assert word == "held"
        self.at = float(at)
        return int(fence)


@pytest.fixture
async def lock_holders() -> AsyncIterator[Callable[..., LockHolder]]:
    started: list[LockHolder] = []

    def start(url: str, name: str, ttl: float) -> LockHolder:
        holder = LockHolder(url, name, ttl)
        started.append(holder)
        return holder

    try:
        yield start
    finally:
        for holder in started:
            holder.stop()


# -- the API ---------------------------------------------------------------------


@pytest.mark.usefixtures("topology")
async def test_acquire_returns_a_fence_and_ownership_is_the_task(
    redis: Any, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    other = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        assert not await lock.locked() and not lock.owned() and lock.fence is None
        fence = await lock.acquire()
        assert isinstance(fence, int) and fence > 0
        assert lock.owned() and lock.fence == fence
        assert await lock.locked() and await other.locked()

        async def look() -> tuple[bool, int | None]:
            return lock.owned(), lock.fence

        assert await asyncio.ensure_future(look()) == (False, None), "another task owns it"
        with pytest.raises(RedisLockTimeoutError):
            await other.acquire(timeout=0.2)
        stats = await lock.statistics()
        assert (stats.locked, stats.held_here, stats.fence, stats.depth) == (True, True, fence, 1)
        await lock.release()
        assert not lock.owned() and not await lock.locked()
        with pytest.raises(RedisLockNotAcquiredError, match="acquire"):
            await lock.release()
        async with other as second:
            assert second > fence, "fences rise across holders"
            assert other.owned()
    finally:
        await lock.close()
        await other.close()


async def test_any_task_may_release_a_lock_held_through_the_instance(
    redis: aioredis.Redis, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        await lock.acquire()
        await asyncio.ensure_future(lock.release())
        assert not await lock.locked()
        assert (await lock.statistics()).held_here is False
    finally:
        await lock.close()


async def test_a_second_acquire_by_the_owner_raises_unless_reentrant(
    redis: aioredis.Redis, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        fence = await lock.acquire()
        started = time.monotonic()
        with pytest.raises(RedisLockError, match="reentrant=True"):
            await lock.acquire()
        assert time.monotonic() - started < 0.5, "it should raise at once, not wait"
        assert lock.owned() and lock.fence == fence
        # Another task of the same instance waits like anyone else.
        with pytest.raises(RedisLockTimeoutError):
            await asyncio.ensure_future(lock.acquire(timeout=0.2))
        await lock.release()
    finally:
        await lock.close()


async def test_reentrant_acquisitions_are_counted_and_send_nothing(
    redis: aioredis.Redis, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5, reentrant=True)
    try:
        fence = await lock.acquire()
        assert lock._sem is not None
        sent: list[Any] = []
        links = (lock._link, lock._sem._link)
        originals = [link.run for link in links]
        for link, original in zip(links, originals):

            async def run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                sent.append(args[1])
                return await _original(*args, **kwargs)

            link.run = run  # type: ignore[method-assign]
        try:
            assert await lock.acquire() == fence
            async with lock as inner:
                assert inner == fence
                assert (await lock.statistics()).depth == 3
            sent.clear()  # statistics() reads Redis; the rest must not
            await lock.release()
            assert sent == [], f"an inner release sent {sent}"
            assert lock.owned() and await lock.locked()
            sent.clear()
            await lock.release()  # the outermost
            assert sent, "the outermost release must reach Redis"
        finally:
            for link in links:
                del link.run
        assert not await lock.locked() and not lock.owned()
    finally:
        await lock.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": math.nan}, "lease_ttl"),
        ({"reentrant": 1}, "reentrant"),
        ({"replicas": -1}, "replicas"),
        ({"replica_timeout": "x"}, "replica_timeout"),
        ({"key_prefix": ""}, "key_prefix"),
    ],
)
async def test_bad_arguments_raise_at_once_and_write_nothing(
    redis: aioredis.Redis, unique_name: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        RedisLock(redis, unique_name, **kwargs)
    assert await keys_of(redis, unique_name) == []


async def test_the_constructor_does_no_io(unique_name: str) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:9/0")  # nothing listens there
    lock = RedisLock(client, unique_name)
    assert not lock.owned()
    await lock.close()
    await client.aclose()


# -- fences ---------------------------------------------------------------------------


@pytest.mark.usefixtures("topology")
async def test_fences_rise_in_hold_order_across_instances(
    redis_factory: Callable[..., Any], unique_name: str
) -> None:
    """Tasks of three instances (own clients: three processes) take turns; every
    hold is alone (a shared flag), and the fences rise in the order of holds."""
    locks = [RedisLock(redis_factory(), unique_name, lease_ttl=5) for _ in range(3)]
    order: list[int] = []
    inside = 0

    async def worker(lock: RedisLock) -> None:
        nonlocal inside
        for _ in range(8):
            async with lock as fence:
                inside += 1
                assert inside == 1, "two holders at once"
                order.append(fence)
                await asyncio.sleep(0.002)
                inside -= 1

    try:
        await asyncio.wait_for(
            asyncio.gather(*(worker(lock) for lock in locks for _ in range(3))), 60
        )
        assert len(order) == 72
        assert order == sorted(order) and len(set(order)) == len(order), order
    finally:
        for lock in locks:
            await lock.close()


async def test_a_hand_off_brings_the_fence_with_it(
    redis_factory: Callable[..., Any], unique_name: str
) -> None:
    """A release that hands the lock to a waiter of another instance issues the
    waiter's fence in the same script and sends it with the notice: the new
    holder asks for no fence of its own."""
    holder = RedisLock(redis_factory(), unique_name, lease_ttl=5)
    waiter = RedisLock(redis_factory(), unique_name, lease_ttl=5)
    asked: list[Any] = []
    try:
        first = await holder.acquire()
        taking = asyncio.ensure_future(waiter.acquire(timeout=10))
        await wait_until(lambda: waiter._waiting > 0, timeout=5)
        original = waiter._link.script

        async def script(which: Any, *args: Any, **kwargs: Any) -> Any:
            asked.append(which.name)
            return await original(which, *args, **kwargs)

        waiter._link.script = script  # type: ignore[method-assign]
        await holder.release()
        second = await asyncio.wait_for(taking, 10)
        assert second > first
        assert asked == [], f"the new holder asked for its fence: {asked}"
        fence_key = lock_keys(unique_name).key("fence")
        assert int(await waiter._client.get(fence_key)) == second
        await waiter.release()
    finally:
        await holder.close()
        await waiter.close()


async def test_fences_keep_rising_after_the_keys_are_lost(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """With the fence key gone (expired) or every key gone (a flush, a restart
    of a server that keeps nothing), the next fence is still greater."""
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        first = await lock.acquire()
        await lock.release()
        fence_key = lock_keys(unique_name).key("fence")
        assert int(await redis.get(fence_key)) == first
        ttl = await redis.pttl(fence_key)
        assert 0 < ttl <= 3_600_000, "the fence key must expire"
        await redis.delete(fence_key)
        second = await lock.acquire()
        assert second > first
        await lock.release()
        await redis.delete(*await keys_of(redis, unique_name))
        fresh = RedisLock(redis, unique_name, lease_ttl=5)
        try:
            third = await fresh.acquire(timeout=10)
            assert third > second
            await fresh.release()
        finally:
            await fresh.close()
    finally:
        await lock.close()


async def test_every_key_has_a_ttl(redis: aioredis.Redis, unique_name: str) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    waiter = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        await lock.acquire()
        waiting = asyncio.ensure_future(waiter.acquire())
        await wait_until(lambda: waiter._waiting > 0, timeout=5)
        keys = await keys_of(redis, unique_name)
        assert keys
        for key in keys:
            assert await redis.pttl(key) > 0, f"{key} has no TTL"
        await lock.release()
        await asyncio.wait_for(waiting, 5)
        await waiter.release()
    finally:
        await lock.close()
        await waiter.close()


# -- faults -----------------------------------------------------------------------------


async def test_a_killed_holders_lock_is_taken_over_with_a_higher_fence(
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    lock_holders: Callable[..., LockHolder],
) -> None:
    ttl = 1.5
    holder = lock_holders(redis_url, unique_name, ttl)
    fence = await holder.held()
    lock = RedisLock(redis, unique_name, lease_ttl=ttl)
    try:
        with pytest.raises(RedisLockTimeoutError):
            await lock.acquire(timeout=0.3)
        holder.proc.kill()
        holder.proc.wait(10)
        killed = time.monotonic()
        taken = await lock.acquire(timeout=15)
        waited = time.monotonic() - killed
        assert taken > fence
        # The dead holder's lease (1.5 s) plus one renewal period, with slack.
        assert waited < ttl + ttl / 3 * 1.1 + 2.0, f"took over after {waited:.1f} s"
        await lock.release()
    finally:
        await lock.close()


async def test_a_holder_stalled_past_its_lease_finds_the_lock_lost(
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    lock_holders: Callable[..., LockHolder],
) -> None:
    """SIGSTOP the holder for longer than its lease: the lock goes to a waiter
    with a higher fence, and the holder's release, once it runs again, says
    the lease was lost instead of releasing the new holder's lock."""
    ttl = 1.5
    holder = lock_holders(redis_url, unique_name, ttl)
    fence = await holder.held()
    lock = RedisLock(redis, unique_name, lease_ttl=ttl)
    try:
        os.kill(holder.proc.pid, signal.SIGSTOP)
        taken = await lock.acquire(timeout=15)
        assert taken > fence
        os.kill(holder.proc.pid, signal.SIGCONT)
        holder.send("release")
        assert await holder.line() == "RedisLockLeaseLostError"
        assert await holder.line() == "done"
        assert lock.owned() and await lock.locked(), "the stale holder released our lock"
        await lock.release()
    finally:
        await lock.close()


async def test_guarded_steps_down_before_anyone_else_can_get_in(
    fault_proxy: FaultProxy, redis_url: str, redis: aioredis.Redis, unique_name: str
) -> None:
    """The holder's replies stop (its requests still reach Redis, so its lease
    is even renewed there): no renewal is confirmed, so guarded() cancels the
    body within 2/3 of the lease and raises; a waiter on another connection
    gets the lock only after that."""
    ttl = 1.5
    frozen = aioredis.Redis.from_url(fault_proxy.rewrite(redis_url))
    holder = RedisLock(frozen, unique_name, lease_ttl=ttl)
    waiter = RedisLock(redis, unique_name, lease_ttl=ttl)
    events: list[tuple[str, float]] = []
    try:

        async def body() -> None:
            async with holder.guarded(timeout=5) as fence:
                events.append(("held", time.monotonic()))
                assert holder.fence == fence
                fault_proxy.pause()
                events.append(("paused", time.monotonic()))
                await asyncio.sleep(30)

        running = asyncio.ensure_future(body())
        await wait_until(lambda: any(e == "paused" for e, _ in events), timeout=10)
        taking = asyncio.ensure_future(waiter.acquire(timeout=20))
        with pytest.raises(RedisLockLeaseLostError, match="stopped"):
            await asyncio.wait_for(running, 10)
        stepped_down = time.monotonic()
        paused_at = dict(events)["paused"]
        assert stepped_down - paused_at <= ttl * 2 / 3 + 0.5
        assert not taking.done(), "the waiter got in before the holder stepped down"
        fault_proxy.resume()
        await asyncio.wait_for(taking, 20)
        assert (await waiter.statistics()).held_here
        await waiter.release()
    finally:
        fault_proxy.resume()
        await holder.close()
        await waiter.close()
        await frozen.aclose()


async def test_guarded_steps_down_under_client_pause_before_another_process_gets_in(
    private_server: RedisServer, unique_name: str, lock_holders: Callable[..., LockHolder]
) -> None:
    """CLIENT PAUSE freezes every connection to the server (the holder's
    renewals wait unanswered) for most of a lease: guarded() stops the body
    within 2/3 of the lease, and the waiting process gets the lock only
    after that, with a higher fence."""
    ttl = 1.5
    client = aioredis.Redis.from_url(private_server.url)
    holder = RedisLock(client, unique_name, lease_ttl=ttl)
    events: dict[str, float] = {}
    waiter: LockHolder | None = None
    try:

        async def body() -> None:
            async with holder.guarded(timeout=5) as fence:
                events["fence"] = fence
                await wait_until(lambda: "waiting" in events, timeout=20)
                private_server.cli("CLIENT", "PAUSE", str(int(ttl * 900)), "ALL")
                events["paused"] = time.monotonic()
                await asyncio.sleep(30)

        running = asyncio.ensure_future(body())
        await wait_until(lambda: "fence" in events, timeout=10)
        waiter = lock_holders(private_server.url, unique_name, ttl)
        await wait_until(lambda: _queued(client, unique_name), timeout=20)
        events["waiting"] = time.monotonic()
        with pytest.raises(RedisLockLeaseLostError, match="stopped"):
            await asyncio.wait_for(running, 10)
        stepped_down = time.monotonic()
        assert stepped_down - events["paused"] <= ttl * 2 / 3 + 0.5
        fence = await waiter.held(timeout=20)
        assert fence > events["fence"]
        assert waiter.at > stepped_down, "the other process got in before the holder stepped down"
    finally:
        if waiter is not None:
            waiter.stop()
        await holder.close()
        await client.aclose()


async def _queued(client: aioredis.Redis, name: str) -> bool:
    return bool(await client.zcard(lock_keys(name).key("waiters")))


async def test_guarded_returns_the_lock_when_the_body_ends(
    redis: aioredis.Redis, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name, lease_ttl=5)
    try:
        async with lock.guarded() as fence:
            assert lock.owned() and lock.fence == fence
        assert not await lock.locked()
        with pytest.raises(ZeroDivisionError):
            async with lock.guarded():
                raise ZeroDivisionError
        assert not await lock.locked()
        # A cancellation from outside is passed on, not turned into a lost lease.
        task = asyncio.ensure_future(_hold_forever(lock))
        await wait_until(lambda: lock._hold is not None, timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await lock.locked()
    finally:
        await lock.close()


async def _hold_forever(lock: RedisLock) -> None:
    async with lock.guarded():
        await asyncio.sleep(60)


# -- scale -----------------------------------------------------------------------------


async def test_ten_thousand_locks_on_a_default_client_use_few_connections(
    private_server: RedisServer, unique_name: str
) -> None:
    """10,000 locks on 10,000 names, each taken and released by its own task,
    on a default client (a pool of 100 on redis-py 8)."""
    client = aioredis.Redis.from_url(private_server.url)
    locks = [RedisLock(client, f"{unique_name}-{i}", lease_ttl=30) for i in range(10_000)]
    peak = 0

    async def use(lock: RedisLock) -> int:
        nonlocal peak
        fence = await lock.acquire(timeout=60)
        pool = client.connection_pool
        peak = max(peak, len(pool._in_use_connections))  # type: ignore[attr-defined]
        await lock.release()
        return fence

    try:
        fences = await asyncio.wait_for(asyncio.gather(*(use(lock) for lock in locks)), 120)
        assert all(isinstance(f, int) for f in fences)
        assert peak <= 8, f"{peak} connections in use at once"
    finally:
        await asyncio.gather(*(lock.close() for lock in locks))
        await client.aclose()


def test_lock_errors_derive_from_the_shared_bases() -> None:
    assert issubclass(RedisLockTimeoutError, TimeoutError)
    for cls in (RedisLockError, RedisLockLeaseLostError, RedisLockNotAcquiredError):
        assert issubclass(cls, RedsyncError)
        assert str(cls()), "an error without arguments still says something"
