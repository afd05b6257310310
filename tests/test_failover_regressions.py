"""Regressions around failovers, each driven deterministically.

The chaos runs showed moments with one holder more than the count right after
Cluster failovers.  What such a moment needs is either a permit that exists
twice for a while, or a holder whose "permit" is not a permit at all:

* A recovery window is closed by ``semaphore_refill.lua``, which mints every
  permit that neither the pool nor a registered slot holds.  It must not run
  before every registered instance has had its say: an instance whose renewal
  is late (stuck behind a failover, backing off) puts the permit it holds
  back on that renewal, and minting it meanwhile makes it exist twice.  Nor
  may a refill decided for one window end a later one.
* An event lane that recovers its inbox before blocking must block on the
  connection it holds, not on one it has just handed back: that connection is
  then lent to the next command on the same node (a semaphore's, when both
  live there), two coroutines read one socket, and one of them takes the
  other's reply.  A semaphore lane that reads a foreign reply as its token
  hands out a permit nobody holds.

The semaphore tests call the operations directly on the shared server (unique
keys), in the order a failover can produce; the event test uses the shared
Redis Cluster and marks the route stale at the exact point a concurrent
``MOVED`` would.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools.topologies import ClusterTopology
from redis.asyncio.cluster import RedisCluster

from helpers import assert_permits, keyspace
from redsync import RedisEvent, SemaphoreInitStrategy
from redsync._core.link import Link
from redsync.semaphore._ops import (
    LuaOps,
    RenewResult,
    SlotState,
    TxOps,
    now_ms,
    recovery_window_ms,
)

TTL_MS = 3000
WINDOW_MS = recovery_window_ms(TTL_MS)
COUNT = 2

Ops = LuaOps | TxOps


@pytest.fixture(params=list(SemaphoreInitStrategy), ids=lambda s: s.value)
def strategy(request: pytest.FixtureRequest) -> SemaphoreInitStrategy:
    return request.param  # type: ignore[no-any-return]


async def _server_ms(client: aioredis.Redis) -> int:
    return now_ms(await client.time())


async def _until_server_ms(client: aioredis.Redis, deadline_ms: int) -> None:
    # Polled: windows and leases run on the server's clock.
    while await _server_ms(client) <= deadline_ms:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def _create(client: aioredis.Redis, name: str, strategy: SemaphoreInitStrategy) -> Ops:
    keys = keyspace(name)
    link = Link(client, keys.key("meta"))
    ops: Ops = LuaOps(link, keys) if strategy is SemaphoreInitStrategy.LUA else TxOps(link, keys)
    meta = await ops.init(COUNT, TTL_MS, uuid.uuid4().hex[:12], strategy.value)
    assert meta.created
    return ops


class _Instance:
    """One semaphore instance's side of the protocol, step by step: its slots,
    what it holds in them, and the calls ``RedisSemaphore`` makes."""

    def __init__(self, client: aioredis.Redis, ops: Ops, strategy: SemaphoreInitStrategy) -> None:
        self.client = client
        self.ops = ops
        self.strategy = strategy
        self.id = uuid.uuid4().hex[:16]
        self.held: dict[str, list[str]] = {}  # member -> tokens it holds there

    async def gen(self) -> str:
        meta = await self.ops.meta()
        assert meta is not None
        return meta.gen

    def member(self, n: int) -> str:
        member = f"{self.id}.{n}"
        self.held.setdefault(member, [])
        return member

    async def renew(self) -> RenewResult:
        """A renewal, then the reclaim of the members it names (as ``_renew_once``)."""
        lanes = [SlotState(m, self.ops.slot_key(m), list(t)) for m, t in self.held.items()]
        gen = await self.gen()
        result = await self.ops.renew(lanes, COUNT, gen, self.strategy.value, TTL_MS, WINDOW_MS)
        if result.stale_members:
            await self.ops.reclaim(result.stale_members, gen, TTL_MS)
        return result

    async def take(self, member: str) -> str | None:
        """What a lane's BLMOVE does: the pool's head moves into the slot."""
        token = await self.client.lmove(self.ops.pool_key, self.ops.slot_key(member))
        if token is None:
            return None
        self.held[member].append(token.decode())
        return str(token.decode())

    async def refill(self) -> int:
        """What ``RedisSemaphore._refill`` does once a renewal says the window ended."""
        gen = await self.gen()
        for _ in range(5):
            members = [m.decode() for m in await self.client.zrange(self.ops.holders_key, 0, -1)]
            minted = await self.ops.refill(members, COUNT, gen, TTL_MS)
            if minted != -2:
                return minted
        raise AssertionError("the member list kept changing")


async def _recover_deadline(client: aioredis.Redis, ops: Ops) -> int:
    return int(await client.hget(ops.meta_key, "recover") or 0)


async def _a_dead_instance_lost_its_slot(client: aioredis.Redis, ops: Ops) -> None:
    """A killed instance whose lease ran out while nobody could reclaim it (a slow
    failover): still registered, its slot expired.  The reclaim that finds it opens
    the recovery window (ARCHITECTURE.md, "Reclaim")."""
    dead = f"{uuid.uuid4().hex[:16]}.0"
    await client.zadd(ops.holders_key, {dead: await _server_ms(client) - 1})
    meta = await ops.meta()
    assert meta is not None
    assert await ops.reclaim([dead], meta.gen, TTL_MS) == 0
    assert await _recover_deadline(client, ops) > 0


async def test_refill_waits_for_a_live_holder_whose_renewal_is_late(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    """A recovery window opens (a dead instance's slot expired unreclaimed) while a
    live holder's slot is gone too and its next renewal is late, as renewals are
    right after a failover (MOVED, then backing off).  When the window's
    0.45 x lease_ttl are up, another instance's refill must not mint the holder's
    permit: the holder puts it back on that late renewal, so the permit would
    exist twice (the other instance takes it meanwhile)."""
    ops = await _create(redis, unique_name, strategy)
    holder = _Instance(redis, ops, strategy)
    other = _Instance(redis, ops, strategy)
    slot = holder.member(0)
    await holder.renew()  # registered, its lease fresh
    mine = await holder.take(slot)
    assert mine is not None
    score = await redis.zscore(ops.holders_key, slot)
    assert score is not None
    holder_lease_ends = int(score)
    await asyncio.sleep(0.01)  # the window opens after the holder's last renewal

    await _a_dead_instance_lost_its_slot(redis, ops)
    deadline = await _recover_deadline(redis, ops)
    await redis.delete(ops.slot_key(slot))  # the holder's slot went in the same outage

    # The window ends; the holder's renewal has not come (its lease still runs).
    await _until_server_ms(redis, deadline)
    assert await _server_ms(redis) < holder_lease_ends
    taker = [other.member(0), other.member(1)]
    assert (await other.renew()).refill_due
    minted = await other.refill()
    assert minted <= 0, f"minted {minted} permit(s) while a registered holder had not reported"
    for member in taker:  # the other instance takes what the pool offers
        await other.take(member)
    assert mine not in [t for tokens in other.held.values() for t in tokens]

    # The late renewal: the holder puts its permit back and keeps it.
    late = await holder.renew()
    assert late.slots == [[mine]]
    await assert_permits(redis, unique_name, COUNT)
    # Everyone has reported: the window closes and nothing is minted.
    assert (await other.renew()).refill_due
    assert await other.refill() == 0
    assert await _recover_deadline(redis, ops) == 0
    await assert_permits(redis, unique_name, COUNT)


async def test_a_refill_decided_for_one_window_does_not_end_a_later_one(
    redis: aioredis.Redis, unique_name: str, strategy: SemaphoreInitStrategy
) -> None:
    """Two instances see the same window end; the first closes it, and a new loss
    opens another window before the second instance's refill arrives.  That refill
    must leave the new window open: the live instances have not had their
    0.45 x lease_ttl to put back what they hold."""
    ops = await _create(redis, unique_name, strategy)
    first = _Instance(redis, ops, strategy)
    second = _Instance(redis, ops, strategy)
    first.member(0)
    second.member(0)
    await first.renew()
    await second.renew()
    await redis.hset(ops.meta_key, "recover", await _server_ms(redis) - 1)  # a window that ended

    assert (await first.renew()).refill_due
    assert (await second.renew()).refill_due
    assert await first.refill() == 0  # nothing was missing
    await _a_dead_instance_lost_its_slot(redis, ops)  # a new loss: a new window
    deadline = await _recover_deadline(redis, ops)
    assert deadline > await _server_ms(redis)

    assert await second.refill() == 0
    assert await _recover_deadline(redis, ops) == deadline, "the new window was ended at once"


async def test_an_event_lane_blocks_on_the_connection_it_holds(
    shared_cluster: ClusterTopology, unique_name: str
) -> None:
    """Failover: the lane's connection leads to the old master and its last move is
    unsettled.  The next pull takes a fresh connection and recovers the inbox; a
    concurrent command on the same primitive is answered MOVED meanwhile, so the
    recovery takes yet another connection and hands the fresh one back.  The
    BLMOVE must then go out on the connection the lane holds: the one handed back
    is lent to the next command on that node (a semaphore of the same name lives
    there), and two readers on one socket take each other's replies."""
    client = RedisCluster.from_url(shared_cluster.startup_url, socket_timeout=5)
    event = RedisEvent(client, unique_name)
    link = event._link
    lane = event._dispatcher.lanes[0]
    blocking_on: list[Any] = []
    stale_once = [True]
    real_retire = link._retire
    real_run = link.run

    async def retire(conn: Any) -> None:
        await real_retire(conn)
        if stale_once[0]:  # another command of this primitive was just answered MOVED
            stale_once[0] = False
            link._mark_stale()

    async def run(conn: Any, commands: Any, **kw: Any) -> Any:
        if any(c[0] == "BLMOVE" for c in commands):
            blocking_on.append(conn)
        return await real_run(conn, commands, **kw)

    link._retire = retire  # type: ignore[method-assign]
    link.run = run  # type: ignore[method-assign]
    pulling: asyncio.Future[str | None] | None = None
    try:
        old = await link.borrow()
        await link.discard(old)  # the connection to the demoted master
        lane.conn, lane.dirty = old, True
        pulling = asyncio.ensure_future(event._lanes.pull(lane, 1.0))
        for _ in range(200):
            if blocking_on:
                break
            await asyncio.sleep(0.005)
        assert blocking_on, "the lane never blocked"
        node = client.get_node_from_key(keyspace(unique_name, "redsync:event").key("signals"))
        lendable = list(node._free)
        assert blocking_on[0] is lane.conn, "the lane blocks on a connection it gave back"
        assert blocking_on[0] not in lendable, "a connection in use can be lent to others"
        assert await asyncio.wait_for(pulling, 10) is None  # nothing to wait for: timed out
    finally:
        if pulling is not None and not pulling.done():
            await asyncio.wait([pulling], timeout=10)
        link._retire = real_retire  # type: ignore[method-assign]
        link.run = real_run  # type: ignore[method-assign]
        await event.close()
        await client.aclose()
