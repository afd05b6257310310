"""A user without scripting: OPTIMISTIC_LOCKING semaphores and events still work for it.

A private server gets an ACL user that may touch only ``redsync:*`` keys and
may run every command except ``@scripting`` (EVAL, EVALSHA, FCALL, SCRIPT,
FUNCTION ...).  Commandstats then prove that no script ran at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.servers import RedisServer
from redis.exceptions import NoPermissionError

from helpers import assert_permits, tokens
from redsync import (
    RedisEvent,
    RedisEventTimeoutError,
    RedisSemaphore,
    RedisSemaphoreTimeoutError,
    SemaphoreInitStrategy,
)

USER, PASSWORD = "nolua", "nolua-pw"
SCRIPTING = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro", "script", "function")


@pytest.fixture
def nolua_server(private_server: RedisServer) -> RedisServer:
    """The private server, with the user ``nolua``: ``redsync:*`` keys, no scripting."""
    private_server.cli(
        "ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~redsync:*", "&*", "+@all", "-@scripting"
    )
    private_server.reset_stats()
    return private_server


def nolua_url(server: RedisServer) -> str:
    return f"redis://{USER}:{PASSWORD}@{server.host}:{server.port}/0"


def scripting_calls(server: RedisServer) -> dict[str, int]:
    """Every scripting command the server ran (or refused) since the last reset."""
    return {
        name: calls
        for name, calls in server.commandstats().items()
        if name.split("|")[0] in SCRIPTING
    }


def rejected_scripting_calls(server: RedisServer) -> int:
    """Scripting commands refused with an error (they are not in ``calls``)."""
    total = 0
    for line in server.cli("INFO", "commandstats").splitlines():
        name = line.partition(":")[0].removeprefix("cmdstat_")
        if name.split("|")[0] in SCRIPTING:
            for field in line.partition(":")[2].split(","):
                key, _, value = field.partition("=")
                if key in ("rejected_calls", "failed_calls"):
                    total += int(value)
    return total


async def test_the_user_really_cannot_run_scripts(
    nolua_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    client = redis_factory(nolua_url(nolua_server))
    with pytest.raises(NoPermissionError):
        await client.eval("return 1", 0)
    with pytest.raises(NoPermissionError):
        await client.set(f"other:{unique_name}", 1)  # outside ~redsync:*
    assert await client.set(f"redsync:{unique_name}", 1)
    # The refusal is visible in commandstats, so the checks below can see one.
    assert rejected_scripting_calls(nolua_server) == 1


async def test_optimistic_locking_works_without_scripting(
    nolua_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    count, ttl = 2, 1.0
    strategy = SemaphoreInitStrategy.OPTIMISTIC_LOCKING
    a = await RedisSemaphore.create(
        redis_factory(nolua_url(nolua_server)),
        unique_name,
        count=count,
        lease_ttl=ttl,
        semaphore_init_strategy=strategy,
    )
    b = await RedisSemaphore.attach(
        redis_factory(nolua_url(nolua_server)), unique_name, timeout=5, lease_ttl=ttl
    )
    assert b.strategy is strategy
    assert await b.get_count() == count

    await a.acquire()
    await b.acquire(timeout=5)
    with pytest.raises(RedisSemaphoreTimeoutError):
        await b.acquire(timeout=0)
    with pytest.raises(RedisSemaphoreTimeoutError):
        await a.acquire(timeout=0.1)
    stats = await a.statistics()
    assert stats.count == count and stats.available == 0
    assert {h.instance: h.permits for h in stats.holders} == {a.instance_id: 1, b.instance_id: 1}
    # Renewals (every lease_ttl / 3) keep both leases alive without Lua.
    ticks = a._renewal.ticks, b._renewal.ticks
    await wait_until(
        lambda: a._renewal.ticks > ticks[0] + 2 and b._renewal.ticks > ticks[1] + 2, timeout=5
    )
    assert a._renewal.failures == 0 and b._renewal.failures == 0
    stats = await b.statistics()
    assert all(h.lease_remaining > 0 for h in stats.holders)
    assert stats.leases_lost == 0
    await a.release()
    await b.release()
    assert (await a.statistics()).available == count

    # Contention: two instances, four tasks each, never more than count inside.
    inside = peak = acquired = 0

    async def worker() -> None:
        nonlocal inside, peak, acquired
        for sem in (a, b) * 10:
            async with sem:
                inside += 1
                peak = max(peak, inside)
                acquired += 1
                await asyncio.sleep(0.001)
                inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), 30)
    assert acquired == 80 and 1 <= peak <= count
    # A waiter that gives up wakes its lane (CLIENT UNBLOCK) without Lua too.
    await a.acquire()
    await a.acquire()
    with pytest.raises(RedisSemaphoreTimeoutError):
        await b.acquire(timeout=0.2)
    await a.release()
    await a.release()

    observer = redis_factory(nolua_server.url)

    async def settled() -> bool:
        return len((await tokens(observer, unique_name))["pool"]) == count

    await wait_until(settled, timeout=10)
    assert (await a.statistics()).leases_lost == 0
    assert (await b.statistics()).leases_lost == 0
    await a.close()
    await b.close()
    await assert_permits(observer, unique_name, count, free=count)
    stats_after = nolua_server.commandstats()
    assert stats_after.get("multi", 0) > 0 and stats_after.get("blmove", 0) > 0
    assert scripting_calls(nolua_server) == {}
    assert rejected_scripting_calls(nolua_server) == 0


async def test_the_lua_strategy_fails_clearly_with_noperm(
    nolua_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    client = redis_factory(nolua_url(nolua_server))
    with pytest.raises(NoPermissionError) as caught:
        await asyncio.wait_for(RedisSemaphore.create(client, unique_name, count=1), 10)
    message = str(caught.value).lower()
    assert "no permissions" in message and "evalsha" in message, message
    # Nothing was created.
    observer = redis_factory(nolua_server.url)
    assert await observer.keys(f"*{unique_name}*") == []
    assert rejected_scripting_calls(nolua_server) == 1  # refused once, not retried


def _pending_is(event: RedisEvent, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await event.statistics()).pending_signals == n

    return check


async def test_an_event_works_without_scripting(
    nolua_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    setter = RedisEvent(redis_factory(nolua_url(nolua_server)), unique_name)
    waiter = RedisEvent(redis_factory(nolua_url(nolua_server)), unique_name)
    with pytest.raises(RedisEventTimeoutError):
        await waiter.wait(timeout=0)
    await setter.set()
    assert await waiter.is_set()
    await waiter.wait(timeout=0)
    # Blocked waiters are woken by signals set elsewhere.
    tasks = [asyncio.ensure_future(waiter.wait(timeout=10)) for _ in range(3)]
    await wait_until(lambda: waiter._dispatcher.active_lanes == 3)
    for _ in range(3):
        await setter.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # A wait that times out (its lane woken by CLIENT UNBLOCK) takes nothing.
    with pytest.raises(RedisEventTimeoutError):
        await waiter.wait(timeout=0.1)
    await setter.set()
    await setter.set()
    # The lane woken for the timed-out wait may have taken one and is handing it back.
    await wait_until(_pending_is(setter, 2), message="both signals pending")
    await setter.clear()
    assert not await waiter.is_set()
    await setter.close()
    await waiter.close()
    # Events try their scripts once per process and key prefix; refused,
    # they wait on blocking connections and set with MULTI.
    assert scripting_calls(nolua_server) in ({}, {"evalsha": 0})
    assert rejected_scripting_calls(nolua_server) == 1
