"""Waiting in the semaphore's waiter queue: constant connections, and what a
lost notice, a killed listener, a killed waiter or missing channel rights do.

A waiting acquisition queues a ticket in Redis; a release hands the permit
straight into the head ticket's name (``handed``) and publishes a notice on
the semaphore's channel, which one connection per process and node listens
to.  The notice is only a shortcut: each test here takes it away in one way
and checks that the permit still arrives, exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.servers import RedisServer

from helpers import assert_permits, clients_named, keyspace, replica_linked
from redsync import RedisEvent, RedisSemaphore
from redsync._core.keys import KeySpace
from redsync.semaphore._slot import Phase

HOLDER = str(Path(__file__).parent / "workers" / "holder.py")


async def queued(client: aioredis.Redis, name: str) -> int:
    return int(await client.zcard(keyspace(name).key("waiters")))


async def drain(holders: list[RedisSemaphore], tasks: list[asyncio.Future[None]]) -> float:
    started = time.perf_counter()
    for holder in holders:
        await holder.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return time.perf_counter() - started


async def test_a_thousand_waiting_instances_use_at_most_eight_connections(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """One holder and 1,000 waiter instances of one semaphore on one default client
    (a pool of 100 on redis-py 8; each instance used to block a connection)."""
    name = f"waiters-{unique_name}"
    client = redis_factory(private_server.url, client_name=name)
    observer = redis_factory(private_server.url)
    holder = await RedisSemaphore.create(client, unique_name, count=1)
    waiters = [await RedisSemaphore.attach(client, unique_name) for _ in range(1000)]
    await holder.acquire()
    inside = peak = passed = 0

    async def wait(sem: RedisSemaphore) -> None:
        nonlocal inside, peak, passed
        async with sem:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1
            passed += 1

    tasks = [asyncio.ensure_future(wait(sem)) for sem in waiters]
    try:
        await wait_until(lambda: queued(observer, unique_name), timeout=30)
        await wait_until(lambda: sum(s._waiting for s in waiters) == 1000, timeout=30)

        async def all_queued() -> bool:
            return await queued(observer, unique_name) == 1000

        await wait_until(all_queued, timeout=60)
        conns = clients_named(private_server, name)
        print(f"\n1 holder + 1,000 waiting instances: {len(conns)} connections")
        assert len(conns) <= 8, conns
        assert not any(c.get("cmd", "").startswith("bl") for c in conns), conns
        took = await drain([holder], tasks)
        print(f"drained 1,000 waiters in {took:.2f} s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert passed == 1000 and peak == 1
    assert len(clients_named(private_server, name)) <= 8
    for sem in [holder, *waiters]:
        await sem.close()
    await assert_permits(observer, unique_name, 1, free=1)


async def test_five_hundred_semaphores_with_four_waiters_each_use_at_most_sixteen(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """500 semaphores, each with 1 holder and 4 waiter instances (2,500 instances):
    waiting on 500 keys cannot be multiplexed by blocking reads, but the queue can."""
    name = f"many-{unique_name}"
    client = redis_factory(private_server.url, client_name=name)
    observer = redis_factory(private_server.url)
    names = [f"{unique_name}-{i}" for i in range(500)]
    holders = [await RedisSemaphore.create(client, n, count=1) for n in names]
    waiters = [await RedisSemaphore.attach(client, n) for n in names for _ in range(4)]
    for holder in holders:
        await holder.acquire()
    passed = 0

    async def wait(sem: RedisSemaphore) -> None:
        nonlocal passed
        async with sem:
            passed += 1

    tasks = [asyncio.ensure_future(wait(sem)) for sem in waiters]
    try:

        async def all_queued() -> bool:
            total = 0
            for n in names[::50]:
                total += await queued(observer, n)
            return total == 40

        await wait_until(lambda: sum(s._waiting for s in waiters) == 2000, timeout=60)
        await wait_until(all_queued, timeout=60)
        conns = clients_named(private_server, name)
        print(f"\n500 semaphores x (1 holder + 4 waiters): {len(conns)} connections")
        assert len(conns) <= 16, conns
        took = await drain(holders, tasks)
        print(f"drained 2,000 waiters on 500 semaphores in {took:.2f} s")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert passed == 2000
    for sem in [*holders, *waiters]:
        await sem.close()
    for n in names[::100]:
        await assert_permits(observer, n, 1, free=1)


async def test_a_lost_notice_costs_latency_not_the_permit(
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every notice is dropped: the waiter's renewal finds the handed permit."""
    ttl = 1.5
    holder = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=ttl)
    waiter = await RedisSemaphore.attach(redis_factory(), unique_name, lease_ttl=ttl)
    monkeypatch.setattr(waiter, "_pushed", lambda data: None)
    await holder.acquire()
    task = asyncio.ensure_future(waiter.acquire())
    await wait_until(lambda: queued(redis, unique_name), timeout=5)
    await holder.release()
    handed = await redis.hgetall(keyspace(unique_name).key("handed"))
    assert list(handed.values()) != [], "the release handed the permit to the queued waiter"
    started = time.perf_counter()
    await asyncio.wait_for(task, ttl)  # a renewal period is ttl/3 (at most 1.1 of it)
    print(f"\nfound by the renewal after {time.perf_counter() - started:.2f} s")
    await assert_permits(redis, unique_name, 1, free=0)
    assert (await waiter.statistics()).held_here == 1
    await waiter.release()
    await assert_permits(redis, unique_name, 1, free=1)
    await holder.close()
    await waiter.close()


async def test_a_late_notice_of_an_earlier_wait_is_ignored(
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A notice held back until its wait was served by a renewal, released, and the
    same slot waits again: it names the earlier ticket, so the new wait ignores it
    instead of taking a permit it does not hold."""
    ttl = 1.5
    holder = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=ttl)
    waiter = await RedisSemaphore.attach(redis_factory(), unique_name, lease_ttl=ttl)
    deliver = waiter._pushed
    held_back: list[str] = []
    monkeypatch.setattr(waiter, "_pushed", held_back.append)
    await holder.acquire()
    first = asyncio.ensure_future(waiter.acquire())
    await wait_until(lambda: queued(redis, unique_name), timeout=5)
    await holder.release()
    await asyncio.wait_for(first, ttl)  # delivered by a renewal
    assert len(held_back) == 1, held_back
    member, token, number = held_back[0].split(" ")
    assert token
    assert member.startswith(waiter.instance_id)
    await waiter.release()  # back to the pool: nobody waits
    await holder.acquire(timeout=5)  # the same token, now the holder's
    second = asyncio.ensure_future(waiter.acquire())
    await wait_until(lambda: queued(redis, unique_name), timeout=5)
    slot = waiter._by_member[member]
    assert slot.phase is Phase.WAITING, "the second wait reuses the first wait's slot"
    assert slot.number is not None and slot.number != number
    deliver(held_back[0])  # the late notice arrives now
    await asyncio.sleep(0)
    assert not second.done(), "a late notice of an earlier wait was taken"
    assert (await waiter.statistics()).held_here == 0
    assert await redis.hget(keyspace(unique_name).key("handed"), member) is None
    await assert_permits(redis, unique_name, 1, free=0)
    await holder.release()
    await asyncio.wait_for(second, ttl)
    await assert_permits(redis, unique_name, 1, free=0)
    await waiter.release()
    await assert_permits(redis, unique_name, 1, free=1)
    await holder.close()
    await waiter.close()


async def test_a_killed_listener_connection_loses_no_hand_off(
    redis_factory: Callable[..., aioredis.Redis],
    redis: aioredis.Redis,
    unique_name: str,
) -> None:
    """The listening connection is killed just before the release: the notice is
    published to nobody, and the re-subscription looks for what was handed."""
    from redsync._core import push

    name = f"listener-{unique_name}"
    holder = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=60)
    waiter_client = redis_factory(client_name=name, socket_timeout=7)
    waiter = await RedisSemaphore.attach(waiter_client, unique_name, lease_ttl=60)
    await holder.acquire()
    for _ in range(3):
        task = asyncio.ensure_future(waiter.acquire())
        await wait_until(lambda: queued(redis, unique_name), timeout=5)
        listening = [
            c
            for c in await redis.client_list()
            if c.get("name") == name and int(c.get("ssub", 0) or 0) > 0
        ]
        assert len(listening) == 1, listening
        await redis.client_kill_filter(_id=listening[0]["id"])
        await holder.release()
        # Renewals run every 20 s here: only the re-subscription can be this quick.
        await asyncio.wait_for(task, 5)
        await assert_permits(redis, unique_name, 1, free=0)
        await waiter.release()
        await holder.acquire(timeout=5)
    await holder.release()
    await assert_permits(redis, unique_name, 1, free=1)
    # The listener reads without a timeout; its connections go back to the
    # pool with the client's own, for the commands that borrow them next.
    await wait_until(lambda: not push._CLOSING, timeout=5)
    pool = waiter_client.connection_pool
    listening = [x._conn for x in push._LISTENERS[asyncio.get_running_loop()].values()]
    conns = [*pool._available_connections, *pool._in_use_connections]  # type: ignore[attr-defined]
    assert len(conns) > len(listening) == 1
    assert {c.socket_timeout for c in conns if c not in listening} == {7}
    await holder.close()
    await waiter.close()


async def test_a_killed_waiters_ticket_is_skipped_at_once(
    redis_url: str, redis: aioredis.Redis, unique_name: str
) -> None:
    """A waiter process is SIGKILLed while queued, its lease still live: the
    release finds nobody listening on its channel, drops its ticket and hands the
    permit to the next waiter at once, instead of to the dead one for a lease."""
    ttl = 30.0
    holder = await RedisSemaphore.create(redis, unique_name, count=1, lease_ttl=ttl)
    await holder.acquire()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any waiting
        [sys.executable, HOLDER, redis_url, unique_name, "1", str(ttl), "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    survivor = await RedisSemaphore.attach(redis, unique_name, lease_ttl=ttl)
    try:
        await wait_until(lambda: queued(redis, unique_name), timeout=20)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        task = asyncio.ensure_future(survivor.acquire())

        async def both_queued() -> bool:
            return await queued(redis, unique_name) == 2

        await wait_until(both_queued, timeout=5)
        await holder.release()
        handed = {
            k.decode(): v.decode()
            for k, v in (await redis.hgetall(keyspace(unique_name).key("handed"))).items()
        }
        assert len(handed) == 1, handed
        assert next(iter(handed)).startswith(survivor.instance_id), "handed to the dead one"
        assert await queued(redis, unique_name) == 0, "the dead ticket is still queued"
        await asyncio.wait_for(task, 5)  # a hand-off, not a lease (30 s) and a reclaim
        await assert_permits(redis, unique_name, 1, free=0)
        await survivor.release()
        await assert_permits(redis, unique_name, 1, free=1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await holder.close()
        await survivor.close()


async def test_without_channel_rights_waiters_use_blocking_connections(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """A user refused channels (Redis 7's default ``resetchannels``) still waits
    and is handed permits, on blocking connections; the one refused
    subscription per process is the only ACL LOG entry."""
    password = "no-channels"
    private_server.cli(
        "ACL", "SETUSER", "nochan", "reset", "on", f">{password}",
        "~*", "resetchannels", "+@all", "-@dangerous",
    )  # fmt: skip
    private_server.cli("ACL", "LOG", "RESET")
    url = private_server.url.replace("redis://", f"redis://nochan:{password}@", 1)
    holder = await RedisSemaphore.create(redis_factory(url), unique_name, count=1)
    waiters = [await RedisSemaphore.attach(redis_factory(url), unique_name) for _ in range(3)]
    await holder.acquire()
    tasks = [asyncio.ensure_future(w.acquire()) for w in waiters]
    await wait_until(lambda: all(w._sub is not None and w._sub.refused for w in waiters), 5)

    async def blocked() -> bool:
        active = [(await w.statistics()).lanes_active for w in waiters]
        return sum(active) == 3

    await wait_until(blocked, timeout=5)
    await holder.release()
    pending = set(tasks)
    while pending:  # each waiter in turn is handed the permit and passes it on
        done, pending = await asyncio.wait(pending, timeout=5, return_when="FIRST_COMPLETED")
        assert len(done) == 1, (done, pending)
        await waiters[tasks.index(done.pop())].release()
    log = private_server.cli("ACL", "LOG")
    reasons = set(re.findall(r"^reason\n(\w+)$", log, re.M))
    assert reasons <= {"channel"}, log
    for sem in [holder, *waiters]:
        await sem.close()
    await assert_permits(redis_factory(private_server.url), unique_name, 1, free=1)


async def test_a_waiter_heard_only_on_a_replica_gets_no_notice_of_a_dropped_hand_off(
    primary_and_replica: tuple[RedisServer, RedisServer],
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    """A subscriber on a replica hears what the master publishes, but the
    master does not count it.  A release that finds nobody listening on the
    master skips the ticket, and must not have told the replica's subscriber
    that the permit was handed to it (a failover left a process's listener
    on its old master, now a replica: it took such notices and used permits
    that others held)."""
    primary, replica = primary_and_replica
    await wait_until(lambda: replica_linked(replica), timeout=15)
    client = redis_factory(primary.url)
    holder = await RedisSemaphore.create(client, unique_name, count=1, lease_ttl=10)
    await holder.acquire()
    keys = keyspace(unique_name)
    ops = holder._ops
    # A waiter whose instance listens only on the replica: its slot and lease
    # are real, its ticket is queued on the primary.
    member, channel = "elsewhere.0", f"{ops.channel}:elsewhere"
    await client.rpush(ops.slot_key(member), "")
    seconds, micros = await client.time()
    await client.zadd(keys.key("holders"), {member: seconds * 1000 + micros // 1000 + 10_000})
    far = redis_factory(replica.url, protocol=2)
    pubsub = far.pubsub()
    await pubsub.execute_command("SSUBSCRIBE", channel)
    assert await pubsub.parse_response(timeout=5) is not None  # the confirmation
    status, number, listening = await ops.enqueue(member, holder._gen, 10_000, channel)
    assert status == 0 and number is not None
    assert listening is False, "enqueue reports that nobody listens for it on the primary"
    await holder.release()
    # Messages of one channel arrive in order: once the marker is in, any
    # notice the release published would be in too.
    await client.execute_command("SPUBLISH", channel, "marker")
    heard: list[str] = []
    deadline = time.monotonic() + 10
    while "marker" not in heard and time.monotonic() < deadline:
        message = await pubsub.parse_response(block=False, timeout=0.5)
        if message is not None:
            heard.append(message[2].decode())
    assert heard == ["marker"], "no notice for a hand-off that did not happen"
    assert await client.zscore(keys.key("waiters"), member) is None, "the ticket was skipped"
    assert await client.hgetall(keys.key("handed")) == {}
    await assert_permits(client, unique_name, 1, free=1)
    await pubsub.aclose()
    await holder.close()


async def test_a_listener_left_on_a_replica_moves_and_its_waiter_is_served(
    primary_and_replica: tuple[RedisServer, RedisServer],
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The waiter's listener starts on the replica (as after a failover that
    made its node one): queueing reports that the primary does not hear it,
    the listener moves, and the next release hands the permit over."""
    from redsync._core import link as link_module
    from redsync._core import push

    primary, replica = primary_and_replica
    await wait_until(lambda: replica_linked(replica), timeout=15)
    client = redis_factory(primary.url)
    holder = await RedisSemaphore.create(client, unique_name, count=1, lease_ttl=10)
    waiter = await RedisSemaphore.attach(redis_factory(primary.url), unique_name, lease_ttl=10)
    await holder.acquire()
    elsewhere = link_module._Pool(redis_factory(replica.url).connection_pool)
    original = push._listener
    placed: list[push._Listener] = []

    async def misplaced_first(link: link_module.Link) -> push._Listener:
        if placed:
            return await original(link)
        right = await original(link)  # registered under the primary's key
        wrong = push._Listener(elsewhere, right._registry, right.key)
        right._registry[right.key] = wrong
        placed.append(wrong)
        return wrong

    monkeypatch.setattr(push, "_listener", misplaced_first)
    task = asyncio.ensure_future(waiter.acquire())
    await wait_until(lambda: bool(placed) and placed[0]._dead, timeout=10)
    channel = f"{waiter._ops.channel}:{waiter.instance_id}"  # type: ignore[attr-defined]

    async def heard_on_primary() -> bool:
        (_, count) = await client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        return int(count) == 1

    await wait_until(heard_on_primary, timeout=10)
    await wait_until(lambda: queued(client, unique_name), timeout=10)
    await holder.release()
    await asyncio.wait_for(task, 5)
    assert (await waiter.statistics()).held_here == 1
    await assert_permits(client, unique_name, 1, free=0)
    await waiter.release()
    await assert_permits(client, unique_name, 1, free=1)
    await holder.close()
    await waiter.close()


def test_the_listener_parses_resp2_and_resp3_frames_split_anywhere() -> None:
    """The listener's own parser: every frame kind a subscribed connection sees,
    fed whole and cut at every byte (a read can end anywhere)."""
    from redsync._core.resp import Incomplete as _Incomplete
    from redsync._core.resp import parse as _parse

    frames = [
        (
            b">3\r\n$8\r\nsmessage\r\n$4\r\nwake\r\n$9\r\na.1 t 123\r\n",
            [b"smessage", b"wake", b"a.1 t 123"],
        ),
        (b"*3\r\n$8\r\nsmessage\r\n$4\r\nwake\r\n$0\r\n\r\n", [b"smessage", b"wake", b""]),
        (b">3\r\n$10\r\nssubscribe\r\n$4\r\nwake\r\n:1\r\n", [b"ssubscribe", b"wake", 1]),
        (b",1.5\r\n", 1.5),
        (b"#t\r\n", True),
        (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
        (b"+PONG\r\n", b"PONG"),
        (b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", [b"pong", b""]),
        (b"_\r\n", None),
        (b"$-1\r\n", None),
        (b"%1\r\n+k\r\n:2\r\n", {b"k": 2}),
        (b"|1\r\n+ttl\r\n:3\r\n+OK\r\n", b"OK"),
        (b"=8\r\ntxt:abcd\r\n", b"abcd"),
    ]
    stream = b"".join(raw for raw, _ in frames)
    pos, seen = 0, []
    while pos < len(stream):
        value, pos = _parse(stream, pos)
        seen.append(value)
    assert seen == [expected for _, expected in frames]
    for raw, expected in frames:
        for cut in range(len(raw)):
            with pytest.raises(_Incomplete):
                _parse(raw[:cut], 0)
        assert _parse(raw, 0) == (expected, len(raw))
    error, _ = _parse(b"-NOPERM no channel rights\r\n", 0)
    assert str(error).startswith("NOPERM")


# ------------------------------------------------------------------ events


async def test_a_thousand_waiting_event_instances_use_at_most_eight_connections(
    private_server: RedisServer, redis_factory: Callable[..., aioredis.Redis], unique_name: str
) -> None:
    """1,000 instances of one event wait on one default client (each used to
    block a connection of its own: the 101st raised MaxConnectionsError);
    1,000 sets wake each exactly once."""
    name = f"events-{unique_name}"
    client = redis_factory(private_server.url, client_name=name)
    observer = redis_factory(private_server.url)
    events = [RedisEvent(client, unique_name) for _ in range(1000)]
    tasks = [asyncio.ensure_future(e.wait(timeout=120)) for e in events]
    waiters = KeySpace("redsync:event", unique_name).key("waiters")

    async def all_queued() -> bool:
        return int(await observer.zcard(waiters)) == 1000

    try:
        await wait_until(all_queued, timeout=60)
        assert len(clients_named(private_server, name)) <= 8
        setter = RedisEvent(observer, unique_name)
        await asyncio.gather(*(setter.set() for _ in range(1000)))
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert len(clients_named(private_server, name)) <= 8
        assert int(await observer.zcard(waiters)) == 0
        assert not await setter.is_set(), "each signal was taken exactly once"
    finally:
        for task in tasks:
            task.cancel()
        for event in events:
            await event.close()


async def test_an_event_notice_lost_costs_latency_not_the_signal(
    redis: aioredis.Redis, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every notice is dropped: the waiter's renewal finds the handed signal."""
    from redsync.event import _queue

    monkeypatch.setattr(_queue, "LEASE_MS", 1500)  # renewed every 0.5 s
    waiter = RedisEvent(redis, unique_name)
    monkeypatch.setattr(waiter._queue, "_pushed", lambda data: None)
    task = asyncio.ensure_future(waiter.wait())
    waiters = KeySpace("redsync:event", unique_name).key("waiters")
    await wait_until(lambda: redis.zcard(waiters), timeout=5)
    setter = RedisEvent(redis, unique_name)
    await setter.set()
    handed = KeySpace("redsync:event", unique_name).key("handed")
    assert len(await redis.hgetall(handed)) == 1, "handed straight to the queued waiter"
    await asyncio.wait_for(task, 5)
    assert await redis.hgetall(handed) == {}
    assert not await setter.is_set()
    await waiter.close()
