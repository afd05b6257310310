"""Behaviour of RedisSemaphore on a healthy server (faults are in test_faults.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until

from helpers import assert_permits, keys_of, keyspace
from redsync import (
    RedisSemaphore,
    RedisSemaphoreClosedError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
    SemaphoreInitStrategy,
)

# Every test here runs on a standalone server, a Redis Cluster and a Sentinel set-up.
pytestmark = pytest.mark.usefixtures("topology")


@pytest.fixture(params=list(SemaphoreInitStrategy), ids=lambda s: s.value)
def strategy(request: pytest.FixtureRequest) -> SemaphoreInitStrategy:
    return request.param  # type: ignore[no-any-return]


async def test_one_shared_instance_never_admits_more_than_count(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy, topology: str
) -> None:
    tasks = 1000 if topology == "standalone" else 300  # the same code path, less time
    sem = await RedisSemaphore.create(redis, unique_name, count=3, semaphore_init_strategy=strategy)
    inside = peak = done = 0

    async def worker() -> None:
        nonlocal inside, peak, done
        async with sem:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.002)
            inside -= 1
            done += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(tasks))), 60)
    assert done == tasks
    assert peak == 3
    stats = await sem.statistics()
    assert stats.held_here == 0 and stats.tasks_waiting == 0 and stats.available == 3
    await assert_permits(redis, unique_name, 3, free=3)
    await sem.close()


async def test_many_instances_never_admit_more_than_count(
    redis_factory: object, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    make = redis_factory  # type: ignore[assignment]
    sems = [
        await RedisSemaphore.create(make(), unique_name, count=2, semaphore_init_strategy=strategy)  # type: ignore[operator]
        for _ in range(5)
    ]
    inside = peak = 0

    async def worker(sem: RedisSemaphore) -> None:
        nonlocal inside, peak
        for _ in range(20):
            async with sem:
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.001)
                inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker(s) for s in sems for _ in range(3))), 60)
    assert peak == 2
    for sem in sems:
        await sem.close()
    await assert_permits(sems[0]._client, unique_name, 2, free=2)


async def test_release_without_permit_raises_and_changes_nothing(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=2)
    with pytest.raises(RedisSemaphoreNotAcquiredError, match="holds no permit"):
        await sem.release()
    await sem.acquire()
    await sem.release()
    with pytest.raises(RedisSemaphoreNotAcquiredError):
        await sem.release()
    await assert_permits(redis, unique_name, 2, free=2)
    await sem.close()


async def test_release_from_another_task_uses_a_held_permit(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    await asyncio.ensure_future(sem.acquire())  # acquired by another task
    assert (await sem.statistics()).held_here == 1
    await sem.release()  # like asyncio.Semaphore, release is not tied to a task
    await assert_permits(redis, unique_name, 1, free=1)
    await sem.close()


async def test_acquire_timeout_zero_is_one_nonblocking_try(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1, semaphore_init_strategy=strategy)
    await sem.acquire(timeout=0)
    for value in (0, -1, 0.0):
        started = time.perf_counter()
        with pytest.raises(RedisSemaphoreTimeoutError):
            await sem.acquire(timeout=value)
        assert time.perf_counter() - started < 1.0
    await sem.release()
    await sem.acquire(timeout=-5)
    await sem.release()
    await assert_permits(redis, unique_name, 1, free=1)
    await sem.close()


async def test_acquire_timeout_expires_and_leaves_the_pool_intact(
    redis: aioredis.Redis, unique_name: str
) -> None:
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    other = await RedisSemaphore.attach(redis, unique_name)
    await holder.acquire()
    started = time.perf_counter()
    with pytest.raises(RedisSemaphoreTimeoutError, match=r"no permit within 0\.2"):
        await other.acquire(timeout=0.2)
    elapsed = time.perf_counter() - started
    assert 0.19 <= elapsed < 2.0
    await holder.release()
    await other.acquire(timeout=5)
    await other.release()
    await assert_permits(redis, unique_name, 1, free=1)
    await holder.close()
    await other.close()


async def test_waiters_are_served_in_fifo_order(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    await sem.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with sem:
            order.append(i)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.ensure_future(waiter(i)))
        await wait_until(lambda i=i: sem._waiting == i + 1)  # type: ignore[misc]
    await sem.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert order == list(range(10))
    await sem.close()


async def test_every_key_has_a_ttl_from_the_moment_it_is_written(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    async def assert_all_expire() -> list[str]:
        keys = await keys_of(redis, unique_name)
        for key in keys:
            ttl = await redis.pttl(key)
            assert 0 < ttl <= 30_000, f"{key} has PTTL {ttl}"
        return keys

    sem = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=30, semaphore_init_strategy=strategy
    )
    assert len(await assert_all_expire()) == 2  # meta and pool
    await sem.acquire()
    await sem.acquire()  # pool now empty: Redis deletes the list
    keys = await assert_all_expire()
    assert keyspace(unique_name).key("pool") not in keys
    assert any(":slot:" in k for k in keys) and any(k.endswith(":holders") for k in keys)
    await sem.release()  # re-creates the pool: with a TTL
    await sem.release()
    assert keyspace(unique_name).key("pool") in await assert_all_expire()
    await sem.close()


async def test_fractional_lease_ttl_is_honoured_to_the_millisecond(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=0.6)
    ttl = await redis.pttl(keyspace(unique_name).key("meta"))
    assert 300 < ttl <= 600
    await sem.close()


async def test_an_empty_pool_is_kept_alive_while_permits_are_held(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    sem = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=0.3, semaphore_init_strategy=strategy
    )
    await sem.acquire()
    await sem.acquire()
    start = sem._renewal.ticks
    # Several lease periods pass with every permit held and the pool key absent.
    await wait_until(lambda: sem._renewal.ticks >= start + 6, timeout=10)
    assert await redis.exists(keyspace(unique_name).key("meta"))
    await sem.release()
    await sem.release()
    await assert_permits(redis, unique_name, 2, free=2)
    assert (await sem.statistics()).leases_lost == 0
    await sem.close()


async def test_keys_expire_once_every_instance_is_closed(
    redis: aioredis.Redis, unique_name: str
) -> None:
    a = await RedisSemaphore.create(redis, unique_name, count=2, lease_ttl=0.3)
    b = await RedisSemaphore.attach(redis, unique_name, lease_ttl=0.3)
    async with a, b:
        pass
    await a.close()
    start = b._renewal.ticks
    await wait_until(lambda: b._renewal.ticks >= start + 3, timeout=10)
    assert await keys_of(redis, unique_name), "b alone must keep the semaphore alive"
    await b.close()

    async def gone() -> bool:
        return not await keys_of(redis, unique_name)

    await wait_until(gone, timeout=3)


async def test_close_stops_waiters_and_is_idempotent(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1)
    await sem.acquire()
    waiter = asyncio.ensure_future(sem.acquire())
    await wait_until(lambda: sem._waiting == 1)
    started = time.perf_counter()
    await sem.close()
    await sem.close()
    assert time.perf_counter() - started < 1.0
    with pytest.raises(Exception, match="closed"):
        await waiter
    await sem.release()  # a held permit stays releasable after close()
    # The wait close() cut leaves the queue in the background (bounded by
    # close()'s own wait), handing on a permit that reached it meanwhile; the
    # reads below are not atomic, so they wait until the permit settles.
    pool = keyspace(unique_name).key("pool")

    async def back() -> bool:
        return int(await redis.llen(pool)) == 1

    await wait_until(back, timeout=10, message="the permit is back in the pool")
    await assert_permits(redis, unique_name, 1, free=1)


async def test_statistics_lists_holders_and_waiters(
    redis: aioredis.Redis, unique_name: str
) -> None:
    a = await RedisSemaphore.create(redis, unique_name, count=2, lease_ttl=10)
    b = await RedisSemaphore.attach(redis, unique_name, lease_ttl=10)
    await a.acquire()
    await a.acquire()
    waiters = [asyncio.ensure_future(b.acquire()) for _ in range(3)]
    await wait_until(lambda: b._waiting == 3)
    stats = await b.statistics()
    assert stats.count == 2 and stats.available == 0 and stats.tasks_waiting == 3
    assert [h.instance for h in stats.holders] == [a.instance_id]
    assert stats.holders[0].permits == 2
    assert 0 < stats.holders[0].lease_remaining <= 10
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await a.release()
    await a.release()
    await a.close()
    await b.close()
    await assert_permits(redis, unique_name, 2, free=2)


async def test_get_count_reads_redis(redis: aioredis.Redis, unique_name: str) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=7)
    assert await sem.get_count() == 7
    await sem.close()


async def test_close_during_the_first_steps_of_a_wait_fails_that_wait(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """close() lands while an acquire() is still taking its first steps (its
    try of the pool in flight, before its ticket is queued): the wait must fail
    with the closed error, not queue afterwards and wait forever."""
    holder = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=5)
    sem = await RedisSemaphore.attach(redis, unique_name, lease_ttl=5)
    entered, opened = asyncio.Event(), asyncio.Event()
    original = sem._link.pipeline

    async def held(commands: Any, **kwargs: Any) -> Any:
        if commands and commands[0][0] == "LMOVE":
            entered.set()
            await opened.wait()
        return await original(commands, **kwargs)

    sem._link.pipeline = held  # type: ignore[method-assign]
    try:
        await holder.acquire()
        waiting = asyncio.ensure_future(sem.acquire())
        await asyncio.wait_for(entered.wait(), 5)
        closing = asyncio.ensure_future(sem.close())
        await wait_until(lambda: sem._closed, timeout=5)
        opened.set()
        with pytest.raises(RedisSemaphoreClosedError):
            await asyncio.wait_for(waiting, 10)
        await asyncio.wait_for(closing, 10)
        await holder.release()
        assert (await holder.statistics()).available == 1
    finally:
        opened.set()
        del sem._link.pipeline
        await sem.close()
        await holder.close()
