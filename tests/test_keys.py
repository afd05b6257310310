"""Key naming: one cluster hash slot per primitive, whatever the name; no two names collide.

The keys are read back from Redis (SCAN for the test's unique name), so these
tests check what is really written, not what the key helper says it writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from redsync import (
    RedisEvent,
    RedisEventTimeoutError,
    RedisSemaphore,
    RedisSemaphoreTimeoutError,
    SemaphoreInitStrategy,
)

#: Suffixes that make awkward names around the test's unique (brace-free) name.
AWKWARD: dict[str, Callable[[str], str]] = {
    "open-brace": lambda u: f"{u}{{",
    "close-brace": lambda u: f"{u}}}",
    "empty-tag": lambda u: f"{u}{{}}",
    "whole-tag": lambda u: f"{{{u}}}",
    "reversed-braces": lambda u: f"}}{u}{{",
    "inner-tag": lambda u: f"a{{b}}{u}",
    "colons": lambda u: f"{u}:a::b:",
    "spaces": lambda u: f"{u} with  spaces ",
    "unicode": lambda u: f"名前 {{x}}:y}} {u}",
    "percent": lambda u: f"{u}%",
    "encoded-brace": lambda u: f"{u}%7B",
    "newline": lambda u: f"{u}\nline",
}


async def keys_of(client: aioredis.Redis, unique_name: str) -> list[bytes]:
    return sorted([k async for k in client.scan_iter(match=f"*{unique_name}*", count=1000)])


def slots(keys: list[bytes]) -> set[int]:
    return {key_slot(k) for k in keys}


# --------------------------------------------------------------------------- one slot


@pytest.mark.parametrize("make_name", list(AWKWARD.values()), ids=list(AWKWARD))
@pytest.mark.parametrize("strategy", list(SemaphoreInitStrategy), ids=lambda s: s.value)
async def test_semaphore_keys_share_one_slot(
    make_name: Callable[[str], str],
    strategy: SemaphoreInitStrategy,
    redis: aioredis.Redis,
    unique_name: str,
) -> None:
    name = make_name(unique_name)
    first = await RedisSemaphore.create(
        redis, name, count=3, semaphore_init_strategy=strategy, lease_ttl=30
    )
    second = await RedisSemaphore.attach(redis, name, timeout=5, lease_ttl=30)
    try:
        await first.acquire(timeout=5)
        await second.acquire(timeout=5)
        keys = await keys_of(redis, unique_name)
        parts = {k.rsplit(b":", 1)[-1] for k in keys}
        # meta, pool (one permit left), holders, and a lane per holding instance
        assert len(keys) >= 5, keys
        assert {b"meta", b"pool", b"holders"} <= parts, keys
        assert len(slots(keys)) == 1, {k: key_slot(k) for k in keys}
        await first.release()
        await second.release()
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("make_name", list(AWKWARD.values()), ids=list(AWKWARD))
async def test_event_keys_share_one_slot(
    make_name: Callable[[str], str], redis: aioredis.Redis, unique_name: str
) -> None:
    name = make_name(unique_name)
    setter = RedisEvent(redis, name)
    waiter = RedisEvent(redis, name)
    await setter.set()
    await setter.set()
    await asyncio.wait_for(waiter.wait(timeout=5), 10)
    keys = await keys_of(redis, unique_name)
    # the pending signals, a waiter's hand-off list, and the push records
    assert len(keys) >= 3, keys
    assert len(slots(keys)) == 1, {k: key_slot(k) for k in keys}
    await waiter.close()


PREFIXES = {
    "braced": "my{app}",
    "open-brace": "pre{",
    "close-brace": "pre}",
    "reversed": "}pre{",
    "colon-space": "a b:c",
    # Regression (fixed; was in src/redsync/_keys.py):
    # a prefix with an empty tag "{}" makes Redis
    # Cluster hash every whole key separately (the first "{" is closed at once,
    # so there is no tag), so the keys of one semaphore land in different slots
    # and every multi-key script fails with CROSSSLOT.  _keys.py promises that
    # "whatever the prefix contains ... all keys of one primitive still hash
    # alike".  Fails until the prefix is escaped or such prefixes are rejected.
    "empty-tag": "{}",
    "empty-tag-inside": "app{}x",
}


@pytest.mark.parametrize("prefix", list(PREFIXES.values()), ids=list(PREFIXES))
async def test_keys_share_one_slot_whatever_the_prefix(
    prefix: str, redis: aioredis.Redis, unique_name: str
) -> None:
    sem = None
    try:
        sem = await RedisSemaphore.create(
            redis, unique_name, count=2, lease_ttl=30, key_prefix=prefix
        )
        await sem.acquire(timeout=5)
        event = RedisEvent(redis, unique_name, key_prefix=prefix + "-ev")
        await event.set()
        await event.set()
        await event.wait(timeout=5)
    except ValueError as exc:
        # Refusing such a prefix up front is a fine fix too - if it says why.
        assert "key_prefix" in str(exc)
        return
    finally:
        if sem is not None:
            await sem.close()
    keys = await keys_of(redis, unique_name)
    sem_keys = [k for k in keys if not k.startswith((prefix + "-ev").encode())]
    event_keys = [k for k in keys if k.startswith((prefix + "-ev").encode())]
    assert len(sem_keys) >= 4 and len(event_keys) >= 3, keys
    assert all(k.startswith(prefix.encode()) for k in keys)
    assert len(slots(sem_keys)) == 1, {k: key_slot(k) for k in sem_keys}
    assert len(slots(event_keys)) == 1, {k: key_slot(k) for k in event_keys}


# --------------------------------------------------------------------------- no collisions


COLLIDING_LOOKS = [
    ("a{b", "a%7Bb"),
    ("a}b", "a%7Db"),
    ("a%b", "a%25b"),
    ("a%7Bb", "a%257Bb"),
    ("{a}", "%7Ba%7D"),
    ("a{b}c", "a%7Bb%7Dc"),
    ("a", "a:"),
    ("a:b", "a}:b"),
]


@pytest.mark.parametrize(
    ("left", "right"), COLLIDING_LOOKS, ids=[f"{a}|{b}" for a, b in COLLIDING_LOOKS]
)
async def test_different_names_never_share_keys(
    left: str, right: str, redis: aioredis.Redis, unique_name: str
) -> None:
    name_a = f"{unique_name}-{left}"
    name_b = f"{unique_name}-{right}"
    # Different counts: were the keys shared, the second create() would see a mismatch.
    a = await RedisSemaphore.create(redis, name_a, count=1, lease_ttl=30)
    keys_a = set(await keys_of(redis, unique_name))
    b = await RedisSemaphore.create(redis, name_b, count=2, lease_ttl=30)
    try:
        keys_b = set(await keys_of(redis, unique_name)) - keys_a
        assert keys_b, "the second semaphore wrote keys of its own"
        assert await a.get_count() == 1
        assert await b.get_count() == 2
        await a.acquire(timeout=0)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await a.acquire(timeout=0)
        # b's permits are untouched by a's
        await b.acquire(timeout=0)
        await b.acquire(timeout=0)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await b.acquire(timeout=0)
        for sem in (a, b):
            await sem.release()
        await b.release()
    finally:
        await a.close()
        await b.close()
    before = set(await keys_of(redis, unique_name))
    ev_a = RedisEvent(redis, name_a)
    ev_b = RedisEvent(redis, name_b)
    await ev_a.set()
    assert await ev_a.is_set()
    assert not await ev_b.is_set()
    with pytest.raises(RedisEventTimeoutError):
        await ev_b.wait(0)
    await ev_a.wait(0)
    new_keys = set(await keys_of(redis, unique_name)) - before
    assert new_keys


async def test_semaphore_and_event_of_one_name_are_separate(
    redis: aioredis.Redis, unique_name: str
) -> None:
    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=30)
    try:
        event = RedisEvent(redis, unique_name)
        await event.set()
        await sem.acquire(timeout=0)
        assert await event.is_set()
        await event.wait(0)
        await sem.release()
        assert await sem.get_count() == 1
    finally:
        await sem.close()


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("make_name", list(AWKWARD.values()), ids=list(AWKWARD))
async def test_awkward_names_work_end_to_end(
    make_name: Callable[[str], str],
    redis: aioredis.Redis,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    name = make_name(unique_name)
    one = await RedisSemaphore.create(redis, name, count=1, lease_ttl=30)
    other = await RedisSemaphore.attach(redis_factory(), name, timeout=5, lease_ttl=30)
    try:
        assert one.name == name and other.name == name
        assert await other.get_count() == 1
        await one.acquire(timeout=5)
        waiting = asyncio.ensure_future(other.acquire(timeout=10))
        with pytest.raises(RedisSemaphoreTimeoutError):
            await one.acquire(timeout=0)
        assert not waiting.done()
        await one.release()
        await asyncio.wait_for(waiting, 15)
        with pytest.raises(RedisSemaphoreTimeoutError):
            await one.acquire(timeout=0)
        await other.release()
        async with one:
            pass
    finally:
        await one.close()
        await other.close()

    setter = RedisEvent(redis, name)
    waiter = RedisEvent(redis_factory(), name)
    assert waiter.name == name
    task = asyncio.ensure_future(waiter.wait(timeout=10))
    await setter.set()
    await asyncio.wait_for(task, 15)
    assert not await setter.is_set()
    await setter.set()
    assert await waiter.is_set()
    await waiter.clear()
    assert not await setter.is_set()
    await waiter.close()
