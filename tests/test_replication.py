"""``replicas=N``: acquisitions and releases wait until N replicas have them (WAIT)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.servers import RedisServer

from helpers import assert_permits, replica_linked
from redsync import RedisSemaphore

ServerFactory = Callable[..., RedisServer]


async def test_writes_wait_for_the_replica_and_reach_it(
    primary_and_replica: tuple[RedisServer, RedisServer],
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    primary, replica = primary_and_replica
    await wait_until(lambda: replica_linked(replica), timeout=15)
    client = redis_factory(primary.url)
    sem = await RedisSemaphore.create(client, unique_name, count=2, lease_ttl=10, replicas=1)
    primary.reset_stats()
    await sem.acquire()
    # Acquired means the replica already has the token outside the pool.
    mirror = redis_factory(replica.url)
    assert await mirror.llen(f"redsync:semaphore:{{{unique_name}}}:pool") == 1
    await sem.release()
    assert await mirror.llen(f"redsync:semaphore:{{{unique_name}}}:pool") == 2
    # At least one after the acquire and one with the release (the lease writes wait too).
    assert primary.commandstats().get("wait", 0) >= 2
    stats = await sem.statistics()
    assert stats.replica_shortfalls == 0
    await sem.close()


async def test_a_missing_replica_is_a_counted_shortfall_not_an_error(
    private_server: RedisServer,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis_factory(private_server.url)
    sem = await RedisSemaphore.create(
        client, unique_name, count=1, lease_ttl=10, replicas=1, replica_timeout=0.01
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with sem:
        pass
    assert loop.time() - start < 2  # bounded by replica_timeout, not stuck
    stats = await sem.statistics()
    assert stats.replica_shortfalls >= 2  # the creation, the acquire and the release
    assert "replicas acknowledged" in caplog.text
    assert await client.llen(f"redsync:semaphore:{{{unique_name}}}:pool") == 1
    await sem.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"replicas": -1}, ValueError, "replicas must be from 0"),
        ({"replicas": 1.5}, TypeError, "replicas must be an int"),
        ({"replicas": True}, TypeError, "replicas must be an int"),
        ({"replica_timeout": 0}, ValueError, "replica_timeout must be from"),
        ({"replica_timeout": float("nan")}, ValueError, "replica_timeout"),
    ],
)
async def test_bad_replication_options_are_refused_before_any_write(
    redis: aioredis.Redis,
    unique_name: str,
    kwargs: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await RedisSemaphore.create(redis, unique_name, count=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        await RedisSemaphore.attach(redis, unique_name, timeout=0, **kwargs)  # type: ignore[arg-type]
    assert await redis.keys(f"*{unique_name}*") == []


async def test_a_stray_client_unblock_hitting_wait_is_not_an_error(
    private_server: RedisServer,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    """WAIT blocks, so a CLIENT UNBLOCK sent for a BLMOVE that has just returned can
    land on the WAIT that follows on the same connection.  That must neither fail
    the acquire/release nor stop the lane."""
    client = redis_factory(private_server.url)
    admin = redis_factory(private_server.url)
    sem = await RedisSemaphore.create(
        client, unique_name, count=1, lease_ttl=10, replicas=1, replica_timeout=1.5
    )

    async def unblock_waits() -> int:
        hit = 0
        for info in await admin.client_list():
            if info.get("cmd") == "wait":
                hit += await admin.client_unblock(int(info["id"]), error=True)
        return hit

    async def with_stray_unblocks(op: Any) -> None:
        task = asyncio.ensure_future(op)
        hits = 0
        while not task.done():
            hits += await unblock_waits()
            await asyncio.sleep(0.05)
        await task
        assert hits >= 1, "no WAIT was interrupted: the test did not test anything"

    await asyncio.wait_for(with_stray_unblocks(sem.acquire()), 20)
    await asyncio.wait_for(with_stray_unblocks(sem.release()), 20)
    await asyncio.wait_for(with_stray_unblocks(sem.acquire()), 20)  # the lane still works
    await sem.release()
    assert (await sem.statistics()).replica_shortfalls >= 3
    await assert_permits(client, unique_name, 1, free=1)
    await sem.close()
