"""Performance guardrails: how many commands the semaphore sends, counted by the server.

Every test runs against a private redis-server and reads ``INFO commandstats``
(through redis-cli, whose own INFO / CONFIG RESETSTAT / CLIENT LIST calls are
left out).  commandstats also counts the commands a Lua script calls; those
are split off (see :func:`split`), so "sent" means sent over the wire.
Counts are taken in steady state only: a warm-up first opens the connections
(redis-py 8 sends HELLO and CLIENT SETINFO on each new one), fetches the
lanes' client ids, registers the slots and loads the scripts.

The measured numbers are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.servers import RedisServer

from helpers import assert_permits, clients_named, keyspace, tokens
from redsync import RedisEvent, RedisSemaphore, SemaphoreInitStrategy
from redsync._core.link import MAX_KEPT

#: Commands that redis-cli sends for the test itself (reading and resetting the stats).
OBSERVER_COMMANDS = frozenset({"info", "config|resetstat", "client|list"})


def _script_only_commands() -> frozenset[str]:
    """Commands the semaphore's Lua scripts (and the shared fragments they include)
    call but a LUA-strategy client never sends itself.

    ``INFO commandstats`` also counts the commands a script calls, so these are
    subtracted to get what went over the wire.  HMGET, TIME, LLEN, ZRANGE and
    LMOVE are also sent directly (attach, statistics, refill, acquire), so they are never
    subtracted: if a script calls them they are over-counted, not hidden.
    """
    called: set[str] = set()
    folders = [resources.files(p).joinpath("lua") for p in ("redsync.semaphore", "redsync._core")]
    for script in (script for folder in folders for script in folder.iterdir()):
        if script.name.endswith(".lua"):
            text = script.read_text("utf-8")
            called.update(m.lower() for m in re.findall(r"redis\.p?call\('(\w+)'", text))
    return frozenset(called - {"hmget", "time", "llen", "zrange", "lmove"})


SCRIPT_ONLY = _script_only_commands()
#: What one successful run of semaphore_release.lua calls.
RELEASE_SCRIPT_CALLS = ("hget", "lrem", "zpopmin", "rpush", "pexpire")


def server_commands(server: RedisServer) -> dict[str, int]:
    """``{command: calls}`` since the last reset, without the observer's own commands.

    Commands called inside scripts are included (see :func:`split`).
    """
    return {
        name: calls
        for name, calls in server.commandstats().items()
        if name not in OBSERVER_COMMANDS and calls
    }


def split(stats: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """(commands clients sent, commands scripts called) of a LUA-strategy workload."""
    sent = {k: v for k, v in stats.items() if k not in SCRIPT_ONLY}
    inner = {k: v for k, v in stats.items() if k in SCRIPT_ONLY}
    return sent, inner


class RoundTrips:
    """Counts the batches one semaphore sends (each batch is one round trip)."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def counting_round_trips(sem: RedisSemaphore) -> Iterator[RoundTrips]:
    """Wrap ``Link.run`` of ``sem`` (every command of the library goes through it)."""
    link = sem._link
    original = link.run
    trips = RoundTrips()

    async def run(*args: Any, **kwargs: Any) -> Any:
        trips.count += 1
        return await original(*args, **kwargs)

    link.run = run  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        del link.run  # back to the class attribute


async def cycles(sem: RedisSemaphore, n: int) -> None:
    for _ in range(n):
        await sem.acquire()
        await sem.release()


async def uncontended(
    server: RedisServer,
    make_client: Callable[..., aioredis.Redis],
    name: str,
    strategy: SemaphoreInitStrategy,
    n: int,
) -> tuple[dict[str, int], int]:
    """Server-side command counts and client round trips of ``n`` acquire+release cycles."""
    sem = await RedisSemaphore.create(
        make_client(server.url), name, count=1, semaphore_init_strategy=strategy
    )
    await asyncio.wait_for(cycles(sem, 3), 10)  # warm-up: connection, client id, slot, script
    server.reset_stats()
    with counting_round_trips(sem) as trips:
        await asyncio.wait_for(cycles(sem, n), 30)
    stats = server_commands(server)
    await sem.close()
    await assert_permits(make_client(server.url), name, 1, free=1)
    return stats, trips.count


async def test_uncontended_cycle_sends_exactly_two_commands(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    n = 100
    stats, trips = await uncontended(
        private_server, redis_factory, unique_name, SemaphoreInitStrategy.LUA, n
    )
    sent, inner = split(stats)
    print(
        f"\nLUA uncontended: sent {sent} -> {sum(sent.values()) / n} commands/cycle, "
        f"{trips / n} round trips/cycle (called by the script: {inner})"
    )
    assert sent == {"lmove": n, "evalsha": n}
    assert sum(sent.values()) / n == 2
    assert trips / n == 2
    # What the server ran inside those scripts is one successful release each.
    assert inner == dict.fromkeys(RELEASE_SCRIPT_CALLS, n)


async def test_uncontended_cycle_with_optimistic_locking_is_a_small_constant(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    n = 100
    sent, trips = await uncontended(
        private_server, redis_factory, unique_name, SemaphoreInitStrategy.OPTIMISTIC_LOCKING, n
    )
    per_cycle = sum(sent.values()) / n
    print(
        f"\nOPTIMISTIC_LOCKING uncontended: sent {sent} -> {per_cycle} commands/cycle, "
        f"{trips / n} round trips/cycle"
    )
    # No script runs, so every counted command was sent by the client.
    assert not any(c.startswith(("eval", "fcall", "script", "function")) for c in sent), sent
    # Each command is sent a fixed number of times per cycle: no retries, and
    # nothing that grows with the number of cycles.
    assert all(calls % n == 0 for calls in sent.values()), sent
    assert sent["blmove"] == n
    # Measured: 9 commands in 4 round trips (BLMOVE: a semaphore without
    # scripts waits on lanes; WATCH; HGET+LPOS; MULTI+LREM+RPUSH+PEXPIRE+EXEC),
    # against 2 and 2 with Lua.
    assert trips / n <= 4
    assert per_cycle <= 10, sent


async def test_contended_acquisitions_cost_about_two_commands(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    instances, tasks_each, n = 4, 2, 50
    sems = [
        await RedisSemaphore.create(redis_factory(private_server.url), unique_name, count=1)
        for _ in range(instances)
    ]
    inside = peak = acquired = 0

    async def worker(sem: RedisSemaphore, rounds: int) -> None:
        nonlocal inside, peak, acquired
        for _ in range(rounds):
            await sem.acquire()
            inside += 1
            peak = max(peak, inside)
            acquired += 1
            await asyncio.sleep(0)  # let the other tasks queue up behind this one
            inside -= 1
            await sem.release()

    async def run(rounds: int) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(worker(s, rounds) for s in sems for _ in range(tasks_each))), 60
        )

    await run(5)  # warm-up: every client opens its connections under the same contention
    private_server.reset_stats()
    acquired = 0
    with contextlib.ExitStack() as stack:
        counters = [stack.enter_context(counting_round_trips(sem)) for sem in sems]
        await run(n)
    sent, inner = split(server_commands(private_server))
    # Every batch the library sends is one round trip of one command here.
    total = sum(c.count for c in counters)
    print(
        f"\ncontended: {total}/{acquired} = {total / acquired:.3f} round trips/acquisition; "
        f"server saw {sent} (called by scripts: {inner})"
    )
    assert acquired == instances * tasks_each * n
    assert peak == 1
    # Waiters queue in Redis (enqueue.lua) and are handed permits by the
    # releases: nobody blocks on a connection.
    assert "blmove" not in sent, sent
    assert total / acquired <= 2.1, sent
    for sem in sems:
        await sem.close()
    await assert_permits(redis_factory(private_server.url), unique_name, 1, free=1)


def other_clients(server: RedisServer) -> list[dict[str, str]]:
    """Every connection except the redis-cli connection that lists them."""
    found = []
    for line in server.cli("CLIENT", "LIST").splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields and fields.get("cmd") != "client|list":
            found.append(fields)
    return found


def blocked_clients(server: RedisServer) -> int:
    info = server.cli("INFO", "clients")
    return int(re.search(r"blocked_clients:(\d+)", info).group(1))  # type: ignore[union-attr]


async def test_a_thousand_waiters_are_silent_and_use_few_connections(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    count, waiters, window = 2, 1000, 2.0
    waiter_name, holder_name = f"waiter-{unique_name}", f"holder-{unique_name}"
    holder = await RedisSemaphore.create(
        redis_factory(private_server.url, client_name=holder_name),
        unique_name,
        count=count,
    )
    waiter_client = redis_factory(private_server.url, client_name=waiter_name)
    sem = await RedisSemaphore.attach(waiter_client, unique_name)
    # Warm-up: both slots of the waiting instance registered, the script loaded.
    await sem.acquire()
    await sem.acquire()
    await sem.release()
    await sem.release()
    for _ in range(count):
        await holder.acquire()
    passed = 0

    async def waiter() -> None:
        nonlocal passed
        await sem.acquire()
        passed += 1
        await sem.release()

    tasks = [asyncio.ensure_future(waiter()) for _ in range(waiters)]
    try:
        await wait_until(lambda: sem._waiting == waiters, timeout=10)
        queue = keyspace(unique_name).key("waiters")
        observer = redis_factory(private_server.url, client_name=holder_name)

        async def queued() -> bool:
            return int(await observer.zcard(queue)) == waiters

        await wait_until(queued, timeout=20)
        private_server.reset_stats()
        await asyncio.sleep(window)  # a fixed measurement window: nothing may be sent in it
        sent = server_commands(private_server)
        mine = clients_named(private_server, waiter_name)
        everyone = other_clients(private_server)
        pool = waiter_client.connection_pool
        in_use = len(pool._in_use_connections)  # type: ignore[attr-defined]
        opened = in_use + len(pool._available_connections)  # type: ignore[attr-defined]
        print(
            f"\n{waiters} waiters, {window} s: commands {sent}; waiting client: "
            f"{len(mine)} server connections, pool {in_use} in use / {opened} open; "
            f"all clients but the observer: {len(everyone)}"
        )
        assert sent == {}
        assert len(mine) <= 8, mine
        assert {c.get("name") for c in everyone} <= {waiter_name, holder_name}, everyone
        assert in_use <= 8
        assert opened <= 8
        assert blocked_clients(private_server) == 0
        assert not any(t.done() for t in tasks)
        private_server.reset_stats()
        for _ in range(count):
            await holder.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        drained, _ = split(server_commands(private_server))
        pool_size = len(pool._in_use_connections) + len(pool._available_connections)  # type: ignore[attr-defined]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert passed == waiters
    # Draining the queue costs about two commands per acquisition as well
    # (the holder's releases and the last lane's wake-up included).
    print(f"draining {waiters} waiters: sent {drained}; pool size afterwards {pool_size}")
    assert sum(drained.values()) / waiters <= 2.1, drained
    # Releasing while the lanes block takes connections of its own (at most
    # one per permit, plus one for a renewal): a constant, whatever the
    # number of waiters.
    assert pool_size <= 8
    observer = redis_factory(private_server.url)

    async def settled() -> bool:
        return len((await tokens(observer, unique_name))["pool"]) == count

    await wait_until(settled, timeout=10)
    await sem.close()
    await holder.close()
    await assert_permits(observer, unique_name, count, free=count)


def test_the_observers_own_commands_are_not_counted(private_server: RedisServer) -> None:
    private_server.reset_stats()
    private_server.commandstats()
    assert server_commands(private_server) == {}


@pytest.mark.parametrize(
    ("strategy", "count"),
    [(SemaphoreInitStrategy.LUA, 2048), (SemaphoreInitStrategy.OPTIMISTIC_LOCKING, 1024)],
    ids=lambda v: getattr(v, "value", v),
)
async def test_many_permits_in_one_instance_cost_the_same_per_permit(
    private_server: RedisServer,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    strategy: SemaphoreInitStrategy,
    count: int,
) -> None:
    """One instance takes every permit of a large semaphore: the work the server does
    for the last quarter (commands sent plus commands scripts call) is no more than
    for the first.  (Registering each new slot used to renew every slot held so far,
    which made taking n permits cost O(n^2).)"""
    sem = await RedisSemaphore.create(
        redis_factory(private_server.url), unique_name, count=count,
        semaphore_init_strategy=strategy,
    )  # fmt: skip
    quarter = count // 4
    work: list[int] = []
    try:
        for _ in range(4):
            private_server.reset_stats()
            for _ in range(quarter):
                await asyncio.wait_for(sem.acquire(), 10)
            work.append(sum(server_commands(private_server).values()))
        print(f"\n{strategy.value}: server commands per quarter of {count} permits: {work}")
        assert (await sem.statistics()).held_here == count
        assert work[3] <= 1.5 * work[0] + 50, work
        # A constant per permit: one move, plus one registration of its new slot.
        per_permit = 18 if strategy is SemaphoreInitStrategy.LUA else 24
        assert max(work) <= per_permit * quarter, work
        for _ in range(count):
            await sem.release()
        await assert_permits(redis_factory(private_server.url), unique_name, count, free=count)
    finally:
        await sem.close()


async def test_many_idle_instances_share_a_few_kept_connections(
    private_server: RedisServer, unique_name: str
) -> None:
    """Each instance used to keep a connection of its own between operations, so the
    101st instance on a default client (a pool of 100 on redis-py 8) failed with
    MaxConnectionsError.  Kept connections are shared per pool now."""
    client = aioredis.Redis.from_url(private_server.url, max_connections=20)
    sems: list[RedisSemaphore] = []
    events: list[RedisEvent] = []
    try:
        for i in range(60):
            for strategy in (SemaphoreInitStrategy.LUA, SemaphoreInitStrategy.OPTIMISTIC_LOCKING):
                sem = await RedisSemaphore.create(
                    client, f"{unique_name}-{i}", count=2, semaphore_init_strategy=strategy
                )
                sems.append(sem)
                await sem.acquire(timeout=5)
                await sem.release()
            event = RedisEvent(client, f"{unique_name}-{i}")
            events.append(event)
            await event.set()
            await event.wait(timeout=5)
        pool = client.connection_pool
        in_use = len(pool._in_use_connections)  # type: ignore[attr-defined]
        assert in_use <= MAX_KEPT, f"{in_use} connections kept by {len(sems)} idle instances"
        for sem in sems[:4]:
            assert (await sem.statistics()).available == 2
    finally:
        for sem in sems:
            await sem.close()
        for event in events:
            await event.close()
    # The last instance to close gives the kept connections back.
    assert len(client.connection_pool._in_use_connections) == 0  # type: ignore[attr-defined]
    await client.aclose()


async def test_a_thousand_idle_semaphores_renew_in_few_commands_and_one_task(
    private_server: RedisServer, unique_name: str
) -> None:
    """One renewal task per event loop batches every instance's renewal into one
    round trip; an idle instance (no slot) only keeps the shared keys alive with
    three plain commands per half lease, sent once for every idle instance of
    one semaphore.  Target: 1,000 idle semaphores at lease_ttl 3 s cost at most
    3,000 server commands/s (script calls included) and at most 4 connections."""
    n, ttl, window = 1000, 3.0, 4.5
    client = aioredis.Redis.from_url(private_server.url)  # a default pool
    tasks_before = len(asyncio.all_tasks())
    sems: list[RedisSemaphore] = []
    try:
        for i in range(n):
            sems.append(await RedisSemaphore.create(client, f"{unique_name}-{i}", lease_ttl=ttl))
        # A fifth were used once: their slots are dropped after two quiet renewals.
        for sem in sems[::5]:
            async with sem:
                pass
        await wait_until(lambda: not any(sem._slots for sem in sems), timeout=15)
        # The renewer's loop, and at most the round trips of one round.
        tasks = [t for t in asyncio.all_tasks() if "Renewer._" not in repr(t.get_coro())]
        assert len(tasks) == tasks_before, f"tasks besides the renewer: {tasks}"
        assert sum("Renewer._loop" in repr(t.get_coro()) for t in asyncio.all_tasks()) == 1
        renewer = sems[0]._renewal.renewer
        rounds = renewer.rounds
        await wait_until(lambda: renewer.rounds >= rounds + 2, timeout=10)  # steady state
        private_server.cli("CONFIG", "RESETSTAT")
        await asyncio.sleep(window)  # a measuring window, not a wait for a condition
        stats = server_commands(private_server)
        total = sum(stats.values())
        per_second = total / window
        print(f"\n{n} idle semaphores: {per_second:.0f} commands/s {stats}")
        assert per_second <= 3000, stats
        # One round (one TIME) per period: the renewals were batched.
        assert stats.get("time", 0) <= window / (0.8 * ttl / 2) + 1, stats
        connections = other_clients(private_server)
        assert len(connections) <= MAX_KEPT, connections
        assert all(sem._renewal.failures == 0 for sem in sems)
        # The shared keys stayed alive, and an idle semaphore works at once.
        ttls = [
            await client.pttl(f"redsync:semaphore:{{{unique_name}-{i}}}:meta") for i in range(n)
        ]
        assert min(ttls) > 0, "a semaphore's keys expired while its instance was idle"
        sem = sems[-1]
        await sem.acquire(timeout=0)
        assert (await sem.statistics()).available == 0
        await sem.release()
    finally:
        for sem in sems:
            await sem.close()
        await client.aclose()


async def test_the_hot_path_packs_each_command_once(
    redis: aioredis.Redis, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packing commands was a good part of the client CPU of an acquisition; the
    same LMOVE and release go out again and again, so their bytes are reused."""
    from redis.asyncio.connection import AbstractConnection

    sem = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=60)
    await cycles(sem, 5)  # warm: slots registered, scripts loaded
    packed: list[int] = []
    original = AbstractConnection.pack_commands

    def counting(self: AbstractConnection, commands: Any) -> Any:
        packed.append(len(commands))
        return original(self, commands)

    monkeypatch.setattr(AbstractConnection, "pack_commands", counting)
    try:
        await cycles(sem, 200)
    finally:
        monkeypatch.undo()
        await sem.close()
    assert len(packed) <= 10, f"{len(packed)} packings for 200 acquire + release cycles"
    await assert_permits(redis, unique_name, 1, free=1)
