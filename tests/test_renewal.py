"""The event loop's renewer (``redsync._core.renewal``): what must never stop it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until

from redsync import RedisEvent, RedisSemaphore
from redsync._core.link import Link
from redsync._core.renewal import next_due
from redsync.event._queue import Queue


async def test_a_failing_round_does_not_end_the_renewals(
    redis: aioredis.Redis, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that fails in an unexpected way (here: an unhashable group key, as
    redis-py < 5.1's ClusterNode was) is logged and retried; renewals go on."""
    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=0.6)
    await sem.acquire()
    original = Link.group
    broken = {"left": 3}

    async def group(self: Link) -> Any:
        if broken["left"] > 0:
            broken["left"] -= 1
            return []  # unhashable
        return await original(self)

    monkeypatch.setattr(Link, "group", group)
    try:
        sem._renewal.kick()
        await wait_until(lambda: broken["left"] == 0, timeout=5)
        ticks = sem._renewal.ticks
        await wait_until(lambda: sem._renewal.ticks >= ticks + 3, timeout=5)
        assert sem._renewal.renewer._task is not None and not sem._renewal.renewer._task.done()
        await sem.release()  # the lease was kept: nothing was reclaimed meanwhile
        assert (await sem.statistics()).available == 1
    finally:
        await sem.close()


def test_due_times_share_a_grid_whenever_instances_started() -> None:
    period = 1.0
    dues = {round(next_due(start, period), 9) for start in (10.0, 10.05, 10.17, 10.2, 10.29)}
    assert dues <= {10.5 + 0.5 * k for k in range(4)}
    for start in (3.0, 3.3, 7.77):
        due = next_due(start, period)
        assert start + 0.6 * period <= due <= start + 1.1 * period + 1e-9


async def test_a_held_up_renewal_delays_no_other_instance(
    redis: aioredis.Redis, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One instance's renewal that does not finish (here an event waiter's, held
    as a NOSCRIPT fallback to a node that stopped answering would hold it) must
    not hold up the renewals of everything else: a semaphore beside it keeps
    its 0.6 s lease."""
    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=0.6)
    await sem.acquire()
    event = RedisEvent(redis, unique_name)
    waiter = asyncio.ensure_future(event.wait(timeout=30))
    stuck = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()

    async def renewed(self: Queue, *args: Any) -> None:
        entered.set()
        await stuck  # never finishes

    monkeypatch.setattr(Queue, "_renewed", renewed)
    try:
        await wait_until(lambda: event._queue._renewal is not None, timeout=5)
        renewal = event._queue._renewal
        assert renewal is not None
        renewal.kick()
        await asyncio.wait_for(entered.wait(), 5)
        ticks = sem._renewal.ticks
        await wait_until(lambda: sem._renewal.ticks >= ticks + 4, timeout=5)
        assert not stuck.done()  # still held up the whole time
        assert (await sem.statistics()).leases_lost == 0
        await sem.release()
        assert (await sem.statistics()).available == 1
    finally:
        stuck.cancel()
        waiter.cancel()
        await event.close()
        await sem.close()
