"""The waiting machinery (``redsync._core.waiting``): regressions found by review, each
reproduced deterministically.

Unit tests drive a ``Dispatcher`` with a fake backend; the others use real
semaphores and events on the shared server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until

from redsync import RedisEvent, RedisSemaphore, RedisSemaphoreLeaseLostError
from redsync._core.keys import KeySpace
from redsync._core.waiting import Dispatcher, Lane, _Waiter


class _NoLink:
    async def give_back(self, conn: Any) -> None:
        pass

    async def discard(self, conn: Any) -> None:
        pass


class _SlowAcceptBackend:
    """Hands out one item when told to; accepting it takes until the gate opens."""

    def __init__(self) -> None:
        self.item_ready = asyncio.Event()
        self.gate = asyncio.Event()

    async def pull(self, lane: Lane, block: float | None) -> str | None:
        lane.blocked = True
        try:
            await asyncio.wait_for(self.item_ready.wait(), block)
        except asyncio.TimeoutError:
            return None
        finally:
            lane.blocked = False
        self.item_ready.clear()
        return "item"

    async def accept(self, lane: Lane, item: str) -> bool:
        await self.gate.wait()
        return True

    async def refuse(self, lane: Lane, item: str) -> None:
        pass

    async def give_back(self, lane: Lane, item: str) -> None:
        pass

    async def settle(self, lane: Lane) -> None:
        pass


async def test_close_during_a_hand_over_fails_the_claimed_waiter() -> None:
    """close() cancels a lane stuck in accept(); the waiter it had claimed must get
    the closed error, not be put back on a queue no lane serves any more."""
    backend = _SlowAcceptBackend()
    dispatcher: Dispatcher[str] = Dispatcher(
        _NoLink(),  # type: ignore[arg-type]
        backend,
        [Lane(0)],
        lambda: RuntimeError("closed"),
        max_block=10.0,
    )
    waiter = asyncio.ensure_future(dispatcher.get(None, TimeoutError))
    await wait_until(lambda: dispatcher.active_lanes == 1, timeout=5)
    backend.item_ready.set()
    await wait_until(lambda: dispatcher.waiting == 0, timeout=5)  # claimed
    await dispatcher.close(grace=0.1)
    with pytest.raises(RuntimeError, match="closed"):
        await asyncio.wait_for(waiter, 2)
    assert dispatcher.waiting == 0


async def test_blocks_cover_the_latest_deadlines_first() -> None:
    """With one waiter that never times out and one with a 1 s timeout, the second
    lane's block ends with the 1 s timeout, whatever the first lane blocks for."""
    loop = asyncio.get_running_loop()
    lanes = [Lane(0), Lane(1)]
    dispatcher: Dispatcher[str] = Dispatcher(
        _NoLink(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        lanes,
        RuntimeError,
        max_block=10.0,
    )
    for deadlines in ([float("inf"), 1.0], [100.0, 1.0], [1.0, 100.0]):
        dispatcher._waiters.clear()
        now = loop.time()
        for offset in deadlines:
            dispatcher._waiters.append(_Waiter(loop.create_future(), now + offset, TimeoutError))
        first, second = lanes
        first.covers = second.covers = None
        assert dispatcher._block_for(first) == 10.0
        assert 0.9 <= dispatcher._block_for(second) <= 1.0, deadlines
        # Both waiters covered: a third pull takes the earliest deadline.
        third = Lane(2)
        dispatcher.lanes.append(third)
        assert dispatcher._block_for(third) <= 1.0
        dispatcher.lanes.remove(third)


async def test_a_blocking_acquire_behind_a_non_blocking_one_is_served(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """acquire(timeout=0) reserves the only lane; an acquire() queued meanwhile must
    get a lane once the first is done (it used to wait for another get())."""
    holder = await RedisSemaphore.create(redis, unique_name, count=1)
    other = await RedisSemaphore.create(redis, unique_name, count=1)
    try:
        await holder.acquire(timeout=5)
        attempt = asyncio.ensure_future(other.acquire(timeout=0))
        await asyncio.sleep(0)  # the attempt has reserved the lane
        blocking = asyncio.ensure_future(other.acquire())
        with pytest.raises(Exception, match="no permit"):
            await asyncio.wait_for(attempt, 5)
        await holder.release()
        await asyncio.wait_for(blocking, 5)
        assert (await other.statistics()).held_here == 1
        await other.release()
    finally:
        await holder.close()
        await other.close()


async def test_a_new_generation_found_by_a_slot_registration_voids_every_slot(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """The semaphore is lost and re-created while an instance holds permits; the
    first thing to notice is the registration of one new slot.  Every old slot must
    be dropped then, or an old token is later adopted as a valid permit."""
    old = await RedisSemaphore.create(redis, unique_name, count=3, lease_ttl=30)
    new = None
    extra = None
    try:
        await old.acquire(timeout=5)
        await old.acquire(timeout=5)
        await old._renew()  # a full renewal just now: the next registration is partial
        ks = KeySpace("redsync:semaphore", unique_name)
        await redis.delete(ks.key("meta"), ks.key("pool"), ks.key("holders"))
        new = await RedisSemaphore.create(redis, unique_name, count=3, lease_ttl=30)
        await asyncio.wait_for(old.acquire(), 5)  # a new slot: its registration sees 'stale'
        await new.acquire(timeout=5)
        await new.acquire(timeout=5)
        for _ in range(2):
            with pytest.raises(RedisSemaphoreLeaseLostError):
                await old.release()
        extra = asyncio.ensure_future(old.acquire())
        await old._renew()  # a renewal must not adopt an old-generation token
        await asyncio.sleep(0.3)
        assert not extra.done(), "a fourth holder of 3 permits"
        held = [t async for t in _tokens_held(redis, unique_name)]
        assert len(held) == 3 and len(set(held)) == 3, held
    finally:
        if extra is not None:
            extra.cancel()
        await old.close()
        if new is not None:
            await new.close()


async def _tokens_held(redis: aioredis.Redis, name: str) -> Any:
    async for key in redis.scan_iter(match=f"*{name}*:slot:*"):
        for token in (await redis.lrange(key, 0, -1))[1:]:
            yield token.decode()


async def test_an_acquire_cancelled_while_waiting_for_replicas_loses_no_permit(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """replicas=1 on a server without replicas: every WAIT lasts replica_timeout.
    Cancelling acquire(timeout=0) during that WAIT used to leave a holding without an
    owner, renewed forever: the permit was gone for as long as the process lived."""
    sem = await RedisSemaphore.create(
        redis, unique_name, count=1, lease_ttl=6, replicas=1, replica_timeout=0.5
    )
    try:
        await sem.acquire(timeout=0)
        await sem.release()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sem.acquire(timeout=0), 0.1)

        async def free_again() -> bool:
            return (await sem.statistics()).available == 1

        await wait_until(free_again, timeout=8, message="the permit went back to the pool")
        assert (await sem.statistics()).held_here == 0
        await sem.acquire(timeout=5)
        await sem.release()
    finally:
        await sem.close()


async def test_closed_events_leave_no_registered_inboxes(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """Every inbox an event registered is unregistered at close, so is_set() does not
    look at the inboxes of instances long gone."""
    for _ in range(5):
        event = RedisEvent(redis, unique_name)
        await event.set()
        await event.wait(timeout=5)
        with pytest.raises(Exception, match="no signal"):
            await event.wait(timeout=0.05)

        async def idle(event: RedisEvent = event) -> bool:
            return (await event.statistics()).lanes_active == 0

        # (A lane close() has to cut keeps its registration for one inbox lease.)
        await wait_until(idle, timeout=5, message="the lane's 50 ms block ended")
        await event.close()
    inboxes = KeySpace("redsync:event", unique_name).key("inboxes")
    assert await redis.zcard(inboxes) == 0
    assert not await RedisEvent(redis, unique_name).is_set()
