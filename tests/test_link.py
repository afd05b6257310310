"""The connection layer (``redsync._core.link``): regressions, each reproduced
deterministically on the shared server."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools.topologies import ClusterTopology
from redis.asyncio.cluster import RedisCluster

from redsync._core.link import Link


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11+")
async def test_a_cancellation_swallowed_while_connecting_is_delivered(
    redis_url: str, unique_name: str
) -> None:
    """redis-py connects a new pool connection through asyncio.wait_for (with the
    client's socket_timeout), which on Python <= 3.11 can drop a cancellation that
    races the handshake: the caller then carried on as if never cancelled (a
    cancelled acquire() queued and waited forever).  Here the pool swallows the
    cancellation on purpose; the borrow must still end in CancelledError, with the
    connection back in the pool and nothing sent."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    pool = client.connection_pool
    real = pool.get_connection
    entered = asyncio.Event()

    async def swallowing(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # what wait_for does when the cancellation races its inner await
        return await real(*args, **kwargs)

    pool.get_connection = swallowing  # type: ignore[method-assign]
    link = Link(client, unique_name)
    key = f"{unique_name}:touched"
    task = asyncio.ensure_future(link.call("SET", key, "1"))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert task.cancelled()
    pool.get_connection = real  # type: ignore[method-assign]
    assert await client.exists(key) == 0, "the cancelled call was sent"
    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    await link.close()
    await client.aclose()


# --------------------------------------------------------------------------- cluster routing


async def test_a_slot_map_refresh_leaves_connections_in_use_alone(
    shared_cluster: ClusterTopology, unique_name: str
) -> None:
    """redis-py before 8.0 replaced every node object on each slot-map refresh and
    closed all their connections, those in use included: one instance finding its
    route stale cut every other instance's command in flight (a renewal, a
    subscriber), and each of those refreshed again.  A refresh must leave a
    connection another link has borrowed open and usable, on the same node."""
    client = RedisCluster.from_url(shared_cluster.startup_url, socket_timeout=5)
    try:
        holder = Link(client, unique_name)
        conn = await holder.borrow()
        assert await holder.run(conn, [("PING",)]) == [b"PONG"]
        node_before = holder._home[conn].node
        other = Link(client, f"{unique_name}-other")
        await other.call("PING")
        other._mark_stale()
        await other.call("PING")  # routes afresh: one refresh of the map
        for _ in range(3):
            await asyncio.sleep(0)  # where closing tasks would run
        assert conn.is_connected
        assert await holder.run(conn, [("PING",)]) == [b"PONG"]
        assert client.get_node_from_key(unique_name) is node_before
        await holder.give_back(conn)
        await holder.close()
        await other.close()
    finally:
        await client.aclose()


async def test_links_that_find_their_route_stale_together_share_one_refresh(
    shared_cluster: ClusterTopology, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failover seen by many instances costs one slot-map refresh, not one each."""
    client = RedisCluster.from_url(shared_cluster.startup_url, socket_timeout=5)
    try:
        links = [Link(client, f"{unique_name}-{i}") for i in range(50)]
        await asyncio.gather(*(link.call("PING") for link in links))
        manager = client.nodes_manager
        real = manager.initialize
        calls = 0

        async def counting(self: Any) -> None:
            nonlocal calls
            calls += 1
            await real()

        monkeypatch.setattr(type(manager), "initialize", counting)
        for link in links:
            link._mark_stale()
        assert await asyncio.gather(*(link.call("PING") for link in links)) == [b"PONG"] * 50
        assert calls == 1
        links[0]._mark_stale()  # found stale after that refresh: needs one of its own
        await links[0].call("PING")
        assert calls == 2
        for link in links:
            await link.close()
    finally:
        await client.aclose()
