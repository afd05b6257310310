"""The connection layer (``redsync._core.link``): regressions, each reproduced
deterministically on the shared server."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis

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
