"""RedisReadWriteLock: sharing, exclusion, writer preference, downgrade, and real faults.

Timeouts, cancellation at any point, close and statistics are covered for
both sides by the contract suite (``test_contract.py``).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until

from helpers import WorkerProcess, keys_of, keyspace
from redsync import (
    RedisLock,
    RedisLockError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
    RedisReadWriteLock,
)

HOLDER = str(Path(__file__).parent / "workers" / "rwlock_holder.py")
PREFIX = "redsync:rwlock"


def rw_keys(name: str) -> Any:
    return keyspace(name, PREFIX)


async def live_reads(client: aioredis.Redis, name: str) -> int:
    now_s, now_us = await client.time()
    now_ms = now_s * 1000 + now_us // 1000
    return int(await client.zcount(rw_keys(name).key("readers"), f"({now_ms}", "+inf"))


async def gate_free(client: aioredis.Redis, name: str) -> bool:
    return int(await client.llen(rw_keys(name).key("pool"))) == 1


class Holder(WorkerProcess):
    """A worker process holding a read or the writer (tests/workers/rwlock_holder.py)."""

    def __init__(self, url: str, name: str, ttl: float, side: str) -> None:
        super().__init__(HOLDER, url, name, ttl, side)

    async def held(self) -> int:
        word, fence = (await self.line()).split()
        assert word == "held"
        return int(fence)


@pytest.fixture
async def holders() -> AsyncIterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(url: str, name: str, ttl: float, side: str) -> Holder:
        holder = Holder(url, name, ttl, side)
        started.append(holder)
        return holder

    try:
        yield start
    finally:
        for holder in started:
            holder.stop()


async def _hold(side: Any, log: list[str], tag: str, release: asyncio.Event) -> None:
    async with side:
        log.append(f"{tag} in")
        await release.wait()
        log.append(f"{tag} out")


# -- sharing and exclusion -------------------------------------------------------------


@pytest.mark.usefixtures("topology")
async def test_readers_share_and_a_writer_is_alone(redis: Any, unique_name: str) -> None:
    a = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    b = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        await a.reader.acquire()
        await b.reader.acquire(timeout=1)  # another process's view: shares
        assert a.reader.owned() and b.reader.owned()
        assert await live_reads(redis, unique_name) == 2
        with pytest.raises(RedisLockTimeoutError):  # another task of b: waits for the reads
            await asyncio.ensure_future(b.writer.acquire(timeout=0.3))
        assert await gate_free(redis, unique_name), "a writer that gave up left the gate taken"
        await a.reader.release()
        await b.reader.release()
        assert await live_reads(redis, unique_name) == 0
        fence = await b.writer.acquire(timeout=2)
        assert b.writer.owned() and b.writer.fence == fence
        with pytest.raises(RedisLockTimeoutError):
            await a.reader.acquire(timeout=0.3)
        with pytest.raises(RedisLockTimeoutError):
            await a.writer.acquire(timeout=0.3)
        stats = await b.statistics()
        assert (stats.writer_here, stats.fence, stats.readers, stats.gate_held) == (
            True,
            fence,
            0,
            True,
        )
        await b.writer.release()
        second = await a.writer.acquire(timeout=2)
        assert second > fence, "writer fences rise across holders"
        await a.writer.release()
        assert await gate_free(redis, unique_name)
    finally:
        await a.close()
        await b.close()


async def test_an_uncontended_read_is_one_round_trip_each_way(
    redis: aioredis.Redis, unique_name: str
) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        async with rw.reader:  # first use creates the gate
            pass
        sent: list[Any] = []
        original = rw._link.run

        async def run(*args: Any, **kwargs: Any) -> Any:
            sent.append(args[1])
            return await original(*args, **kwargs)

        rw._link.run = run  # type: ignore[method-assign]
        try:
            await rw.reader.acquire()
            assert len(sent) == 1, sent
            await rw.reader.release()
            assert len(sent) == 2, sent
        finally:
            del rw._link.run
    finally:
        await rw.close()


async def test_a_writer_waits_for_reads_in_and_readers_after_it_wait_behind(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """Writer preference: once a writer waits, a later reader waits behind it;
    the writer gets in as soon as the reads that were in have ended."""
    r1, w, r2 = (RedisReadWriteLock(redis, unique_name, lease_ttl=5) for _ in range(3))
    log: list[str] = []
    gates = {tag: asyncio.Event() for tag in ("r1", "w", "r2")}
    try:
        first = asyncio.ensure_future(_hold(r1.reader, log, "r1", gates["r1"]))
        await wait_until(lambda: log == ["r1 in"], 5)
        writer = asyncio.ensure_future(_hold(w.writer, log, "w", gates["w"]))
        await wait_until(lambda: w._gate._hold is not None, 5)  # it holds the gate: draining
        later = asyncio.ensure_future(_hold(r2.reader, log, "r2", gates["r2"]))
        await wait_until(lambda: r2._waiting == 1, 5)
        await asyncio.sleep(0.2)
        assert log == ["r1 in"], "a reader after a waiting writer got in before it"
        gates["r1"].set()
        await wait_until(lambda: "w in" in log, 5)
        assert log == ["r1 in", "r1 out", "w in"]
        gates["w"].set()
        gates["r2"].set()
        await asyncio.wait_for(asyncio.gather(first, writer, later), 10)
        assert log == ["r1 in", "r1 out", "w in", "w out", "r2 in", "r2 out"]
    finally:
        for rw in (r1, w, r2):
            await rw.close()


async def test_waiters_are_served_in_arrival_order(redis: aioredis.Redis, unique_name: str) -> None:
    """A writer holds; then readers and writers queue alternately: they get in
    in that order, and consecutive readers together."""
    holder = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    locks = [RedisReadWriteLock(redis, unique_name, lease_ttl=5) for _ in range(4)]
    order: list[str] = []
    try:
        await holder.writer.acquire()

        async def take(rw: RedisReadWriteLock, tag: str) -> None:
            side: Any = rw.writer if tag.startswith("w") else rw.reader
            await side.acquire()
            order.append(tag)
            await asyncio.sleep(0.05)
            await side.release()

        tags = ["r1", "r2", "w1", "r3"]
        tasks = []
        for rw, tag in zip(locks, tags):
            tasks.append(asyncio.ensure_future(take(rw, tag)))
            await wait_until(lambda rw=rw: rw._waiting == 1, 5)
        await holder.writer.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert order[2:] == ["w1", "r3"] and sorted(order[:2]) == ["r1", "r2"], order
    finally:
        await holder.close()
        for rw in locks:
            await rw.close()


async def test_downgrade_lets_no_writer_in_between(redis: aioredis.Redis, unique_name: str) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    other = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    reader = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    log: list[str] = []
    try:
        fence = await rw.writer.acquire()
        waiting_writer = asyncio.ensure_future(other.writer.acquire())
        await wait_until(lambda: other._waiting == 1, 5)
        await rw.writer.downgrade()
        assert rw.reader.owned() and not rw.writer.owned() and rw.writer.fence is None
        assert await live_reads(redis, unique_name) == 1
        await asyncio.sleep(0.2)
        assert not waiting_writer.done(), "a writer got in between the downgrade and the read"
        # A reader that arrives now queues behind the waiting writer.
        late = asyncio.ensure_future(reader.reader.acquire())
        await asyncio.sleep(0.1)
        assert not late.done()
        await rw.reader.release()
        later_fence = await asyncio.wait_for(waiting_writer, 5)
        assert later_fence > fence
        log.append("writer")
        await other.writer.release()
        await asyncio.wait_for(late, 5)
        await reader.reader.release()
    finally:
        for lock in (rw, other, reader):
            await lock.close()


async def test_ownership_rules_raise_at_once(redis: aioredis.Redis, unique_name: str) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        async with rw.reader:
            started = time.monotonic()
            with pytest.raises(RedisLockError, match="release the read first"):
                await rw.writer.acquire()
            assert time.monotonic() - started < 0.5
            async with rw.reader:  # a task's reads nest, without traffic
                assert rw.reader.owned()
            assert rw.reader.owned()
        assert not rw.reader.owned()
        async with rw.writer:
            with pytest.raises(RedisLockError, match="already holds the writer"):
                await rw.writer.acquire()
            with pytest.raises(RedisLockError, match="downgrade"):
                await rw.reader.acquire()
        with pytest.raises(RedisLockNotAcquiredError):
            await rw.writer.release()
        with pytest.raises(RedisLockNotAcquiredError):
            await rw.reader.release()
        with pytest.raises(RedisLockNotAcquiredError):
            await rw.writer.downgrade()
        # Any task may release what is held through the instance.
        await rw.writer.acquire()
        await asyncio.ensure_future(rw.writer.release())
        await rw.reader.acquire()
        await asyncio.ensure_future(rw.reader.release())
        assert await live_reads(redis, unique_name) == 0 and await gate_free(redis, unique_name)
    finally:
        await rw.close()


# -- cancellation and timeouts leave nothing behind -------------------------------------


async def test_cancelled_and_timed_out_waits_leave_nothing_held(
    redis: aioredis.Redis, unique_name: str
) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    other = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        await rw.reader.acquire()
        for delay in (0.0, 0.001, 0.003, 0.01, 0.05):
            waiting = asyncio.ensure_future(other.writer.acquire())
            await asyncio.sleep(delay)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        with pytest.raises(RedisLockTimeoutError):
            await other.writer.acquire(timeout=0.1)
        await rw.reader.release()
        await wait_until(lambda: gate_free(redis, unique_name), 5)
        assert await live_reads(redis, unique_name) == 0
        # Now a writer holds: cancelled readers leave no read behind.
        await other.writer.acquire(timeout=2)
        for delay in (0.0, 0.001, 0.003, 0.01, 0.05):
            waiting = asyncio.ensure_future(rw.reader.acquire())
            await asyncio.sleep(delay)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        await other.writer.release()
        await wait_until(lambda: gate_free(redis, unique_name), 5)
        await wait_until(lambda: other._tasks == set() and rw._tasks == set(), 5)
        assert await live_reads(redis, unique_name) == 0
        assert not rw._reads and rw._write is None and other._write is None
        async with rw.writer:  # and the lock still works
            pass
    finally:
        await rw.close()
        await other.close()


async def test_cancelling_readers_at_every_step_of_a_hand_off(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """Readers queued behind a writer, cancelled at every instant of the
    writer's release and their pass through the gate: afterwards no read
    and no gate hold is left, and a writer gets in at once."""
    writer = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    readers = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        for step in range(12):
            await writer.writer.acquire(timeout=5)
            waits = [asyncio.ensure_future(readers.reader.acquire()) for _ in range(3)]
            await wait_until(lambda: readers._waiting == 3, 5)
            release = asyncio.ensure_future(writer.writer.release())
            for _ in range(step):
                await asyncio.sleep(0)
            for wait in waits:
                wait.cancel()
            await release
            results = await asyncio.gather(*waits, return_exceptions=True)
            for result in results:
                if not isinstance(result, BaseException):
                    await readers.reader.release()
            await wait_until(lambda: not readers._tasks, 5)
            assert not readers._reads
            await wait_until(lambda: gate_free(redis, unique_name), 5)
            assert await live_reads(redis, unique_name) == 0, f"step {step}"
    finally:
        await writer.close()
        await readers.close()


# -- real faults ------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["reader", "writer"])
async def test_a_killed_holder_is_reclaimed(
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    holders: Callable[..., Holder],
    side: str,
) -> None:
    ttl = 1.5
    holder = holders(redis_url, unique_name, ttl, side)
    fence = await holder.held()
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=ttl)
    try:
        with pytest.raises(RedisLockTimeoutError):
            await rw.writer.acquire(timeout=0.3)
        holder.proc.kill()
        holder.proc.wait(10)
        killed = time.monotonic()
        taken = await rw.writer.acquire(timeout=15)
        waited = time.monotonic() - killed
        assert taken > fence
        assert waited < ttl + ttl / 3 * 1.1 + 2.0, f"took over after {waited:.1f} s"
        assert await live_reads(redis, unique_name) == 0
        await rw.writer.release()
    finally:
        await rw.close()


async def test_a_reader_stalled_past_its_lease_finds_it_lost(
    redis: aioredis.Redis,
    redis_url: str,
    unique_name: str,
    holders: Callable[..., Holder],
) -> None:
    """SIGSTOP a reader past its lease: a writer gets in, and the reader's
    release, once it runs again, says its lease was lost."""
    ttl = 1.5
    holder = holders(redis_url, unique_name, ttl, "reader")
    await holder.held()
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=ttl)
    try:
        os.kill(holder.proc.pid, signal.SIGSTOP)
        await rw.writer.acquire(timeout=15)
        os.kill(holder.proc.pid, signal.SIGCONT)
        holder.send("release")
        assert await holder.line() == "RedisLockLeaseLostError"
        assert await holder.line() == "done"
        assert rw.writer.owned() and await live_reads(redis, unique_name) == 0
        await rw.writer.release()
    finally:
        await rw.close()


async def test_reads_survive_the_keys_being_lost_and_keep_writers_out(
    redis: aioredis.Redis, unique_name: str
) -> None:
    """The keys vanish (as after a restart of a server without persistence)
    while a read is held: the reader's renewal registers it again, and a
    writer does not get in until the read ends; fences keep rising."""
    ttl = 1.5
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=ttl)
    other = RedisReadWriteLock(redis, unique_name, lease_ttl=ttl)
    try:
        fence = await other.writer.acquire()
        await other.writer.release()
        await rw.reader.acquire()
        await redis.delete(*await keys_of(redis, unique_name))
        await wait_until(lambda: live_reads(redis, unique_name), 5)
        with pytest.raises(RedisLockTimeoutError):
            await other.writer.acquire(timeout=ttl)
        assert rw.reader.owned() and rw._leases_lost == 0
        await rw.reader.release()
        later = await other.writer.acquire(timeout=10)
        assert later > fence
        await other.writer.release()
    finally:
        await rw.close()
        await other.close()


async def test_every_key_has_a_ttl(redis: aioredis.Redis, unique_name: str) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    other = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        await rw.reader.acquire()
        waiting = asyncio.ensure_future(other.writer.acquire())
        await wait_until(lambda: redis.exists(rw_keys(unique_name).key("drain")), 5)
        found = await keys_of(redis, unique_name)
        assert {rw_keys(unique_name).key(k) for k in ("readers", "writers")} <= set(found)
        for key in found:
            assert await redis.pttl(key) > 0, f"{key} has no TTL"
        await rw.reader.release()
        await asyncio.wait_for(waiting, 5)
        await other.writer.release()
        # The writer's entry leaves in the background; then nothing moves.
        await wait_until(lambda: not other._tasks and not rw._tasks, 5)
        for key in await keys_of(redis, unique_name):
            assert await redis.pttl(key) > 0, f"{key} has no TTL"
    finally:
        await rw.close()
        await other.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": math.nan}, "lease_ttl"),
        ({"replicas": -1}, "replicas"),
        ({"key_prefix": ""}, "key_prefix"),
    ],
)
async def test_bad_arguments_raise_at_once_and_write_nothing(
    redis: aioredis.Redis, unique_name: str, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        RedisReadWriteLock(redis, unique_name, **kwargs)
    assert await keys_of(redis, unique_name) == []


async def test_the_constructor_does_no_io_and_bad_timeouts_raise(unique_name: str) -> None:
    client = aioredis.Redis.from_url("redis://127.0.0.1:9/0")  # nothing listens there
    rw = RedisReadWriteLock(client, unique_name)
    assert not rw.reader.owned() and not rw.writer.owned()
    for bad in (math.nan, "1"):
        with pytest.raises((ValueError, TypeError), match="timeout"):
            await rw.reader.acquire(timeout=bad)  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError), match="timeout"):
            await rw.writer.acquire(timeout=bad)  # type: ignore[arg-type]
    await rw.close()
    await client.aclose()


async def test_a_lock_and_a_read_write_lock_of_one_name_do_not_meet(
    redis: aioredis.Redis, unique_name: str
) -> None:
    lock = RedisLock(redis, unique_name)
    rw = RedisReadWriteLock(redis, unique_name)
    try:
        async with lock, rw.writer:
            pass
    finally:
        await lock.close()
        await rw.close()


async def test_many_read_write_locks_use_few_connections(
    private_server: Any, unique_name: str
) -> None:
    client = aioredis.Redis.from_url(private_server.url)
    locks = [RedisReadWriteLock(client, f"{unique_name}-{i}", lease_ttl=5) for i in range(300)]
    try:

        async def use(rw: RedisReadWriteLock, i: int) -> None:
            if i % 3:
                async with rw.reader:
                    await asyncio.sleep(0.05)
            else:
                async with rw.writer:
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(asyncio.gather(*(use(rw, i) for i, rw in enumerate(locks))), 60)
        connected = int((await client.info("clients"))["connected_clients"])
        assert connected <= 8 + 1, f"{connected} connections for 300 read-write locks"
    finally:
        for rw in locks:
            await rw.close()
        await client.aclose()


async def test_a_writer_block_that_downgraded_ends_the_read(
    redis: aioredis.Redis, unique_name: str
) -> None:
    rw = RedisReadWriteLock(redis, unique_name, lease_ttl=5)
    try:
        async with rw.writer:
            await rw.writer.downgrade()
            assert rw.reader.owned() and await live_reads(redis, unique_name) == 1
            assert await gate_free(redis, unique_name), "the downgrade kept the gate"
        assert not rw.reader.owned() and await live_reads(redis, unique_name) == 0
    finally:
        await rw.close()
