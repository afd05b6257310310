"""RedisSemaphore under real faults: killed and frozen processes, cancellations,
killed connections, lost replies, server restarts and flushes, READONLY."""

from __future__ import annotations

import asyncio
import os
import random
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

from helpers import WorkerProcess, assert_permits, keys_of, keyspace, tokens
from redsync import (
    RedisSemaphore,
    RedisSemaphoreLeaseLostError,
    RedisSemaphoreTimeoutError,
    SemaphoreInitStrategy,
)

HOLDER = str(Path(__file__).parent / "workers" / "holder.py")


@pytest.fixture(params=list(SemaphoreInitStrategy), ids=lambda s: s.value)
def strategy(request: pytest.FixtureRequest) -> SemaphoreInitStrategy:
    return request.param  # type: ignore[no-any-return]


class Holder(WorkerProcess):
    """A worker process that holds permits (tests/workers/holder.py)."""

    def __init__(self, url: str, name: str, count: int, ttl: float, permits: int) -> None:
        super().__init__(HOLDER, url, name, count, ttl, permits)


@pytest.fixture
async def holders() -> AsyncIterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(*args: Any) -> Holder:
        holder = Holder(*args)
        started.append(holder)
        return holder

    yield start
    for holder in started:
        holder.stop()


async def test_permits_of_a_sigkilled_process_return_within_the_lease(
    redis_url: str, redis: aioredis.Redis, unique_name: str, holders: Callable[..., Holder]
) -> None:
    ttl = 1.0
    survivor = await RedisSemaphore.create(redis, unique_name, count=3, lease_ttl=ttl)
    holder = holders(redis_url, unique_name, 3, ttl, 2)
    assert (await holder.line()).startswith("held")
    await survivor.acquire()
    with pytest.raises(RedisSemaphoreTimeoutError):
        await survivor.acquire(timeout=0)
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(10)
    killed_at = time.perf_counter()
    await survivor.acquire(timeout=10)
    await survivor.acquire(timeout=10)
    recovered = time.perf_counter() - killed_at
    # The lease runs out at most ttl after the kill; a watchdog tick of the
    # survivor follows within one period (ttl/3 + 20 % jitter).
    assert recovered <= ttl + ttl / 3 * 1.2 + 0.5, recovered
    await assert_permits(redis, unique_name, 3, free=0)
    for _ in range(3):
        await survivor.release()
    await survivor.close()
    await assert_permits(redis, unique_name, 3, free=3)


async def test_a_dead_holders_permit_comes_back_even_if_its_slot_expired_first(
    redis_url: str,
    redis: aioredis.Redis,
    unique_name: str,
    holders: Callable[..., Holder],
    strategy: SemaphoreInitStrategy,
) -> None:
    """No survivor renewed during the second half of the dead holder's lease (a
    stalled survivor, a slow network), so its slot expired with the permit inside
    before anyone could reclaim it: the survivors must re-create that permit."""
    ttl = 1.0
    survivor = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=ttl, semaphore_init_strategy=strategy
    )
    holder = holders(redis_url, unique_name, 2, ttl, 1)
    line = await holder.line()
    assert line.startswith("held")
    dead = line.split()[1]
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(10)
    # What expiry would do had every survivor been late: the slot, token inside, is gone.
    slots = [k for k in await keys_of(redis, unique_name) if f":slot:{dead}." in k]
    assert slots
    assert sum([len(await redis.lrange(k, 1, -1)) for k in slots]) == 1
    await redis.delete(*slots)
    await survivor.acquire(timeout=10)
    await survivor.acquire(timeout=10)  # the lost permit, re-created
    await assert_permits(redis, unique_name, 2, free=0)
    await survivor.release()
    await survivor.release()
    await survivor.close()
    await assert_permits(redis, unique_name, 2, free=2)


async def test_a_frozen_holder_learns_its_lease_was_lost(
    redis_url: str, redis: aioredis.Redis, unique_name: str, holders: Callable[..., Holder]
) -> None:
    ttl = 0.6
    survivor = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=ttl)
    holder = holders(redis_url, unique_name, 1, ttl, 1)
    assert (await holder.line()).startswith("held")
    os.kill(holder.proc.pid, signal.SIGSTOP)  # a stall far longer than the lease
    try:
        await survivor.acquire(timeout=10)  # the permit is reclaimed meanwhile
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)
    holder.send("release")
    assert await holder.line() == "RedisSemaphoreLeaseLostError"
    lost_line = await holder.line()
    assert lost_line.startswith("lost-callbacks")
    assert await holder.line() == "done"
    # The holder's late release did not add a permit: exactly one exists, ours.
    await assert_permits(redis, unique_name, 1, free=0)
    await survivor.release()
    await survivor.close()
    await assert_permits(redis, unique_name, 1, free=1)


async def test_cancellation_storm_loses_and_duplicates_nothing(
    redis_factory: Callable[..., aioredis.Redis], unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    count = 3
    sems = [
        await RedisSemaphore.create(
            redis_factory(), unique_name, count=count, semaphore_init_strategy=strategy
        )
        for _ in range(3)
    ]
    rng = random.Random(1234)
    inside = peak = acquired = cancelled = timeouts = 0
    stop = time.perf_counter() + 4.0

    async def cycle(sem: RedisSemaphore) -> None:
        nonlocal inside, peak, acquired
        async with sem:
            inside += 1
            peak = max(peak, inside)
            acquired += 1
            try:
                await asyncio.sleep(rng.random() * 0.003)
            finally:
                inside -= 1

    async def worker(sem: RedisSemaphore) -> None:
        nonlocal cancelled, timeouts, inside, peak, acquired
        while time.perf_counter() < stop:
            mode = rng.random()
            if mode < 0.3:
                try:
                    await asyncio.wait_for(cycle(sem), rng.random() * 0.004)
                except asyncio.TimeoutError:
                    cancelled += 1
            elif mode < 0.6:
                try:
                    await sem.acquire(timeout=rng.random() * 0.004)
                except RedisSemaphoreTimeoutError:
                    timeouts += 1
                    continue
                inside += 1
                peak = max(peak, inside)
                acquired += 1
                inside -= 1
                await sem.release()
            else:
                task = asyncio.ensure_future(cycle(sem))
                await asyncio.sleep(rng.random() * 0.004)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    cancelled += 1

    await asyncio.wait_for(asyncio.gather(*(worker(s) for s in sems for _ in range(8))), 60)
    assert peak <= count
    # A storm worth the name, even on a loaded machine (counts fall with CPU time).
    assert acquired > 5 and cancelled > 20 and timeouts > 5, (acquired, cancelled, timeouts)
    # Tokens handed to nobody are returned in the background: wait for quiet.
    client = sems[0]._client

    async def settled() -> bool:
        return len((await tokens(client, unique_name))["pool"]) == count

    await wait_until(settled, timeout=10)
    for sem in sems:
        assert (await sem.statistics()).held_here == 0
        await sem.close()
    await assert_permits(client, unique_name, count, free=count)


async def test_killed_connections_lose_and_duplicate_nothing(
    redis_factory: Callable[..., aioredis.Redis], redis: aioredis.Redis, unique_name: str
) -> None:
    count = 2
    client_name = f"victim-{unique_name}"
    sems = [
        await RedisSemaphore.create(
            redis_factory(client_name=client_name), unique_name, count=count, lease_ttl=2
        )
        for _ in range(3)
    ]
    inside = peak = acquired = 0
    stop = time.perf_counter() + 4.0
    kills = 0

    async def worker(sem: RedisSemaphore) -> None:
        nonlocal inside, peak, acquired
        while time.perf_counter() < stop:
            try:
                await sem.acquire(timeout=1)
            except RedisSemaphoreTimeoutError:
                continue
            inside += 1
            peak = max(peak, inside)
            acquired += 1
            await asyncio.sleep(0.002)
            inside -= 1
            try:
                await sem.release()
            except RedisSemaphoreLeaseLostError:  # pragma: no cover - must not happen
                raise

    async def killer() -> None:
        nonlocal kills
        rng = random.Random(7)
        while time.perf_counter() < stop:
            await asyncio.sleep(rng.random() * 0.05)
            for fields in await redis.client_list():
                if fields.get("name") == client_name and rng.random() < 0.3:
                    await redis.execute_command("CLIENT", "KILL", "ID", fields["id"])
                    kills += 1

    await asyncio.wait_for(
        asyncio.gather(killer(), *(worker(s) for s in sems for _ in range(4))), 60
    )
    assert peak <= count
    assert kills > 20 and acquired > 50, (kills, acquired)
    # A move whose reply died with its connection is found by the next
    # renewal and handed on: after that, every permit is back.
    for sem in sems:
        sem._renewal.kick()

    async def settled() -> bool:
        return len((await tokens(redis, unique_name))["pool"]) == count

    await wait_until(settled, timeout=15)
    for sem in sems:
        await sem.close()
    await assert_permits(redis, unique_name, count, free=count)


async def test_a_lost_release_reply_does_not_duplicate_the_permit(
    fault_proxy: FaultProxy,
    redis_url: str,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
    strategy: SemaphoreInitStrategy,
) -> None:
    client = redis_factory(fault_proxy.rewrite(redis_url))
    sem = await RedisSemaphore.create(
        client, unique_name, count=2, semaphore_init_strategy=strategy
    )
    await sem.acquire()
    # The release takes effect on the server, its reply is dropped and the
    # connection cut: the library must retry without pushing a second token.
    marker = b":1\r\n" if strategy is SemaphoreInitStrategy.LUA else b"*3\r\n"
    fault_proxy.swallow_next_reply(marker)
    await sem.release()
    assert fault_proxy.swallowed == 1
    await assert_permits(redis, unique_name, 2, free=2)
    await sem.close()


async def test_a_lost_acquire_reply_is_recovered_not_leaked(
    fault_proxy: FaultProxy,
    redis_url: str,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
) -> None:
    client = redis_factory(fault_proxy.rewrite(redis_url))
    sem = await RedisSemaphore.create(client, unique_name, count=1)
    await sem.acquire()
    await sem.release()  # lanes registered, script loaded
    token = (await tokens(redis, unique_name))["pool"][0].encode()
    fault_proxy.swallow_next_reply(token)  # the BLMOVE reply carrying the token
    await asyncio.wait_for(sem.acquire(), 15)
    assert fault_proxy.swallowed == 1
    await assert_permits(redis, unique_name, 1, free=0)
    await sem.release()

    # The lane that blocked for the lost reply's permit may catch this release before
    # it is woken, and hands the permit back: wait for that round trip to settle.
    async def settled() -> bool:
        try:
            await assert_permits(redis, unique_name, 1, free=1)
        except AssertionError:
            return False
        return True

    await wait_until(settled, timeout=10, message="the permit back in the pool")
    await sem.close()


async def test_cut_connections_under_blocked_waiters(
    fault_proxy: FaultProxy,
    redis_url: str,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
) -> None:
    holder = await RedisSemaphore.create(redis, unique_name, count=2)
    waiting = await RedisSemaphore.attach(
        redis_factory(fault_proxy.rewrite(redis_url)), unique_name
    )
    await holder.acquire()
    await holder.acquire()
    tasks = [asyncio.ensure_future(waiting.acquire()) for _ in range(5)]
    await wait_until(lambda: waiting._waiting == 5)
    for _ in range(3):
        fault_proxy.cut_all()
        await asyncio.sleep(0.05)
    await holder.release()
    await holder.release()
    await wait_until(lambda: sum(t.done() for t in tasks) == 2, timeout=10)
    await waiting.release()
    await waiting.release()
    await wait_until(lambda: sum(t.done() for t in tasks) == 4, timeout=10)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    held = (await waiting.statistics()).held_here
    for _ in range(held):
        await waiting.release()
    await holder.close()
    await waiting.close()
    await assert_permits(redis, unique_name, 2, free=2)


async def test_long_waits_outlast_the_socket_timeout(
    redis_factory: Callable[..., aioredis.Redis], redis: aioredis.Redis, unique_name: str
) -> None:
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    impatient = redis_factory(socket_timeout=0.5)
    waiter = await RedisSemaphore.attach(impatient, unique_name)
    await holder.acquire()
    task = asyncio.ensure_future(waiter.acquire())
    await asyncio.sleep(2.0)  # four socket timeouts pass while it waits
    assert not task.done()
    await holder.release()
    await asyncio.wait_for(task, 5)
    await waiter.release()
    await holder.close()
    await waiter.close()
    await assert_permits(redis, unique_name, 1, free=1)


async def test_restart_of_a_non_persistent_server(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    ttl = 1.0
    a = await RedisSemaphore.create(
        redis_factory(private_server.url), unique_name, count=2, lease_ttl=ttl
    )
    b = await RedisSemaphore.attach(redis_factory(private_server.url), unique_name, lease_ttl=ttl)
    await a.acquire()
    await a.acquire()
    waiter = asyncio.ensure_future(b.acquire())
    await wait_until(lambda: b._waiting == 1)
    private_server.restart()  # every key is gone
    observer = redis_factory(private_server.url)

    async def re_established() -> bool:
        return bool(await observer.exists(keyspace(unique_name).key("meta")))

    await wait_until(re_established, timeout=10)
    # a still holds both permits, so nobody may get one yet.
    await asyncio.sleep(ttl)
    assert not waiter.done()
    await a.release()
    await asyncio.wait_for(waiter, 10)
    await assert_permits(observer, unique_name, 2, free=0)
    await a.release()
    await b.release()
    await a.close()
    await b.close()
    await assert_permits(observer, unique_name, 2, free=2)


async def test_a_new_generation_voids_old_permits(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    old = await RedisSemaphore.create(redis_factory(private_server.url), unique_name, count=2)
    await old.acquire()
    private_server.cli("FLUSHALL")  # a private server: flushing it is fine
    newcomer = await RedisSemaphore.create(redis_factory(private_server.url), unique_name, count=2)
    lost: list[int] = []
    old.add_lease_lost_callback(lambda: lost.append(1))
    with pytest.raises(RedisSemaphoreLeaseLostError):
        await old.release()
    observer = redis_factory(private_server.url)
    await assert_permits(observer, unique_name, 2, free=2)
    # The old instance follows the new generation from its next renewal on.
    old._renewal.kick()
    await wait_until(lambda: old._gen == newcomer._gen, timeout=5)
    await old.acquire()
    await newcomer.acquire()
    with pytest.raises(RedisSemaphoreTimeoutError):
        await newcomer.acquire(timeout=0)
    await old.release()
    await newcomer.release()
    await old.close()
    await newcomer.close()
    await assert_permits(observer, unique_name, 2, free=2)


async def test_flushed_keys_are_re_established_by_live_instances(
    private_server: RedisServer,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    strategy: SemaphoreInitStrategy,
) -> None:
    ttl = 0.6
    a = await RedisSemaphore.create(
        redis_factory(private_server.url),
        unique_name,
        count=2,
        lease_ttl=ttl,
        semaphore_init_strategy=strategy,
    )
    b = await RedisSemaphore.attach(redis_factory(private_server.url), unique_name, lease_ttl=ttl)
    await a.acquire()
    waiter = asyncio.ensure_future(b.acquire())
    await asyncio.wait_for(waiter, 5)
    second = asyncio.ensure_future(b.acquire())
    await wait_until(lambda: b._waiting == 1)
    private_server.cli("FLUSHALL")
    observer = redis_factory(private_server.url)

    async def recovered() -> bool:
        meta = await observer.hget(keyspace(unique_name).key("meta"), "recover")
        return meta == b"0"

    await wait_until(recovered, timeout=10)
    assert not second.done()
    await assert_permits(observer, unique_name, 2, free=0)
    await a.release()
    await asyncio.wait_for(second, 5)
    await b.release()
    await b.release()
    assert (await a.statistics()).leases_lost == 0
    assert (await b.statistics()).leases_lost == 0
    await a.close()
    await b.close()
    await assert_permits(observer, unique_name, 2, free=2)


async def test_watchdog_survives_readonly_and_connection_loss(
    redis_server_factory: Callable[..., RedisServer],
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    server = redis_server_factory()
    primary = redis_server_factory()
    sem = await RedisSemaphore.create(
        redis_factory(server.url), unique_name, count=1, lease_ttl=0.5
    )
    await sem.acquire()
    failures_before = sem._renewal.failures
    # Make the server a read-only replica: every renewal now fails (READONLY,
    # then the wipe of a full sync), as during a failover.
    server.cli("REPLICAOF", "127.0.0.1", str(primary.port))
    await wait_until(lambda: sem._renewal.failures > failures_before + 2, timeout=10)
    server.cli("REPLICAOF", "NO", "ONE")
    ticks = sem._renewal.ticks
    await wait_until(lambda: sem._renewal.ticks > ticks + 2, timeout=10)
    assert sem._renewal.running
    # The semaphore is back, with this instance's permit still accounted for.
    observer = redis_factory(server.url)

    async def recovered() -> bool:
        return await observer.hget(keyspace(unique_name).key("meta"), "recover") == b"0"

    await wait_until(recovered, timeout=10)
    await assert_permits(observer, unique_name, 1, free=0)
    await sem.release()
    await sem.acquire(timeout=5)
    await sem.release()
    await sem.close()


async def test_close_returns_within_a_second_during_a_stuck_renewal(
    fault_proxy: FaultProxy,
    redis_url: str,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    sem = await RedisSemaphore.create(
        redis_factory(fault_proxy.rewrite(redis_url)), unique_name, count=1
    )
    await sem.acquire()
    fault_proxy.pause()  # replies stop arriving
    sem._renewal.kick()
    await asyncio.sleep(0.05)  # the renewal is now waiting for its reply
    started = time.perf_counter()
    await sem.close()
    assert time.perf_counter() - started < 1.0
    fault_proxy.resume()


async def test_a_token_handed_out_twice_after_a_lossy_failover_voids_the_first_holding(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    """A failover that loses the BLMOVE of an acquisition puts its token back in the
    pool of the new master, so the same instance may receive it again.  The first
    holding is then void: its release reports the loss (not "not acquired"), the
    second works, and the permits still add up."""
    sem = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=30, semaphore_init_strategy=strategy
    )
    first_done = asyncio.Event()
    release_first = asyncio.Event()
    outcome: list[str] = []

    async def first() -> None:
        await sem.acquire()
        first_done.set()
        await release_first.wait()
        try:
            await sem.release()
            outcome.append("released")
        except RedisSemaphoreLeaseLostError:
            outcome.append("lost")

    task = asyncio.ensure_future(first())
    await asyncio.wait_for(first_done.wait(), 10)
    # What the lossy failover does: the token is back in the pool, the slot is empty.
    where = await tokens(redis, unique_name)
    (slot,) = [k for k, v in where.items() if k != "pool" and v]
    (token,) = where[slot]
    await redis.lrem(slot, 1, token)
    await redis.lpush(keyspace(unique_name).key("pool"), token)
    await sem.acquire(timeout=5)  # this task receives the same token
    assert (await sem.statistics()).leases_lost == 1
    release_first.set()
    await asyncio.wait_for(task, 10)
    assert outcome == ["lost"]
    await sem.release()  # the second holding is real
    await assert_permits(redis, unique_name, 2, free=2)
    await sem.close()


async def test_permits_come_back_when_registrations_expired_but_meta_did_not(
    redis_url: str,
    redis: aioredis.Redis,
    unique_name: str,
    holders: Callable[..., Holder],
    strategy: SemaphoreInitStrategy,
) -> None:
    """Redis unreachable for longer than the lease (a slow failover): the registrations
    and the dead holder's slot expired, while meta, renewed a little later by a
    survivor, did not.  Nothing lists the dead holder any more, yet its permit must
    come back."""
    ttl = 2.0
    survivor = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=ttl, semaphore_init_strategy=strategy
    )
    holder = holders(redis_url, unique_name, 2, ttl, 1)
    assert (await holder.line()).startswith("held")
    os.kill(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait(10)
    slots = [k for k in await keys_of(redis, unique_name) if ":slot:" in k]
    await redis.delete(keyspace(unique_name).key("holders"), *slots)
    await survivor.acquire(timeout=20)
    await survivor.acquire(timeout=20)  # the dead holder's permit, re-created
    await assert_permits(redis, unique_name, 2, free=0)
    await survivor.release()
    await survivor.release()
    await survivor.close()
    await assert_permits(redis, unique_name, 2, free=2)


async def test_a_live_holder_whose_slot_expired_keeps_its_permit(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    """Redis out of reach for longer than the lease (a slow failover): a live holder's
    slot expired with its permit while its registration survived.  Its next renewal
    puts the permit back instead of losing it for good."""
    sem = await RedisSemaphore.create(
        redis, unique_name, count=2, lease_ttl=3, semaphore_init_strategy=strategy
    )
    await sem.acquire()
    where = await tokens(redis, unique_name)
    (slot,) = [k for k, v in where.items() if k != "pool" and v]
    await redis.delete(slot)  # what the expiry did; meta and holders survived

    async def restored() -> bool:
        return bool(await redis.exists(slot)) and len(await redis.lrange(slot, 1, -1)) == 1

    await wait_until(restored, timeout=10, message="the renewal put the permit back")
    assert (await sem.statistics()).leases_lost == 0
    await sem.release()  # still a real permit
    await assert_permits(redis, unique_name, 2, free=2)
    await sem.close()
