"""Random interleavings against the real server: acquire (blocking and cancelled,
non-blocking, with a short timeout), release, cancellation of in-flight
acquires, killed connections and crashed instances.

After every step: the permits the test knows to be held never exceed
``count``, even counting the tokens still sitting in the slots of crashed
instances.  After the run: once everything is released and closed, and the
leases of the crashed instances have run out, exactly ``count`` distinct
permits exist and all are free.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

from helpers import assert_permits, keyspace
from redsync import (
    RedisSemaphore,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
)
from redsync._core.link import Link
from redsync.semaphore._ops import SCRIPTS

TTL = 1.0
#: How long a blocking acquire may wait before wait_for() cancels it.
CANCEL_AFTER = 0.1
SHORT_TIMEOUT = 0.05
MAX_IN_FLIGHT = 2
EXAMPLE_BUDGET = 30.0

Op = tuple[Any, ...]
#: Numbers the examples, so each uses its own semaphore name.
EXAMPLES = itertools.count(1)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, int, list[Op]]:
    """(instances, count, steps)."""
    instances = draw(st.integers(2, 3))
    count = draw(st.integers(1, 3))
    who = st.integers(0, instances - 1)
    acquire = st.tuples(st.just("acquire"), who, st.sampled_from(["cancel", "zero", "short"]))
    release = st.tuples(st.just("release"), who)
    step = st.one_of(
        acquire,
        acquire,
        acquire,
        release,
        release,
        st.tuples(st.just("start"), who),  # an acquire left running across steps
        st.tuples(st.just("cancel"), who),  # cancel the oldest in-flight acquire
        st.tuples(st.just("kill"), who),  # CLIENT KILL every connection of the instance
        st.tuples(st.just("crash"), who),  # stop its watchdog, abandon it, start a new one
        st.tuples(st.just("pause"), st.sampled_from([0.0, 0.02])),
    )
    return instances, count, draw(st.lists(step, min_size=4, max_size=14))


async def stop_renewals(sem: RedisSemaphore, *, close: bool) -> None:
    """``sem.close()`` (or only ``sem._renewal.stop()``); renewals must really stop."""
    task = sem._renewal._task
    if close:
        await sem.close()
    else:
        await sem._renewal.stop()
    # See test_close_stops_renewals_even_if_the_cancellation_is_swallowed.
    assert task is None or task.done(), "the renewal loop survived stop()"


@dataclass(eq=False)
class Node:
    """One process: its own client (named, so its connections can be killed) and instance."""

    client_name: str
    client: aioredis.Redis
    sem: RedisSemaphore
    held: int = 0
    in_flight: list[asyncio.Task[None]] = field(default_factory=list)


class Run:
    def __init__(self, url: str, name: str, count: int) -> None:
        self.url = url
        self.name = name
        self.count = count
        self.observer = aioredis.Redis.from_url(url)
        self.clients: list[aioredis.Redis] = [self.observer]
        self.crashed: list[Node] = []
        self.spawned = itertools.count()
        self.saw_full = False

    async def spawn(self) -> Node:
        client_name = f"{self.name}-p{next(self.spawned)}"
        client = aioredis.Redis.from_url(self.url, client_name=client_name)
        self.clients.append(client)
        sem = await RedisSemaphore.create(client, self.name, count=self.count, lease_ttl=TTL)
        return Node(client_name, client, sem)

    # -- bookkeeping --------------------------------------------------------

    @staticmethod
    def harvest(node: Node) -> None:
        """Count the in-flight acquires that succeeded (synchronously: no await)."""
        for task in [t for t in node.in_flight if t.done()]:
            node.in_flight.remove(task)
            if not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error
                node.held += 1

    async def cancel_in_flight(self, node: Node, task: asyncio.Task[None]) -> None:
        node.in_flight.remove(task)
        task.cancel()
        await asyncio.wait([task], timeout=5)
        assert task.done(), "a cancelled acquire did not finish"
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error
            node.held += 1  # it got its permit before the cancellation arrived

    async def check(self, nodes: list[Node]) -> None:
        for node in nodes:
            self.harvest(node)
        live = sum(node.held for node in nodes)
        if live == self.count:
            self.saw_full = True
        assert live <= self.count, f"{live} permits held by live instances, count {self.count}"
        # Tokens in the slots of crashed instances are still leased: nobody
        # else may hold them.  Read all those slots in one atomic snapshot.
        keys = [slot.key for node in self.crashed for slot in node.sem._slots]
        if keys:
            pipe = self.observer.pipeline(transaction=True)
            for key in keys:
                pipe.lrange(key, 1, -1)
            leftover = sum(len(items) for items in await pipe.execute())
            if leftover:
                event("permits left in the slots of a crashed instance")
            assert live + leftover <= self.count, (
                f"{live} permits held by live instances and {leftover} still in the slots "
                f"of crashed ones, count {self.count}"
            )

    # -- steps --------------------------------------------------------------

    async def step(self, nodes: list[Node], op: Op) -> None:
        kind = op[0]
        if kind == "pause":
            await asyncio.sleep(op[1])  # part of the generated interleaving
            return
        node = nodes[op[1]]
        sem = node.sem
        if kind == "acquire":
            mode = op[2]
            try:
                if mode == "cancel":
                    await asyncio.wait_for(sem.acquire(), CANCEL_AFTER)
                elif mode == "zero":
                    # After a "kill", redis-py 8 may hand out a dead pooled
                    # connection: the try must still answer (see
                    # test_one_shot_calls_survive_a_killed_idle_connection).
                    await sem.acquire(timeout=0)
                else:
                    await sem.acquire(timeout=SHORT_TIMEOUT)
            except (asyncio.TimeoutError, RedisSemaphoreTimeoutError):
                return
            node.held += 1
        elif kind == "release":
            self.harvest(node)  # no await between this and release()'s choice of permit
            if node.held:
                node.held -= 1
                await sem.release()
            else:
                with pytest.raises(RedisSemaphoreNotAcquiredError):
                    await sem.release()
        elif kind == "start":
            if len(node.in_flight) < MAX_IN_FLIGHT:
                node.in_flight.append(asyncio.ensure_future(sem.acquire()))
        elif kind == "cancel":
            self.harvest(node)
            if node.in_flight:
                await self.cancel_in_flight(node, node.in_flight[0])
        elif kind == "join":  # only in explicit examples: wait for the in-flight acquires
            await wait_until(
                lambda: all(t.done() for t in node.in_flight),
                timeout=TTL * 2 + 2,
                message="in-flight acquires finish",
            )
        elif kind == "kill":
            for fields in await self.observer.client_list():
                if fields.get("name") == node.client_name:
                    event("connection killed")
                    try:
                        await self.observer.execute_command("CLIENT", "KILL", "ID", fields["id"])
                    except aioredis.ResponseError:  # it was gone already
                        pass
        elif kind == "crash":
            # A crashed process: nothing is released, nothing renewed any more.
            # Its waiting tasks die with it (cancelled: the instance does not
            # keep blocking lanes for nobody).
            for task in list(node.in_flight):
                await self.cancel_in_flight(node, task)
            await stop_renewals(sem, close=False)
            self.crashed.append(node)
            nodes[op[1]] = await self.spawn()
        else:  # pragma: no cover
            raise AssertionError(op)

    # -- the whole run ------------------------------------------------------

    async def run(self, instances: int, ops: list[Op]) -> None:
        nodes = [await self.spawn() for _ in range(instances)]
        for op in ops:
            await self.step(nodes, op)
            await self.check(nodes)
        # Everybody still alive releases what it holds and closes.
        for node in nodes:
            for task in list(node.in_flight):
                await self.cancel_in_flight(node, task)
            for _ in range(node.held):
                await node.sem.release()
            node.held = 0
            assert node.sem._leases_lost == 0
            await stop_renewals(node.sem, close=True)
        # A newcomer keeps the semaphore alive and reclaims what the crashed
        # instances (and replies lost to killed connections) left behind.
        checker = await self.spawn()

        pool = keyspace(self.name).key("pool")

        async def recovered() -> bool:
            # Every lane (slot) is gone once the crashed and closed instances'
            # leases ran out and their slots were reclaimed or deregistered.
            lanes = [k async for k in self.observer.scan_iter(f"*{self.name}*:slot:*")]
            return not lanes and await self.observer.llen(pool) == self.count

        if self.saw_full:
            event("every permit held at once")
        started = asyncio.get_running_loop().time()
        try:
            await wait_until(recovered, timeout=TTL * 2 + 2, message="all permits back in the pool")
            waited = asyncio.get_running_loop().time() - started
            event(f"recovery took {'more' if waited > 0.5 else 'less'} than 0.5 s")
            await assert_permits(self.observer, self.name, self.count, free=self.count)
        finally:
            await stop_renewals(checker.sem, close=True)

    async def aclose(self) -> None:
        for node in self.crashed:
            await stop_renewals(node.sem, close=True)
        for client in self.clients:
            await client.aclose()


@pytest.mark.timeout(110)
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: each example takes ~1 s
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # a crash while holding every permit; the survivor's waiters get them back
    scenario=(
        2,
        2,
        [
            ("acquire", 0, "zero"),
            ("acquire", 0, "short"),
            ("start", 1),
            ("start", 1),
            ("crash", 0),
            ("kill", 1),
            ("acquire", 0, "cancel"),
            ("join", 1),
            ("release", 1),
            ("acquire", 0, "short"),
            ("release", 1),
        ],
    )
)
@example(  # a killed connection under a blocked lane, then a non-blocking try
    scenario=(3, 1, [("acquire", 2, "zero"), ("start", 0), ("kill", 0), ("acquire", 0, "zero")])
)
@given(scenario=scenarios())
def test_random_interleavings_keep_the_count(
    redis_url: str, unique_name: str, scenario: tuple[int, int, list[Op]]
) -> None:
    instances, count, ops = scenario
    name = f"{unique_name}-{next(EXAMPLES)}"  # every example gets a semaphore of its own
    note(f"semaphore {name}: {instances} instances, count {count}, steps {ops}")

    async def main() -> None:
        run = Run(redis_url, name, count)
        try:
            await asyncio.wait_for(run.run(instances, ops), EXAMPLE_BUDGET)
        finally:
            await run.aclose()

    asyncio.run(main())


# Regression: after the server closes an idle pooled connection (CLIENT KILL
# here; a server `timeout`, a proxy or a failover do the same), redis-py 8.1's
# pool can hand the dead connection out again (its stale-connection check is
# skipped while maintenance notifications are "auto").  These one-shot calls
# must retry like every other call instead of raising ConnectionError.
@pytest.mark.parametrize("call", ["acquire(timeout=0)", "statistics()", "get_count()"])
async def test_one_shot_calls_survive_a_killed_idle_connection(
    redis: aioredis.Redis,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    call: str,
) -> None:
    client_name = f"idle-{unique_name}"
    client = redis_factory(client_name=client_name)
    sem = await RedisSemaphore.create(client, unique_name, count=1)
    try:
        await sem.acquire()
        await sem.release()  # the pool now holds an idle connection
        killed = 0
        for fields in await redis.client_list():
            if fields.get("name") == client_name:
                await redis.execute_command("CLIENT", "KILL", "ID", fields["id"])
                killed += 1
        assert killed >= 1
        idle = list(client.connection_pool._available_connections)  # type: ignore[attr-defined]
        kept = sem._link._kept  # the connections kept between calls
        if kept is not None:
            idle.extend(kept.free)
        assert idle
        # The client has seen the server close every idle connection.
        await wait_until(
            lambda: all(c._reader is None or c._reader.at_eof() for c in idle), timeout=5
        )
        if call == "acquire(timeout=0)":
            await sem.acquire(timeout=0)
            await sem.release()
        elif call == "statistics()":
            assert (await sem.statistics()).available == 1
        else:
            assert await sem.get_count() == 1
    finally:
        await sem.close()
    await assert_permits(redis, unique_name, 1, free=1)


# Regression: close() must stop renewals even when the cancellation of the
# renewal task is swallowed.  On Python <= 3.11, asyncio.wait_for() drops a
# cancellation that arrives in the loop iteration in which the awaited
# operation completes, and redis-py sends every command through wait_for()
# when socket_timeout is set.  A closed instance that kept renewing would hold
# its permits for ever.  Here the cancellation is made to land in that
# iteration deterministically.
async def test_close_stops_renewals_even_if_the_cancellation_is_swallowed(
    redis: aioredis.Redis,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = redis_factory(socket_timeout=5)  # redis-py 8's default, explicit for redis-py 5
    sem = await RedisSemaphore.create(client, unique_name, count=2, lease_ttl=TTL)
    witness = await RedisSemaphore.attach(client, unique_name, lease_ttl=TTL)
    await sem.acquire()  # a slot with a lease the renewals extend
    await witness.acquire()
    closing: list[asyncio.Task[None]] = []
    original = Link.pipeline
    renew_sha = SCRIPTS["renew"].sha

    async def pipeline(self: Link, commands: Any, **kwargs: Any) -> Any:
        result = await original(self, commands, **kwargs)
        if not closing and any(c[0] == "EVALSHA" and c[1] == renew_sha for c in commands):
            # A shared renewal's reply is in: close() now, and swallow its
            # cancellation here, as redis-py's wait_for() can.
            closing.append(asyncio.ensure_future(sem.close()))
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass
        return result

    monkeypatch.setattr(Link, "pipeline", pipeline)
    sem._renewal.kick()
    await wait_until(lambda: bool(closing) and closing[0].done(), timeout=5)
    await closing[0]
    monkeypatch.undo()
    holders = keyspace(unique_name).key("holders")
    member = f"{sem.instance_id}.0"
    # The round in flight may still finish; after it, this lease never moves.
    start = witness._renewal.ticks
    await wait_until(lambda: witness._renewal.ticks >= start + 1, timeout=5)
    frozen = await redis.zscore(holders, member)
    start = witness._renewal.ticks
    await wait_until(lambda: witness._renewal.ticks >= start + 3, timeout=5)
    later = await redis.zscore(holders, member)
    assert later is None or later == frozen, "the closed instance's lease was still renewed"
    assert witness._renewal.running and witness._renewal.failures == 0
    # Its permit is reclaimed by the live instance once the lease runs out.
    await witness.acquire(timeout=5 * TTL)
    assert (await witness.statistics()).held_here == 2
    await witness.release()
    await witness.release()
    await witness.close()
    await assert_permits(redis, unique_name, 2, free=2)
