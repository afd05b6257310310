"""Users without ``@dangerous`` (managed Redis), and waits that end without a trace.

Managed Redis offerings give applications ``+@all -@dangerous`` and a key
pattern. ``CLIENT UNBLOCK``, ``CLIENT LIST``, ``INFO`` and friends are refused
to them, so the library must not depend on any of them: nothing here may log
a warning, be refused, or hide a signal or a permit.

The second theme is what a wait leaves behind when it ends (timeout or
cancellation) while its server-side block still runs: a signal that reaches
that block must stay visible to ``is_set()`` on every other instance, and go
on to the next waiter; a permit must go on to the next waiter too.

Each test runs on the shared standalone server, a 3-master Cluster,
Sentinel and a TLS server with the default user, and on a private standalone
server and the Cluster with exactly such a restricted user.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import wait_until
from devtools.servers import RedisServer
from devtools.topologies import ClusterTopology, SentinelTopology
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from helpers import assert_permits
from redsync import (
    RedisEvent,
    RedisEventTimeoutError,
    RedisLock,
    RedisReadWriteLock,
    RedisSemaphore,
    RedisSemaphoreTimeoutError,
    SemaphoreInitStrategy,
)
from redsync._core.keys import KeySpace

DEPLOYMENTS = ["standalone", "cluster", "sentinel", "tls", "acl-standalone", "acl-cluster"]
STRATEGIES = [SemaphoreInitStrategy.LUA, SemaphoreInitStrategy.OPTIMISTIC_LOCKING]
PASSWORD = "managed-pw"


@dataclass
class Deployment:
    """Clients for one deployment, all writing under ``prefix``."""

    kind: str
    make: Callable[[], Any]
    prefix: str
    #: The servers, for the restricted-user checks (empty: the shared server).
    servers: list[RedisServer] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)

    def client(self) -> Any:
        client = self.make()
        self.clients.append(client)
        return client

    def refused_dangerous(self) -> list[str]:
        """Commands the restricted user was refused (ACL LOG), on every server."""
        refused: list[str] = []
        for server in self.servers:
            refused += [line for line in server.cli("ACL", "LOG").splitlines() if line.strip()]
        return refused


def _restrict(server: RedisServer, user: str, prefix: str) -> None:
    server.cli(
        "ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}",
        f"~{prefix}*", "resetchannels", f"&{prefix}*", "+@all", "-@dangerous",
    )  # fmt: skip
    server.cli("ACL", "LOG", "RESET")


@pytest.fixture(params=DEPLOYMENTS)
async def deployment(
    request: pytest.FixtureRequest, redis_url: str, unique_name: str
) -> AsyncIterator[Deployment]:
    kind: str = request.param
    # The prefix carries the unique name, so the shared server's cleanup finds the keys.
    prefix = f"managed-{unique_name}"
    user = f"app-{uuid.uuid4().hex[:8]}"
    make: Callable[[], Any]
    servers: list[RedisServer] = []
    if kind == "standalone":
        make = lambda: aioredis.Redis.from_url(redis_url)  # noqa: E731
    elif kind == "cluster":
        cluster: ClusterTopology = request.getfixturevalue("shared_cluster")
        make = lambda: RedisCluster.from_url(cluster.startup_url)  # noqa: E731
    elif kind == "sentinel":
        setup: SentinelTopology = request.getfixturevalue("shared_sentinel")
        make = lambda: Sentinel(setup.sentinel_addresses, socket_timeout=5).master_for(  # noqa: E731
            setup.service_name
        )
    elif kind == "tls":
        tls = request.getfixturevalue("tls_server")
        make = lambda: aioredis.Redis.from_url(tls.url, ssl_ca_certs=str(tls.ca_cert))  # noqa: E731
    elif kind == "acl-standalone":
        server: RedisServer = request.getfixturevalue("private_server")
        _restrict(server, user, prefix)
        servers = [server]
        url = f"redis://{user}:{PASSWORD}@{server.host}:{server.port}/0"
        make = lambda: aioredis.Redis.from_url(url)  # noqa: E731
    else:
        cluster = request.getfixturevalue("shared_cluster")
        servers = list(cluster.running_nodes)
        for node in servers:
            _restrict(node, user, prefix)
        host, port = cluster.startup_nodes[0]
        url = f"redis://{user}:{PASSWORD}@{host}:{port}/0"
        make = lambda: RedisCluster.from_url(url)  # noqa: E731
    found = Deployment(kind, make, prefix, servers)
    try:
        yield found
    finally:
        for client in found.clients:
            await client.aclose()
        if kind == "acl-cluster":
            for node in servers:
                node.cli("ACL", "DELUSER", user, check=False)
            # The shared cluster is not flushed: delete what this test wrote.
            admin = RedisCluster.from_url(request.getfixturevalue("shared_cluster").startup_url)
            try:
                keys = [k async for k in admin.scan_iter(match=f"{prefix}*")]
                for key in keys:
                    await admin.delete(key)
            finally:
                await admin.aclose()


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.DEBUG, logger="redsync")

    def seen() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "redsync" and r.levelno >= logging.WARNING
        ]

    return seen


def assert_clean(deployment: Deployment, warnings_seen: Callable[[], list[str]]) -> None:
    assert warnings_seen() == [], warnings_seen()
    assert deployment.refused_dangerous() == [], deployment.refused_dangerous()


class Gate:
    """Holds chosen coroutine methods of one instance until opened: a stalled process,
    deterministically (the stall starts exactly where the method is entered)."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = asyncio.Event()

    def hold(self, obj: object, *names: str) -> None:
        """Hold every call of each method ``obj`` has among ``names`` (one at least)."""
        found = [name for name in names if getattr(obj, name, None) is not None]
        assert found, f"{obj!r} has none of {names}: the gate would hold nothing"
        for name in found:
            original = getattr(obj, name)

            async def held(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.entered.set()
                await self.opened.wait()
                return await _original(*args, **kwargs)

            setattr(obj, name, held)


async def lanes_are(primitive: RedisEvent | RedisSemaphore, op: str, n: int) -> bool:
    """Waits parked on the server: blocked lanes, or a semaphore's queued waits
    (and the steps that take them out of the queue)."""
    active = (await primitive.statistics()).lanes_active
    if isinstance(primitive, RedisSemaphore):
        active += len(primitive._waits) + len(primitive._tasks)
    return active >= n if op == ">=" else active == n


async def signal_reached(client: Any, prefix: str, name: str) -> bool:
    """True once no signal is left in the list (the server moved it to an inbox)."""
    return int(await client.llen(KeySpace(prefix, name).key("signals"))) == 0


# --------------------------------------------------------------------------- events


@pytest.mark.parametrize("ending", ["cancelled", "timed out"])
async def test_is_set_sees_a_signal_that_reached_an_ended_wait(
    deployment: Deployment,
    warnings_seen: Callable[[], list[str]],
    unique_name: str,
    ending: str,
) -> None:
    """A wait ends while its lane is still blocked on the server; the next set() goes
    to that lane, and the hand-back is stalled.  Meanwhile is_set() on every other
    instance says True, and a later wait() takes the signal exactly once."""
    prefix = deployment.prefix
    ended = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    ended._queue.usable = False  # what lanes do with a signal that comes too late
    setter = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    observer = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    admin = deployment.client()
    gate = Gate()
    # The ended wait's instance stalls in whatever it does with a signal that arrives.
    gate.hold(ended._lanes, "refuse", "accept", "give_back", "_ack")
    keep = None
    try:
        if ending == "cancelled":
            task = asyncio.ensure_future(ended.wait())
            await wait_until(lambda: lanes_are(ended, ">=", 1), timeout=5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            # A second waiter of the same instance, with a long timeout, keeps a
            # lane blocked after the first one's timeout ran out.
            keep = asyncio.ensure_future(ended.wait(timeout=30))
            with pytest.raises(RedisEventTimeoutError):
                await ended.wait(timeout=0.3)
            keep.cancel()
            with pytest.raises(asyncio.CancelledError):
                await keep
        assert (await ended.statistics()).lanes_active >= 1, "the lane should still be blocked"
        await setter.set()
        await wait_until(lambda: signal_reached(admin, prefix, unique_name), timeout=5)
        await asyncio.wait_for(gate.entered.wait(), 5)
        # The signal sits in the stalled instance's inbox, not in the list.
        for _ in range(5):
            assert await observer.is_set(), "a pending signal was hidden from is_set()"
            assert await setter.is_set()
        assert (await observer.statistics()).pending_signals == 1
        gate.opened.set()
        # Handed back: it goes on to a waiter, exactly once.
        taker = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
        await asyncio.wait_for(taker.wait(timeout=10), 15)
        assert not await observer.is_set()
        with pytest.raises(RedisEventTimeoutError):
            await taker.wait(timeout=0)
        await taker.close()
        assert_clean(deployment, warnings_seen)
    finally:
        gate.opened.set()
        for event in (ended, setter, observer):
            await event.close()


async def test_a_timed_out_wait_leaves_no_blocked_lane(
    deployment: Deployment, warnings_seen: Callable[[], list[str]], unique_name: str
) -> None:
    """The server-side block of a wait(timeout) ends with the timeout: no connection
    stays blocked, and a set() right after it stays pending in the list."""
    prefix = deployment.prefix
    waiter = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    setter = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    admin = deployment.client()
    try:
        for _ in range(3):
            with pytest.raises(RedisEventTimeoutError):
                await waiter.wait(timeout=0.4)
            # The block was 0.4 s too; the server ends it within its timer tick.
            await wait_until(lambda: lanes_are(waiter, "==", 0), timeout=1.0)
        await setter.set()
        assert await admin.llen(KeySpace(prefix, unique_name).key("signals")) == 1
        assert await setter.is_set()
        await waiter.wait(timeout=5)
        assert not await setter.is_set()
        assert_clean(deployment, warnings_seen)
    finally:
        await waiter.close()
        await setter.close()


async def test_close_stops_a_blocked_event_lane_at_once(
    deployment: Deployment, warnings_seen: Callable[[], list[str]], unique_name: str
) -> None:
    prefix = deployment.prefix
    event = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    event._queue.usable = False  # a lane (the fallback) blocked on the server
    task = asyncio.ensure_future(event.wait())
    await wait_until(lambda: lanes_are(event, ">=", 1), timeout=5)
    await asyncio.sleep(0.05)  # the BLMOVE is on its way
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(event.close(), 5)
    assert loop.time() - started < 2.0, "close() waited for the server-side block"
    with pytest.raises(Exception, match="closed"):
        await task
    other = RedisEvent(deployment.client(), unique_name, key_prefix=prefix)
    await other.set()
    await other.wait(timeout=5)  # nothing swallowed the signal
    assert not await other.is_set()
    await other.close()
    assert_clean(deployment, warnings_seen)


# --------------------------------------------------------------------------- semaphores


async def semaphore(
    deployment: Deployment, name: str, strategy: SemaphoreInitStrategy
) -> RedisSemaphore:
    """An instance of the count=1 semaphore ``name``, on its own client."""
    return await RedisSemaphore.create(
        deployment.client(), name, count=1, key_prefix=deployment.prefix,
        semaphore_init_strategy=strategy,
    )  # fmt: skip


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
async def test_a_permit_reaching_an_ended_wait_goes_on(
    deployment: Deployment,
    warnings_seen: Callable[[], list[str]],
    unique_name: str,
    strategy: SemaphoreInitStrategy,
) -> None:
    """An acquire() is cancelled while its lane still blocks; the released permit
    reaches that lane, which hands it back, and the next waiter elsewhere gets it
    long before the ended lane's server-side block would have run out."""
    prefix = deployment.prefix

    holder, ended, next_one = [await semaphore(deployment, unique_name, strategy) for _ in range(3)]
    try:
        await holder.acquire(timeout=5)
        task = asyncio.ensure_future(ended.acquire())
        await wait_until(lambda: lanes_are(ended, ">=", 1), timeout=5)
        await asyncio.sleep(0.05)  # its BLMOVE is queued on the server first
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        waiting = asyncio.ensure_future(next_one.acquire(timeout=20))
        await wait_until(lambda: lanes_are(next_one, ">=", 1), timeout=5)
        await holder.release()
        # The ended lane blocks for up to 60 s; the permit must not wait for that.
        await asyncio.wait_for(waiting, 10)
        assert (await next_one.statistics()).held_here == 1
        with pytest.raises(RedisSemaphoreTimeoutError):
            await holder.acquire(timeout=0)
        await next_one.release()
        await assert_permits_eventually(deployment, unique_name, prefix)
        assert_clean(deployment, warnings_seen)
    finally:
        for sem in (holder, ended, next_one):
            await sem.close()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
async def test_a_timed_out_acquire_leaves_no_blocked_lane(
    deployment: Deployment,
    warnings_seen: Callable[[], list[str]],
    unique_name: str,
    strategy: SemaphoreInitStrategy,
) -> None:
    sem = await semaphore(deployment, unique_name, strategy)
    other = await semaphore(deployment, unique_name, strategy)
    try:
        await other.acquire(timeout=5)
        for _ in range(3):
            with pytest.raises(RedisSemaphoreTimeoutError):
                await sem.acquire(timeout=0.4)
            await wait_until(lambda: lanes_are(sem, "==", 0), timeout=1.0)
        await other.release()
        # Released into the pool, not into a lane of the instance that gave up.
        assert (await sem.statistics()).available == 1
        await sem.acquire(timeout=5)
        await sem.release()
        assert_clean(deployment, warnings_seen)
    finally:
        await sem.close()
        await other.close()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
async def test_close_stops_a_blocked_semaphore_lane_at_once(
    deployment: Deployment,
    warnings_seen: Callable[[], list[str]],
    unique_name: str,
    strategy: SemaphoreInitStrategy,
) -> None:
    prefix = deployment.prefix
    holder = await semaphore(deployment, unique_name, strategy)
    waiter = await semaphore(deployment, unique_name, strategy)
    try:
        await holder.acquire(timeout=5)
        task = asyncio.ensure_future(waiter.acquire())
        await wait_until(lambda: lanes_are(waiter, ">=", 1), timeout=5)
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(waiter.close(), 5)
        assert loop.time() - started < 2.5, "close() waited for the server-side block"
        with pytest.raises(Exception, match="closed"):
            await task
        await holder.release()
        await holder.acquire(timeout=5)  # the closed lane swallowed nothing
        await holder.release()
        await assert_permits_eventually(deployment, unique_name, prefix)
        assert_clean(deployment, warnings_seen)
    finally:
        await holder.close()
        await waiter.close()


async def assert_permits_eventually(deployment: Deployment, name: str, prefix: str) -> None:
    """The one permit is back in the pool, once (on a cluster, through a cluster client)."""
    client = deployment.client()

    async def back() -> bool:
        try:
            await assert_permits(client, name, 1, free=1, prefix=prefix)
        except AssertionError:
            return False
        return True

    await wait_until(back, timeout=5, message="the permit is back in the pool")


# ---------------------------------------------------------------------------- locks


async def test_locks_hand_off_and_drain_for_a_restricted_user(
    deployment: Deployment, warnings_seen: Callable[[], list[str]], unique_name: str
) -> None:
    """A lock handed from holder to waiter, and a writer drained by the notice of
    the last read leaving: every deployment, the ACL user without @dangerous
    included, with no warning and no refused command."""
    prefix = deployment.prefix
    holder = RedisLock(deployment.client(), unique_name, key_prefix=prefix, lease_ttl=5)
    waiter = RedisLock(deployment.client(), unique_name, key_prefix=prefix, lease_ttl=5)
    reader = RedisReadWriteLock(deployment.client(), unique_name, key_prefix=prefix, lease_ttl=5)
    writer = RedisReadWriteLock(deployment.client(), unique_name, key_prefix=prefix, lease_ttl=5)
    try:
        fence = await holder.acquire(timeout=5)
        taking = asyncio.ensure_future(waiter.acquire(timeout=20))
        await wait_until(lambda: waiter._waiting == 1, timeout=5)
        await holder.release()
        assert await asyncio.wait_for(taking, 10) > fence
        await waiter.release()

        await reader.reader.acquire(timeout=5)
        writing = asyncio.ensure_future(writer.writer.acquire(timeout=20))
        await wait_until(lambda: writer._gate._hold is not None, timeout=5)  # draining
        assert not writing.done()
        await reader.reader.release()
        await asyncio.wait_for(writing, 10)
        assert writer._sub is not None and writer._sub.active, "no notice channel"
        await writer.writer.release()
        assert_clean(deployment, warnings_seen)
    finally:
        for lock in (holder, waiter):
            await lock.close()
        for rw in (reader, writer):
            await rw.close()
