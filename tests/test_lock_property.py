"""Random interleavings of lock and read-write lock holders against the real server.

Each example starts a few instances of one ``RedisLock`` and one
``RedisReadWriteLock`` and a set of actors that take them concurrently
(blocking, with a short timeout, or cancelled after some turns of the event
loop), hold for some turns and release.  While it runs, every entry is
checked against what the others hold: at most one lock holder, at most one
writer, no reader beside a writer; the fences of lock holders, and those of
writers, rise strictly in the order they got in (holds never overlap, so
that is the hold order).  After the run everything is free in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from helpers import keyspace
from redsync import RedisLock, RedisLockTimeoutError, RedisReadWriteLock

EXAMPLES = itertools.count()

#: (kind, instance, wait: "block" | "short" | cancel after n turns of the loop,
#: ms held, ms before it starts)
Actor = tuple[str, int, "str | int", int, int]

actors = st.tuples(
    st.sampled_from(["lock", "read", "write"]),
    st.integers(0, 2),
    st.one_of(st.sampled_from(["block", "short"]), st.integers(0, 12)),
    st.integers(0, 15),
    st.integers(0, 30),
)


@dataclass
class World:
    lock_holders: int = 0
    readers: int = 0
    writers: int = 0
    lock_fences: list[int] = field(default_factory=list)
    write_fences: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def enter(self, kind: str, fence: int | None) -> None:
        if kind == "lock":
            if self.lock_holders:
                self.violations.append("two lock holders")
            self.lock_holders += 1
            assert fence is not None
            if self.lock_fences and fence <= self.lock_fences[-1]:
                self.violations.append(f"lock fence {fence} after {self.lock_fences[-1]}")
            self.lock_fences.append(fence)
        elif kind == "write":
            if self.writers or self.readers:
                self.violations.append(
                    f"writer beside {self.writers} writer(s), {self.readers} read(s)"
                )
            self.writers += 1
            assert fence is not None
            if self.write_fences and fence <= self.write_fences[-1]:
                self.violations.append(f"writer fence {fence} after {self.write_fences[-1]}")
            self.write_fences.append(fence)
        else:
            if self.writers:
                self.violations.append("a read beside a writer")
            self.readers += 1

    def leave(self, kind: str) -> None:
        if kind == "lock":
            self.lock_holders -= 1
        elif kind == "write":
            self.writers -= 1
        else:
            self.readers -= 1


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _act(world: World, side: Any, kind: str, wait: str | int, held: int, delay: int) -> None:
    await asyncio.sleep(delay / 1000)
    if isinstance(wait, int):
        attempt = asyncio.ensure_future(side.acquire())
        await _turns(wait)
        attempt.cancel()
        await asyncio.wait([attempt])
        if attempt.cancelled() or attempt.exception() is not None:
            return
        fence = attempt.result()
    else:
        try:
            fence = await side.acquire(timeout=None if wait == "block" else 0.05)
        except RedisLockTimeoutError:
            return
    world.enter(kind, fence)
    await asyncio.sleep(held / 1000)
    world.leave(kind)
    await side.release()


@pytest.mark.timeout(120)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: examples talk to a server
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(cast=[("write", 0, "block", 15, 0), ("read", 1, "block", 5, 5)])
@example(
    cast=[
        ("read", 0, "block", 20, 0),
        ("write", 1, "block", 5, 5),
        ("read", 2, "block", 5, 10),
        ("lock", 0, "block", 5, 0),
        ("lock", 1, 3, 5, 0),
        ("lock", 2, "short", 5, 0),
    ]
)
@given(cast=st.lists(actors, min_size=2, max_size=12))
def test_random_interleavings_keep_exclusion_and_fence_order(
    redis_url: str, unique_name: str, cast: list[Actor]
) -> None:
    name = f"{unique_name}-{next(EXAMPLES)}"
    note(f"lock {name}: actors {cast}")

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        locks = [RedisLock(client, name, lease_ttl=5) for _ in range(3)]
        rws = [RedisReadWriteLock(client, name, lease_ttl=5) for _ in range(3)]
        world = World()
        try:
            jobs = []
            for kind, i, wait, held, delay in cast:
                side: Any = (
                    locks[i]
                    if kind == "lock"
                    else (rws[i].reader if kind == "read" else rws[i].writer)
                )
                jobs.append(_act(world, side, kind, wait, held, delay))
            await asyncio.wait_for(asyncio.gather(*jobs), 60)
            assert world.violations == []
            # Everything is free again, in Redis.
            lock_pool = keyspace(name, "redsync:lock").key("pool")
            gate_pool = keyspace(name, "redsync:rwlock").key("pool")
            readers = keyspace(name, "redsync:rwlock").key("readers")

            async def free() -> bool:
                tokens = [await client.llen(lock_pool), await client.llen(gate_pool)]
                created = [lk._sem is not None for lk in locks], [rw._gate._sem for rw in rws]
                want = [1 if any(created[0]) else 0, 1 if any(created[1]) else 0]
                return tokens == want and await client.zcard(readers) == 0

            await wait_until(free, 10)
        finally:
            for lk in locks:
                await lk.close()
            for rw in rws:
                await rw.close()
            await client.aclose()

    asyncio.run(main())
