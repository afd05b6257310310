"""The contract every primitive keeps, run over each primitive and each deployment.

One suite, many subjects (as trio runs one lock suite over every lock type):
a subject says how to make its wait block, how to let one waiter through,
and what that waiter then holds.  Each test runs for every subject on a
plain server, a Redis Cluster and a Sentinel set-up.  What it checks:

* timeouts: ``None`` waits until let through; ``0`` and negative values try
  once without blocking; a positive timeout raises the primitive's timeout
  error (a ``RedsyncTimeoutError``) no earlier than asked; NaN, strings and
  booleans raise ``ValueError``/``TypeError`` naming ``timeout``;
* cancellation at any point of a wait loses and doubles nothing: after it,
  exactly what was let through is still there for the next waiter;
* close is idempotent, fails the tasks still waiting with the primitive's
  closed error (a ``RedsyncClosedError``), and refuses new waits;
* ``statistics()`` is a dataclass snapshot naming the primitive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from devtools import wait_until

import redsync
from redsync import (
    RedisEvent,
    RedisLock,
    RedisReadWriteLock,
    RedisSemaphore,
    SemaphoreInitStrategy,
)

pytestmark = pytest.mark.usefixtures("topology")


@dataclass(frozen=True)
class Subject:
    """One primitive, as the contract sees it."""

    name: str
    #: Build the twin, which plays "another process" (and holds, if it can).
    make: Callable[[Any, str], Awaitable[Any]]
    #: Build the instance under test, beside the twin.
    join: Callable[[Any, str], Awaitable[Any]]
    #: The wait under test.
    wait: Callable[[Any, float | None], Awaitable[None]]
    #: Let exactly one waiter through (from the twin).
    let_one_through: Callable[[Any], Awaitable[None]]
    #: Give back what a successful wait took, so the next one can take it.
    give_back: Callable[[Any], Awaitable[None]]
    #: How many waiters could get through right now (read from Redis).
    available: Callable[[Any], Awaitable[int]]
    timeout_error: type[Exception]
    closed_error: type[Exception]
    #: The fields statistics() must have.
    fields: frozenset[str]
    #: What a wait takes is shared (a read): many may hold at once.  Then
    #: ``held`` counts the holds in Redis, which must all be given back.
    held: Callable[[Any], Awaitable[int]] | None = None


async def _make_semaphore(client: Any, name: str, strategy: SemaphoreInitStrategy) -> Any:
    sem = await RedisSemaphore.create(
        client, name, count=1, lease_ttl=5, semaphore_init_strategy=strategy
    )
    await sem.acquire()  # held: the next acquire blocks until it is released
    return sem


async def _sem_available(sem: RedisSemaphore) -> int:
    return (await sem.statistics()).available


async def _make_event(client: Any, name: str) -> Any:
    return RedisEvent(client, name)


async def _event_available(event: RedisEvent) -> int:
    return (await event.statistics()).pending_signals


async def _join_semaphore(client: Any, name: str) -> Any:
    return await RedisSemaphore.attach(client, name, lease_ttl=5)


async def _make_lock(client: Any, name: str) -> Any:
    lock = RedisLock(client, name, lease_ttl=5)
    await lock.acquire()  # held: the next acquire blocks until it is released
    return lock


async def _join_lock(client: Any, name: str) -> Any:
    return RedisLock(client, name, lease_ttl=5)


async def _lock_available(lock: RedisLock) -> int:
    return 0 if await lock.locked() else 1


async def _make_writer(client: Any, name: str) -> Any:
    rw = RedisReadWriteLock(client, name, lease_ttl=5)
    await rw.writer.acquire()  # held: readers and writers wait until it is released
    return rw


async def _join_rwlock(client: Any, name: str) -> Any:
    return RedisReadWriteLock(client, name, lease_ttl=5)


async def _writer_available(rw: RedisReadWriteLock) -> int:
    stats = await rw.statistics()
    return 0 if stats.gate_held or stats.readers else 1


async def _reader_available(rw: RedisReadWriteLock) -> int:
    return 0 if (await rw.statistics()).gate_held else 1


async def _reads_held(rw: RedisReadWriteLock) -> int:
    return (await rw.statistics()).readers


def _subjects() -> list[Subject]:
    sem_fields = frozenset({"name", "count", "available", "holders", "held_here", "tasks_waiting"})
    subjects = []
    for strategy in SemaphoreInitStrategy:

        async def make(client: Any, name: str, strategy: SemaphoreInitStrategy = strategy) -> Any:
            return await _make_semaphore(client, name, strategy)

        subjects.append(
            Subject(
                name=f"semaphore-{strategy.value}",
                make=make,
                join=_join_semaphore,
                wait=lambda sem, t: sem.acquire(t),
                let_one_through=lambda sem: sem.release(),
                give_back=lambda sem: sem.release(),
                available=_sem_available,
                timeout_error=redsync.RedisSemaphoreTimeoutError,
                closed_error=redsync.RedisSemaphoreClosedError,
                fields=sem_fields,
            )
        )
    subjects.append(
        Subject(
            name="event",
            make=_make_event,
            join=_make_event,
            wait=lambda event, t: event.wait(t),
            let_one_through=lambda event: event.set(),
            give_back=lambda event: event.set(),
            available=_event_available,
            timeout_error=redsync.RedisEventTimeoutError,
            closed_error=redsync.RedisEventClosedError,
            fields=frozenset({"name", "pending_signals", "tasks_waiting"}),
        )
    )
    subjects.append(
        Subject(
            name="lock",
            make=_make_lock,
            join=_join_lock,
            wait=lambda lock, t: lock.acquire(t),
            let_one_through=lambda lock: lock.release(),
            give_back=lambda lock: lock.release(),
            available=_lock_available,
            timeout_error=redsync.RedisLockTimeoutError,
            closed_error=redsync.RedisLockClosedError,
            fields=frozenset({"name", "locked", "held_here", "fence", "tasks_waiting"}),
        )
    )
    rw_fields = frozenset({"name", "readers", "readers_here", "writer_here", "fence"})
    subjects.append(
        Subject(
            name="rwlock-writer",
            make=_make_writer,
            join=_join_rwlock,
            wait=lambda rw, t: rw.writer.acquire(t),
            let_one_through=lambda rw: rw.writer.release(),
            give_back=lambda rw: rw.writer.release(),
            available=_writer_available,
            timeout_error=redsync.RedisLockTimeoutError,
            closed_error=redsync.RedisLockClosedError,
            fields=rw_fields,
        )
    )
    subjects.append(
        Subject(
            name="rwlock-reader",
            make=_make_writer,
            join=_join_rwlock,
            wait=lambda rw, t: rw.reader.acquire(t),
            let_one_through=lambda rw: rw.writer.release(),
            give_back=lambda rw: rw.reader.release(),
            available=_reader_available,
            timeout_error=redsync.RedisLockTimeoutError,
            closed_error=redsync.RedisLockClosedError,
            fields=rw_fields,
            held=_reads_held,
        )
    )
    return subjects


SUBJECTS = _subjects()


@pytest.fixture(params=SUBJECTS, ids=lambda s: s.name)
def subject(request: pytest.FixtureRequest) -> Subject:
    return request.param  # type: ignore[no-any-return]


async def _pair(subject: Subject, redis: Any, name: str) -> tuple[Any, Any]:
    """The instance under test (first) and the twin that holds / signals."""
    twin = await subject.make(redis, name)
    return await subject.join(redis, name), twin


async def test_timeouts(subject: Subject, redis: Any, unique_name: str) -> None:
    mine, twin = await _pair(subject, redis, unique_name)
    try:
        for instant in (0, -1, 0.0):
            started = time.monotonic()
            with pytest.raises(subject.timeout_error) as caught:
                await subject.wait(mine, instant)
            assert time.monotonic() - started < 1.0, "a non-blocking try blocked"
            assert isinstance(caught.value, redsync.RedsyncTimeoutError)
            assert isinstance(caught.value, TimeoutError)
        started = time.monotonic()
        with pytest.raises(subject.timeout_error):
            await subject.wait(mine, 0.3)
        assert 0.29 <= time.monotonic() - started < 3.0
        for bad, error in ((math.nan, ValueError), ("1", TypeError), (True, TypeError)):
            with pytest.raises(error, match="timeout"):
                await subject.wait(mine, bad)  # type: ignore[arg-type]
        assert await subject.available(twin) == 0, "a failed wait took something"
        forever = asyncio.ensure_future(subject.wait(mine, None))
        await wait_until(lambda: mine._waiting > 0, timeout=5)
        assert not forever.done()
        await subject.let_one_through(twin)
        await asyncio.wait_for(forever, 10)
        if subject.held is None:
            assert await subject.available(twin) == 0
        else:
            assert await subject.held(twin) == 1
        await subject.give_back(mine)
        await subject.wait(mine, 0)  # what was given back can be taken at once
        await subject.give_back(mine)
    finally:
        await mine.close()
        await twin.close()


@pytest.mark.parametrize("steps", [0, 1, 2, 3, 5, 8, 13])
async def test_cancellation_at_any_point_loses_and_doubles_nothing(
    subject: Subject, redis: Any, unique_name: str, steps: int
) -> None:
    """Cancel a wait after ``steps`` turns of the event loop, with one waiter's
    worth let through just before: what was let through is taken exactly once,
    by the cancelled wait or by the next one."""
    mine, twin = await _pair(subject, redis, unique_name)
    try:
        waiting = asyncio.ensure_future(subject.wait(mine, 10))
        await subject.let_one_through(twin)
        for _ in range(steps):
            await asyncio.sleep(0)
        waiting.cancel()
        done, _ = await asyncio.wait([waiting], timeout=10)
        assert done, "the cancelled wait never finished"
        got_it = not waiting.cancelled() and waiting.exception() is None
        if got_it:  # it completed before the cancellation landed: it holds it
            await subject.give_back(mine)
        await wait_until(lambda: _available_is(subject, twin, 1), timeout=10)
        await subject.wait(mine, 5)  # exactly one is there ...
        if subject.held is None:
            with pytest.raises(subject.timeout_error):
                # ... and only one (asked by another task: a lock's owner may not ask twice)
                await asyncio.ensure_future(subject.wait(mine, 0))
        else:  # ... shared: the cancelled wait left no hold of its own behind
            assert await subject.held(twin) == 1
        await subject.give_back(mine)
        assert await subject.available(twin) == 1
        if subject.held is not None:
            await wait_until(lambda: _held_is(subject, twin, 0), timeout=10)
    finally:
        await mine.close()
        await twin.close()


async def _available_is(subject: Subject, instance: Any, n: int) -> bool:
    return await subject.available(instance) == n


async def _held_is(subject: Subject, instance: Any, n: int) -> bool:
    assert subject.held is not None
    return await subject.held(instance) == n


async def test_close_is_idempotent_and_fails_waiters(
    subject: Subject, redis: Any, unique_name: str
) -> None:
    mine, twin = await _pair(subject, redis, unique_name)
    try:
        waiter = asyncio.ensure_future(subject.wait(mine, None))
        await wait_until(lambda: mine._waiting > 0, timeout=5)
        await mine.close()
        await mine.close()
        with pytest.raises(subject.closed_error, match="closed"):
            await waiter
        assert isinstance(waiter.exception(), redsync.RedsyncClosedError)
        with pytest.raises(subject.closed_error):
            await subject.wait(mine, 1)
        assert await subject.available(twin) == 0, "closing took something"
    finally:
        await mine.close()
        await twin.close()


async def test_statistics_shape(subject: Subject, redis: Any, unique_name: str) -> None:
    mine, twin = await _pair(subject, redis, unique_name)
    try:
        stats = await mine.statistics()
        assert dataclasses.is_dataclass(stats)
        names = {f.name for f in dataclasses.fields(stats)}
        assert subject.fields <= names, names
        assert stats.name == unique_name
        assert stats.tasks_waiting == 0
        waiter = asyncio.ensure_future(subject.wait(mine, None))
        await wait_until(lambda: mine._waiting > 0, timeout=5)
        assert (await mine.statistics()).tasks_waiting == 1
        await subject.let_one_through(twin)
        await asyncio.wait_for(waiter, 10)
        assert (await mine.statistics()).tasks_waiting == 0
        await subject.give_back(mine)
    finally:
        await mine.close()
        await twin.close()
