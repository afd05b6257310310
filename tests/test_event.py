"""RedisEvent against a real Redis: one-to-one signals, persistence, fairness, and faults.

Accounting tests count every signal: each ``set()`` must be taken by exactly one
``wait()`` (or still be pending), whatever cancellations, timeouts and lost
replies happen in between.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.proxy import FaultProxy
from redis import exceptions as rex

import redsync.event._lanes
from redsync import RedisEvent, RedisEventError, RedisEventTimeoutError
from redsync._core.keys import KeySpace

PREFIX = "redsync:event"

#: Run this test on a standalone server, a Redis Cluster and a Sentinel set-up.
ALL_TOPOLOGIES = pytest.mark.usefixtures("topology")


def signals_key(name: str, prefix: str = PREFIX) -> str:
    """The list that holds an event's pending signals."""
    return KeySpace(prefix, name).key("signals")


async def blocked_on_server(client: aioredis.Redis, client_name: str, at_least: int = 1) -> bool:
    """True once ``at_least`` connections named ``client_name`` block in BLMOVE."""
    clients = await client.client_list()
    blocked = [
        c
        for c in clients
        if c.get("name") == client_name and c.get("cmd") == "blmove" and "b" in c.get("flags", "")
    ]
    return len(blocked) >= at_least


async def connections_named(client: aioredis.Redis, client_name: str) -> int:
    return sum(1 for c in await client.client_list() if c.get("name") == client_name)


def on_lanes(event: RedisEvent) -> RedisEvent:
    """Make ``event`` wait on blocking connections (its fallback when it may not
    run scripts or subscribe), for the tests of what lanes do under faults."""
    event._queue.usable = False
    return event


async def waiting(event: RedisEvent, tasks: int) -> bool:
    stats = await event.statistics()
    return stats.tasks_waiting == tasks


async def try_take(event: RedisEvent) -> bool:
    """One non-blocking wait: True if it took a signal."""
    try:
        await asyncio.wait_for(event.wait(0), 10)
    except RedisEventTimeoutError:
        return False
    return True


async def drain(event: RedisEvent) -> int:
    """Take every signal that is pending right now; return how many."""
    taken = 0
    while await try_take(event):
        taken += 1
    return taken


async def settle(events: list[RedisEvent], drainer: RedisEvent, expected: int, got: int) -> int:
    """Drain until ``got + drained`` reaches ``expected`` (hand-backs may still be in
    flight), then close every instance and drain what is left; return drained."""
    drained = 0

    async def reached() -> bool:
        nonlocal drained
        drained += await drain(drainer)
        return got + drained >= expected

    try:
        await wait_until(reached, timeout=20, message=f"{expected} signals accounted for")
    except AssertionError:
        raise AssertionError(
            f"signals lost: {got} received + {drained} still pending != {expected} set"
        ) from None
    for event in events:
        await asyncio.wait_for(event.close(), 10)
    drained += await drain(drainer)
    return drained


# --------------------------------------------------------------------------- semantics


@ALL_TOPOLOGIES
async def test_each_set_wakes_exactly_one_waiter(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    m, n = 7, 3
    events = [RedisEvent(redis_factory(), unique_name) for _ in range(3)]
    tasks = []
    for i in range(m):
        event = events[i % len(events)]
        tasks.append(asyncio.ensure_future(event.wait(timeout=4)))

    async def all_waiting() -> bool:
        return sum([(await e.statistics()).tasks_waiting for e in events]) == m

    await wait_until(all_waiting, timeout=5)
    setter = RedisEvent(redis, unique_name)
    started = time.monotonic()
    for _ in range(n):
        await setter.set()
    await wait_until(lambda: sum(t.done() for t in tasks) >= n, timeout=3)
    assert time.monotonic() - started < 3, "the sets woke waiters promptly"
    assert sum(t.done() for t in tasks) == n, "each set() woke exactly one waiter"
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    woken = [r for r in results if r is None]
    timed_out = [r for r in results if isinstance(r, RedisEventTimeoutError)]
    assert len(woken) == n, results
    assert len(timed_out) == m - n, results
    assert await redis.llen(signals_key(unique_name)) == 0
    assert not await setter.is_set()
    for event in events:
        await event.close()


@ALL_TOPOLOGIES
async def test_set_with_nobody_waiting_is_kept(redis: aioredis.Redis, unique_name: str) -> None:
    setter = RedisEvent(redis, unique_name)
    await setter.set()
    assert await redis.llen(signals_key(unique_name)) == 1
    late = RedisEvent(redis, unique_name)
    assert await late.is_set()
    await asyncio.wait_for(late.wait(timeout=2), 10)
    assert await redis.llen(signals_key(unique_name)) == 0
    assert not await late.is_set()
    assert not await setter.is_set()
    with pytest.raises(RedisEventTimeoutError):
        await late.wait(timeout=0)


@ALL_TOPOLOGIES
async def test_pending_signals_add_up(redis: aioredis.Redis, unique_name: str) -> None:
    setter = RedisEvent(redis, unique_name)
    for _ in range(3):
        await setter.set()
    assert await redis.llen(signals_key(unique_name)) == 3
    taker = RedisEvent(redis, unique_name)
    for remaining in (2, 1, 0):
        await asyncio.wait_for(taker.wait(timeout=2), 10)
        assert await redis.llen(signals_key(unique_name)) == remaining
    with pytest.raises(RedisEventTimeoutError):
        await taker.wait(timeout=0)


@ALL_TOPOLOGIES
async def test_clear_drops_pending_signals(redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    await event.clear()  # nothing pending: no error
    for _ in range(3):
        await event.set()
    assert await event.is_set()
    await event.clear()
    assert await redis.llen(signals_key(unique_name)) == 0
    assert not await event.is_set()
    with pytest.raises(RedisEventTimeoutError):
        await event.wait(timeout=0)
    # the event works as before after a clear
    await event.set()
    assert await event.is_set()
    await event.wait(timeout=2)
    assert not await event.is_set()


@ALL_TOPOLOGIES
async def test_is_set_reflects_redis(redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    assert await event.is_set() is False
    await redis.rpush(signals_key(unique_name), "external")
    assert await event.is_set() is True
    await redis.delete(signals_key(unique_name))
    assert await event.is_set() is False


@ALL_TOPOLOGIES
async def test_wait_zero_does_not_block(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    cname = f"{unique_name}-w0"
    event = RedisEvent(redis_factory(client_name=cname), unique_name)
    for timeout in (0, -1):
        started = time.monotonic()
        with pytest.raises(RedisEventTimeoutError):
            await asyncio.wait_for(event.wait(timeout), 10)
        # Not blocked until the wait_for above gives up (a loaded machine may take a
        # second or two, with the cluster client's first connection included).
        assert time.monotonic() - started < 5
    assert not await blocked_on_server(redis, cname), "wait(0) left a blocking command behind"
    stats = await event.statistics()
    assert (stats.tasks_waiting, stats.lanes_active) == (0, 0)
    await RedisEvent(redis, unique_name).set()
    started = time.monotonic()
    await asyncio.wait_for(event.wait(0), 10)
    assert time.monotonic() - started < 5
    assert await redis.llen(signals_key(unique_name)) == 0


@ALL_TOPOLOGIES
async def test_prefixes_separate_events(redis: aioredis.Redis, unique_name: str) -> None:
    a = RedisEvent(redis, unique_name, key_prefix=f"{PREFIX}-a")
    b = RedisEvent(redis, unique_name, key_prefix=f"{PREFIX}-b")
    await a.set()
    assert await a.is_set()
    assert not await b.is_set()
    with pytest.raises(RedisEventTimeoutError):
        await b.wait(0)
    await a.wait(0)


@ALL_TOPOLOGIES
async def test_close_fails_pending_waits(redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    task = asyncio.ensure_future(event.wait(timeout=30))
    await wait_until(lambda: waiting(event, 1), timeout=5)
    started = time.monotonic()
    await asyncio.wait_for(event.close(), 5)
    with pytest.raises(RedisEventError):
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 3
    # a signal set afterwards is kept for somebody else, not swallowed by the closed lanes
    await RedisEvent(redis, unique_name).set()
    assert await redis.llen(signals_key(unique_name)) == 1


# --------------------------------------------------------------------------- fairness, scale


@ALL_TOPOLOGIES
async def test_local_waiters_are_served_fifo(redis: aioredis.Redis, unique_name: str) -> None:
    event = RedisEvent(redis, unique_name)
    setter = RedisEvent(redis, unique_name)
    tasks: list[asyncio.Future[None]] = []
    queue = KeySpace(PREFIX, unique_name).key("waiters")

    async def queued(n: int) -> bool:  # in the event's queue in Redis, in arrival order
        return int(await redis.zcard(queue)) == n

    for i in range(8):
        tasks.append(asyncio.ensure_future(event.wait(timeout=30)))
        await wait_until(lambda i=i: waiting(event, i + 1), timeout=5)
        await wait_until(lambda i=i: queued(i + 1), timeout=5)
    try:
        for i in range(len(tasks)):
            await setter.set()
            await wait_until(lambda i=i: sum(t.done() for t in tasks) == i + 1, timeout=5)
            done = [j for j, t in enumerate(tasks) if t.done()]
            assert done == list(range(i + 1)), f"signal {i} woke waiters {done}"
            assert tasks[i].exception() is None
    finally:
        for task in tasks:
            task.cancel()
        await event.close()


async def test_many_waiters_share_few_connections(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """200 tasks of one instance wait in the event's queue in Redis, not on
    blocked connections; 200 sets wake each exactly once."""
    cname = f"{unique_name}-many"
    event = RedisEvent(redis_factory(client_name=cname), unique_name)
    tasks = [asyncio.ensure_future(event.wait(timeout=60)) for _ in range(200)]
    queue = KeySpace(PREFIX, unique_name).key("waiters")

    async def queued() -> bool:
        return int(await redis.zcard(queue)) == 200

    try:
        await wait_until(lambda: waiting(event, 200), timeout=10)
        await wait_until(queued, timeout=10)
        assert not await blocked_on_server(redis, cname)
        assert await connections_named(redis, cname) <= 8
        setter = RedisEvent(redis, unique_name)
        for i in range(200):
            await setter.set()
            if i % 50 == 0:
                assert await connections_named(redis, cname) <= 8
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert await connections_named(redis, cname) <= 8
        assert await redis.llen(signals_key(unique_name)) == 0
        assert int(await redis.zcard(queue)) == 0
        with pytest.raises(RedisEventTimeoutError):
            await event.wait(timeout=0.2)  # exactly once each: none left over
    finally:
        for task in tasks:
            task.cancel()
        await event.close()


async def test_many_lane_waiters_share_few_connections(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """Waiting on blocking connections (the fallback): 200 tasks of one
    instance share its 16 lanes."""
    cname = f"{unique_name}-many"
    event = on_lanes(RedisEvent(redis_factory(client_name=cname), unique_name))
    tasks = [asyncio.ensure_future(event.wait(timeout=60)) for _ in range(200)]
    try:
        await wait_until(lambda: waiting(event, 200), timeout=10)
        await wait_until(lambda: blocked_on_server(redis, cname), timeout=10)
        assert await connections_named(redis, cname) <= 18
        setter = RedisEvent(redis, unique_name)
        for i in range(200):
            await setter.set()
            if i % 50 == 0:
                assert await connections_named(redis, cname) <= 18
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        # the pool never grew: every connection it ever opened is still counted
        assert await connections_named(redis, cname) <= 18
        assert await redis.llen(signals_key(unique_name)) == 0
    finally:
        for task in tasks:
            task.cancel()
        await event.close()


# --------------------------------------------------------------------------- storms


@ALL_TOPOLOGIES
async def test_cancellation_storm_loses_and_duplicates_nothing(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    rng = random.Random(20240611)
    total = 500
    events = [RedisEvent(redis_factory(), unique_name) for _ in range(2)]
    setter = RedisEvent(redis_factory(), unique_name)
    received = 0
    failures: list[BaseException] = []

    async def waiter(event: RedisEvent) -> None:
        nonlocal received
        while True:
            await event.wait()
            received += 1

    tasks = [asyncio.ensure_future(waiter(events[i % 2])) for i in range(50)]
    setting_done = asyncio.Event()
    cancels = 0

    async def set_all() -> None:
        for _ in range(total):
            await setter.set()
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.003))
        setting_done.set()

    async def storm() -> None:
        nonlocal cancels
        while not setting_done.is_set():
            for _ in range(rng.randint(1, 6)):
                tasks[rng.randrange(len(tasks))].cancel()
                cancels += 1
            await asyncio.sleep(rng.uniform(0, 0.004))
            for i, task in enumerate(tasks):
                if task.done():
                    if not task.cancelled() and task.exception() is not None:
                        failures.append(task.exception())  # type: ignore[arg-type]
                    tasks[i] = asyncio.ensure_future(waiter(events[i % 2]))

    storm_task = asyncio.ensure_future(storm())
    try:
        await asyncio.wait_for(set_all(), 60)
        await asyncio.wait_for(storm_task, 10)
    finally:
        storm_task.cancel()
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    failures += [o for o in outcomes if isinstance(o, BaseException) and not _cancelled(o)]
    assert not failures, failures
    assert cancels > 100, "the storm cancelled too little to mean anything"

    drainer = RedisEvent(redis, unique_name)
    drained = await settle(events, drainer, total, received)
    assert received + drained == total, (received, drained)
    assert received > 0
    assert await redis.llen(signals_key(unique_name)) == 0


def _cancelled(outcome: BaseException) -> bool:
    return isinstance(outcome, asyncio.CancelledError)


async def test_timeouts_racing_sets_lose_and_duplicate_nothing(
    redis: aioredis.Redis, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    rng = random.Random(777)
    total = 250
    events = [RedisEvent(redis_factory(), unique_name) for _ in range(2)]
    setter = RedisEvent(redis_factory(), unique_name)
    received = 0
    timeouts = 0
    stop = asyncio.Event()

    async def waiter(event: RedisEvent, seed: int) -> None:
        nonlocal received, timeouts
        local = random.Random(seed)
        while not stop.is_set():
            try:
                await event.wait(timeout=local.uniform(0.001, 0.02))
            except RedisEventTimeoutError:
                timeouts += 1
            else:
                received += 1

    tasks = [asyncio.ensure_future(waiter(events[i % 2], i)) for i in range(30)]
    try:
        for _ in range(total):
            await setter.set()
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.003))
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
    assert timeouts > 50, "too few timeouts raced the sets"
    drainer = RedisEvent(redis, unique_name)
    drained = await settle(events, drainer, total, received)
    assert received + drained == total, (received, drained)
    assert await redis.llen(signals_key(unique_name)) == 0


# --------------------------------------------------------------------------- faults


async def test_set_with_lost_reply_adds_exactly_one_signal(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
) -> None:
    event = RedisEvent(redis_factory(fault_proxy.rewrite(redis_url)), unique_name)
    assert not await event.is_set()  # the connection is open and idle
    accepted = fault_proxy.accepted
    # The set script ran on the server, but its reply never arrives.
    fault_proxy.swallow_next_reply(after_request=b"EVALSHA")
    await asyncio.wait_for(event.set(), 30)
    assert fault_proxy.swallowed == 1
    assert fault_proxy.accepted > accepted, "set() retried on a new connection"
    assert await redis.llen(signals_key(unique_name)) == 1
    taker = RedisEvent(redis, unique_name)
    await taker.wait(0)
    with pytest.raises(RedisEventTimeoutError):
        await taker.wait(0)


async def test_wait_survives_a_connection_cut_while_blocked(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
) -> None:
    cname = f"{unique_name}-cut"
    event = on_lanes(
        RedisEvent(redis_factory(fault_proxy.rewrite(redis_url), client_name=cname), unique_name)
    )
    task = asyncio.ensure_future(event.wait(timeout=20))
    try:
        await wait_until(lambda: blocked_on_server(redis, cname), timeout=5)
        assert fault_proxy.cut_all() >= 1
        await RedisEvent(redis, unique_name).set()
        await asyncio.wait_for(task, 15)
        assert await redis.llen(signals_key(unique_name)) == 0
        # exactly once: nothing is left for anybody, here or elsewhere
        with pytest.raises(RedisEventTimeoutError):
            await event.wait(timeout=0.3)
        assert not await try_take(RedisEvent(redis, unique_name))
    finally:
        task.cancel()
        await event.close()


async def test_signal_moved_but_reply_lost_is_delivered_once(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
) -> None:
    """The server hands the signal to the blocked BLMOVE, then the connection dies."""
    cname = f"{unique_name}-lost"
    event = on_lanes(
        RedisEvent(redis_factory(fault_proxy.rewrite(redis_url), client_name=cname), unique_name)
    )
    key = signals_key(unique_name)
    task = asyncio.ensure_future(event.wait(timeout=20))
    try:
        await wait_until(lambda: blocked_on_server(redis, cname), timeout=5)
        fault_proxy.pause()
        await RedisEvent(redis, unique_name).set()

        async def moved() -> bool:
            return await redis.llen(key) == 0

        await wait_until(moved, timeout=5, message="the server moved the signal to the waiter")
        assert fault_proxy.cut_all() >= 1
        fault_proxy.resume()
        await asyncio.wait_for(task, 15)
        assert await redis.llen(key) == 0
        with pytest.raises(RedisEventTimeoutError):
            await event.wait(timeout=0.3)
        assert not await try_take(RedisEvent(redis, unique_name))
    finally:
        fault_proxy.resume()
        task.cancel()
        await event.close()


@pytest.mark.parametrize("timeout", [10.0, None])
async def test_wait_outlasts_a_small_socket_timeout(
    timeout: float | None,
    redis: aioredis.Redis,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    event = RedisEvent(redis_factory(socket_timeout=0.5), unique_name)
    started = time.monotonic()
    task = asyncio.ensure_future(event.wait(timeout))
    try:
        # The wait has to span three socket timeouts before a signal exists.
        await asyncio.sleep(1.5)
        assert not task.done(), task
        await RedisEvent(redis, unique_name).set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started >= 1.5
    finally:
        task.cancel()
        await event.close()


async def test_wait_timeout_beyond_socket_timeout_is_an_event_timeout(
    redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    event = RedisEvent(redis_factory(socket_timeout=0.5), unique_name)
    started = time.monotonic()
    with pytest.raises(RedisEventTimeoutError) as info:
        await asyncio.wait_for(event.wait(timeout=1.2), 10)
    assert not isinstance(info.value, rex.RedisError)
    assert 1.1 <= time.monotonic() - started < 3
    await event.close()


# --------------------------------------------------------------------------- known bugs
#
# Each test below fails against the current src/ and documents a bug that was
# reported to the owner of src/. They assert the documented contract: a signal
# that was set is taken by exactly one wait() or stays available to every waiter.


async def _eventually_taken(event: RedisEvent, timeout: float = 10.0) -> bool:
    """True once a non-blocking wait takes a signal; False if none shows up in time."""
    try:
        await wait_until(lambda: try_take(event), timeout=timeout, interval=0.05)
    except AssertionError:
        return False
    return True


async def test_wait_zero_with_lost_reply_keeps_the_signal(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
) -> None:
    # Regression (fixed; was in src/redsync/event.py + _lanes.Dispatcher.try_get):
    # wait(0) runs one LMOVE
    # into the instance's inbox with no retry and no recovery.  When that reply is
    # lost, wait(0) raises redis ConnectionError and the signal stays in the inbox,
    # invisible to every other waiter (LLEN 0, is_set() False) until this same
    # instance happens to block on that lane again, or the inbox expires after 1 h.
    event = RedisEvent(redis_factory(fault_proxy.rewrite(redis_url)), unique_name)
    await RedisEvent(redis, unique_name).set()
    assert await event.is_set()
    fault_proxy.swallow_next_reply(after_request=b"LMOVE")
    took = 0
    try:
        await asyncio.wait_for(event.wait(0), 20)
        took = 1
    except (RedisEventTimeoutError, rex.ConnectionError):
        pass  # acceptable only if the signal is still there for somebody
    assert fault_proxy.swallowed == 1
    other = RedisEvent(redis, unique_name)
    if took:
        assert not await try_take(other)
    else:
        assert await _eventually_taken(other), (
            "wait(0) failed on a lost reply and the signal vanished from the event: "
            f"{await _lists(redis, unique_name)}"
        )


async def test_timed_out_wait_hands_back_a_signal_after_a_connection_cut(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
) -> None:
    # Regression (fixed; was in src/redsync/_lanes.Dispatcher._run / event.py):
    # the server moved the
    # signal into the lane's inbox, the waiter timed out, then the connection
    # died before the reply was read.  The lane sees a ConnectionError, marks
    # itself dirty, and - nobody waiting any more - stops without recovering the
    # inbox.  The signal is stranded there, invisible to all other waiters.
    cname = f"{unique_name}-strand"
    event = on_lanes(
        RedisEvent(redis_factory(fault_proxy.rewrite(redis_url), client_name=cname), unique_name)
    )
    key = signals_key(unique_name)
    task = asyncio.ensure_future(event.wait(timeout=1.0))
    try:
        await wait_until(lambda: blocked_on_server(redis, cname), timeout=5)
        fault_proxy.pause()
        await RedisEvent(redis, unique_name).set()

        async def moved() -> bool:
            return await redis.llen(key) == 0

        await wait_until(moved, timeout=5)
        with pytest.raises(RedisEventTimeoutError):
            await asyncio.wait_for(task, 10)
        fault_proxy.cut_all()
        fault_proxy.resume()
        other = RedisEvent(redis, unique_name)
        assert await _eventually_taken(other), (
            "a signal that reached a timed-out wait was never handed back: "
            f"{await _lists(redis, unique_name)}"
        )
    finally:
        fault_proxy.resume()
        task.cancel()
        await event.close()


async def _lists(client: aioredis.Redis, unique_name: str) -> dict[str, list[bytes]]:
    found = {}
    async for key in client.scan_iter(match=f"*{unique_name}*"):
        if await client.type(key) == b"list":
            found[key.decode()] = await client.lrange(key, 0, -1)
    return found


async def test_a_signal_handed_back_twice_survives_a_lost_push(
    private_server: Any, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    # Regression (fixed; was in src/redsync/event.py, RedisEvent._push):
    # the "already pushed" record
    # is keyed by the signal id (pushed:<signal>:head), not by the push.  The
    # first hand-back of a signal leaves that record for 120 s; when a second
    # hand-back of the same signal loses its connection before the server ran
    # it, the retry finds the old record, assumes its own push went through,
    # and the signal is gone.  Made deterministic here with two proxies and
    # CLIENT PAUSE WRITE on a private server (the shared one is never paused).
    p1 = await FaultProxy("127.0.0.1", private_server.port).start()
    p2 = await FaultProxy("127.0.0.1", private_server.port).start()
    direct = redis_factory(private_server.url)
    c1 = redis_factory(p1.url, client_name="bounce-1")
    c2 = redis_factory(p2.url, client_name="bounce-2")
    # Two ready connections each, so hand-backs need no new handshake.
    await asyncio.gather(c1.ping(), c1.ping(), c2.ping(), c2.ping())
    first = on_lanes(RedisEvent(c1, unique_name))
    second = on_lanes(RedisEvent(c2, unique_name))
    key = signals_key(unique_name)
    paused = False

    async def stat(name: str) -> int:
        return (await asyncio.to_thread(private_server.commandstats)).get(name, 0)

    async def llen_is(n: int) -> bool:
        return await direct.llen(key) == n

    try:
        w1 = asyncio.ensure_future(first.wait(timeout=1.0))
        await wait_until(lambda: blocked_on_server(direct, "bounce-1"), timeout=5)
        w2 = asyncio.ensure_future(second.wait(timeout=2.0))
        await wait_until(lambda: blocked_on_server(direct, "bounce-2"), timeout=5)
        p1.pause()
        p2.pause()
        await RedisEvent(direct, unique_name).set()  # goes to the first blocked: w1's lane
        await wait_until(lambda: llen_is(0), timeout=5)
        with pytest.raises(RedisEventTimeoutError):
            await asyncio.wait_for(w1, 10)
        # Hand-back #1: the first instance hands the signal back; the server
        # passes it straight on to w2's blocked lane (reply held by p2).
        p1.resume()

        async def handed_back_once() -> bool:
            # Handed back by a push after acknowledging, or straight from the inbox.
            backs = await stat("lpush") + await stat("lmove")
            return backs >= 1 and await llen_is(0)

        await wait_until(handed_back_once, timeout=5)
        with pytest.raises(RedisEventTimeoutError):
            await asyncio.wait_for(w2, 10)
        # Hand-back #2 reaches the server but is held there (writes paused) ...
        await direct.execute_command("CLIENT", "PAUSE", 20000, "WRITE")
        paused = True
        p2.resume()

        held: set[str] = set()

        async def push_held() -> bool:
            for c in await direct.client_list():
                if c.get("name") == "bounce-2" and "b" in c.get("flags", ""):
                    held.add(c["id"])
            return bool(held)

        await wait_until(push_held, timeout=5, message="the second hand-back is held")
        # ... and its connection dies before it ran: the server drops the held
        # client (and its queued transaction) before writes resume.
        assert p2.cut_all() >= 1

        async def held_gone() -> bool:
            return not held & {c["id"] for c in await direct.client_list()}

        await wait_until(held_gone, timeout=5, message="the server dropped the held client")
        await direct.execute_command("CLIENT", "UNPAUSE")
        paused = False
        assert private_server.running
        assert await _eventually_taken(RedisEvent(direct, unique_name)), (
            f"the signal was lost by a retried hand-back: {await _lists(direct, unique_name)}"
        )
    finally:
        if paused:
            await direct.execute_command("CLIENT", "UNPAUSE")
        p1.resume()
        p2.resume()
        await first.close()
        await second.close()
        await p1.stop()
        await p2.stop()


async def test_wait_timing_out_while_writes_are_paused_does_not_crash_redis(
    private_server: Any, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    # Regression (fixed; was in src/redsync/_lanes.Dispatcher._trim, via Link.unblock):
    # while the
    # server pauses writes (CLIENT PAUSE WRITE, which FAILOVER and manual
    # failovers use), a lane's BLMOVE is postponed by the server.  When the
    # waiter times out (or is cancelled), _trim sends CLIENT UNBLOCK <id>
    # TIMEOUT for that postponed client, and Redis 7.0 aborts:
    # "Guru Meditation: Unknown btype in replyToBlockedClientTimedOut()
    # #blocked.c:230" - the whole server dies.  (A Redis/Valkey bug, fixed in
    # Valkey by refusing such unblocks, but redsync must not trigger it on
    # the servers it supports.)  The same path exists for
    # RedisSemaphore.acquire(timeout=...).  Private server only.
    direct = redis_factory(private_server.url)
    event = RedisEvent(redis_factory(private_server.url), unique_name)
    pause_ms = 1500
    await direct.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
    loop = asyncio.get_running_loop()
    pause_ends = loop.time() + pause_ms / 1000
    with pytest.raises(RedisEventTimeoutError):
        await asyncio.wait_for(event.wait(timeout=0.3), 10)
    # Watch the server until the pause is over (or the server is gone).
    await wait_until(
        lambda: not private_server.running or loop.time() >= pause_ends + 0.2, timeout=10
    )
    if not private_server.running:
        lines = private_server._log_tail(5000).splitlines()
        crash = [line for line in lines if "Guru Meditation" in line or "crashed" in line]
        raise AssertionError(f"redis-server crashed: {crash}")
    await RedisEvent(direct, unique_name).set()
    await asyncio.wait_for(event.wait(timeout=5), 10)
    await event.close()


# --------------------------------------------------------------------------- abandoned inboxes

EVENT_WAITER = str(Path(__file__).parent / "workers" / "event_waiter.py")


def inboxes_key(name: str) -> str:
    return KeySpace(PREFIX, name).key("inboxes")


def spawn_event_waiter(
    url: str, name: str, lease_ms: int, block: float, mode: str = "queue"
) -> subprocess.Popen[str]:
    """tests/workers/event_waiter.py, with a short lease; ``mode``: "queue" or "lanes"."""
    return subprocess.Popen(
        [sys.executable, EVENT_WAITER, url, name, str(lease_ms), str(block), mode],
        stdout=subprocess.PIPE,
        text=True,
    )


def inbox_lease_expired(redis: aioredis.Redis, name: str) -> Callable[[], Any]:
    async def check() -> bool:
        entries = await redis.zrange(inboxes_key(name), 0, -1, withscores=True)
        return bool(entries) and all(score < time.time() * 1000 for _, score in entries)

    return check


async def test_signal_in_the_inbox_of_a_killed_waiter_goes_to_another(
    redis: aioredis.Redis, redis_url: str, unique_name: str
) -> None:
    """A waiter process dies after the server moved a signal into its inbox, before
    its acknowledgement: another waiter finds the abandoned inbox and gets the signal."""
    proc = spawn_event_waiter(redis_url, unique_name, lease_ms=800, block=0.5, mode="lanes")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"

        async def registered() -> bool:
            return await redis.zcard(inboxes_key(unique_name)) == 1

        await wait_until(registered, timeout=10, message="the waiter registered its inbox")
        os.kill(proc.pid, signal.SIGSTOP)  # it can no longer acknowledge anything
        await RedisEvent(redis, unique_name).set()

        async def moved() -> bool:
            return await redis.llen(signals_key(unique_name)) == 0

        await wait_until(moved, timeout=10, message="the server moved the signal to the waiter")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        (inbox,) = await redis.zrange(inboxes_key(unique_name), 0, -1)
        assert await redis.llen(inbox) == 1  # the signal sits in the dead waiter's inbox

        await wait_until(
            inbox_lease_expired(redis, unique_name),
            timeout=10,
            message="the dead waiter's inbox lease ran out",
        )
        other = on_lanes(RedisEvent(redis, unique_name))
        await asyncio.wait_for(other.wait(timeout=5), 10)
        assert not await redis.exists(inbox)
        assert await redis.llen(signals_key(unique_name)) == 0
        assert not await try_take(other)
        await other.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_a_signal_handed_to_a_killed_event_waiter_goes_to_another(
    redis: aioredis.Redis, redis_url: str, unique_name: str
) -> None:
    """The waiter's process is stopped, handed a signal, then killed before it
    could deliver it to itself: once its lease runs out, the next waiter gets
    the signal, exactly once."""
    keys = KeySpace("redsync:event", unique_name)
    proc = spawn_event_waiter(redis_url, unique_name, lease_ms=800, block=0.5, mode="queue")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        await wait_until(lambda: redis.zcard(keys.key("waiters")), timeout=10)
        os.kill(proc.pid, signal.SIGSTOP)
        setter = RedisEvent(redis, unique_name)
        await setter.set()
        assert len(await redis.hgetall(keys.key("handed"))) == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        async def lease_over() -> bool:
            entries = await redis.zrange(keys.key("leases"), 0, -1, withscores=True)
            return bool(entries) and all(score < time.time() * 1000 for _, score in entries)

        await wait_until(lease_over, timeout=10)
        other = RedisEvent(redis, unique_name)
        await asyncio.wait_for(other.wait(timeout=5), 10)
        assert await redis.hgetall(keys.key("handed")) == {}
        assert not await setter.is_set()
        with pytest.raises(RedisEventTimeoutError):
            await other.wait(timeout=0)
        await other.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_an_inbox_reaped_before_the_ack_is_not_delivered_twice(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A live but stalled waiter loses its signal to another waiter; when it wakes up,
    its acknowledgement fails and it waits again instead of returning the signal."""
    monkeypatch.setattr(redsync.event._lanes, "INBOX_LEASE_MS", 300)
    cname = f"{unique_name}-slow"
    slow = on_lanes(
        RedisEvent(redis_factory(fault_proxy.rewrite(redis_url), client_name=cname), unique_name)
    )
    task = asyncio.ensure_future(slow.wait(timeout=6))
    try:
        await wait_until(lambda: blocked_on_server(redis, cname), timeout=5)
        fault_proxy.pause()  # the slow waiter will not see the server's answer for now
        await RedisEvent(redis, unique_name).set()

        async def moved() -> bool:
            return await redis.llen(signals_key(unique_name)) == 0

        await wait_until(moved, timeout=5, message="the server moved the signal to the slow waiter")
        await wait_until(
            inbox_lease_expired(redis, unique_name),
            timeout=5,
            message="the slow waiter's 300 ms inbox lease ran out",
        )
        fast = on_lanes(RedisEvent(redis, unique_name))
        await asyncio.wait_for(fast.wait(timeout=5), 10)  # reaped, then taken
        fault_proxy.resume()
        with pytest.raises(RedisEventTimeoutError):
            await asyncio.wait_for(task, 15)
        assert await redis.llen(signals_key(unique_name)) == 0
        assert not await try_take(fast)
        await fast.close()
    finally:
        fault_proxy.resume()
        task.cancel()
        await slow.close()


@pytest.mark.parametrize("mode", ["queue", "lanes"])
async def test_a_lost_acknowledgement_reply_still_delivers_once(
    fault_proxy: FaultProxy,
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    mode: str,
) -> None:
    """The reply of the step that delivers a pending signal is lost (the wait
    script in the queue, the acknowledgement on lanes): the retry delivers
    that same signal, and nothing else is taken."""
    event = RedisEvent(redis_factory(fault_proxy.rewrite(redis_url)), unique_name)
    if mode == "lanes":
        on_lanes(event)
    setter = RedisEvent(redis, unique_name)
    await setter.set()
    await setter.set()
    fault_proxy.swallow_next_reply(after_request=b"LTRIM" if mode == "lanes" else b"EVALSHA")
    await asyncio.wait_for(event.wait(timeout=5), 20)
    assert fault_proxy.swallowed == 1
    assert await redis.llen(signals_key(unique_name)) == 1  # the second one is still there
    assert await try_take(setter)
    assert not await try_take(setter)
    await event.close()
