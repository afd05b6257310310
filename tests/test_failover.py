"""The library across failovers: a Sentinel promotion and Redis Cluster failovers.

Each test starts its own set-up (a few seconds), keeps an instance idle and
one holding a permit through the failover, and checks that renewals land on
the new master, that waiting and releasing go on, and that the permits add up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from devtools import wait_until
from devtools.topologies import ClusterTopology, SentinelTopology
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from helpers import assert_permits, keyspace
from redsync import RedisEvent, RedisSemaphore

TTL = 2.0


async def renewed_on_current_master(client: Any, sem: RedisSemaphore, name: str) -> bool:
    """True once the instance's lease in the holders set runs past now (server time)."""
    holders = await client.zrange(keyspace(name).key("holders"), 0, -1, withscores=True)
    now = time.time() * 1000
    mine = [score for member, score in holders if member.decode().startswith(sem.instance_id)]
    return bool(mine) and min(mine) > now + TTL * 1000 / 2


async def exercise_across(failover: Any, client: Any, name: str) -> None:
    holder = await RedisSemaphore.create(client, name, count=2, lease_ttl=TTL)
    idle = await RedisSemaphore.attach(client, name, lease_ttl=TTL)
    await holder.acquire()
    event = RedisEvent(client, name)
    waiter = asyncio.ensure_future(event.wait(timeout=60))
    await asyncio.to_thread(failover)
    # Renewals reach the new master (a lease lost here would be a bug: the failover
    # took less than the lease); the idle instance, which held nothing, acquires there
    # and is renewed there too.
    await idle.acquire(timeout=20)
    for sem in (holder, idle):
        await wait_until(
            lambda sem=sem: renewed_on_current_master(client, sem, name),
            timeout=20,
            message="renewal on the new master",
        )
    await RedisEvent(client, name).set()
    await asyncio.wait_for(waiter, 20)
    await assert_permits(client, name, 2, free=0)
    await holder.release()
    await idle.release()
    assert (await holder.statistics()).leases_lost == 0
    assert (await idle.statistics()).leases_lost == 0
    await assert_permits(client, name, 2, free=2)
    await holder.close()
    await idle.close()
    await event.close()


@pytest.mark.parametrize("force_kill", [False, True], ids=["graceful", "kill"])
async def test_sentinel_failover(
    sentinel_setup: SentinelTopology, unique_name: str, force_kill: bool
) -> None:
    sentinel = Sentinel(sentinel_setup.sentinel_addresses, socket_timeout=1)
    client = sentinel.master_for(sentinel_setup.service_name, socket_timeout=1)
    try:
        await exercise_across(
            lambda: sentinel_setup.failover(force_kill=force_kill), client, unique_name
        )
    finally:
        await client.aclose()


@pytest.mark.parametrize("force_kill", [False, True], ids=["graceful", "kill"])
async def test_cluster_failover(
    cluster_with_replicas: ClusterTopology, unique_name: str, force_kill: bool
) -> None:
    client = RedisCluster.from_url(cluster_with_replicas.startup_url, socket_timeout=1)
    master = cluster_with_replicas.master_for_key(keyspace(unique_name).key("meta"))
    try:
        await exercise_across(
            lambda: cluster_with_replicas.failover(master, force_kill=force_kill),
            client,
            unique_name,
        )
    finally:
        await client.aclose()
