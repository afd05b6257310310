"""``LuaOps`` and ``TxOps`` are one state machine: operation by operation, from the
same Redis state, they answer the same and leave the same state.

Each scenario builds one state twice (under two names), runs one operation
through each backend, and compares the answers and a picture of Redis: meta
(with the recovery deadline reduced to "open or not"), the pool in order,
the registered members, every slot's content, and which keys have a TTL.
The fault tests run both backends too; this catches a difference in a
branch the faults rarely reach.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from helpers import keyspace
from redsync._core.link import Link
from redsync.semaphore._ops import LuaOps, SlotState, TxOps, recovery_window_ms

TTL = 3000
COUNT = 3
GEN = "g0"

Ops = LuaOps | TxOps
#: Builds a state (through ``ops``, on ``client``) and runs the operation compared.
Scenario = Callable[[Ops, aioredis.Redis], Awaitable[Any]]


async def picture(client: aioredis.Redis, ops: Ops, members: list[str]) -> dict[str, Any]:
    meta = {k.decode(): v.decode() for k, v in (await client.hgetall(ops.meta_key)).items()}
    if "recover" in meta:
        meta["recover"] = "open" if meta["recover"] != "0" else "0"
    slots = {m: [t.decode() for t in await client.lrange(ops.slot_key(m), 0, -1)] for m in members}
    registered = sorted(m.decode() for m in await client.zrange(ops.holders_key, 0, -1))
    keys = [ops.meta_key, ops.pool_key, ops.holders_key, *map(ops.slot_key, members)]
    ttls = [await client.pttl(k) for k in keys]
    return {
        "meta": meta,
        "pool": [t.decode() for t in await client.lrange(ops.pool_key, 0, -1)],
        "registered": registered,
        "slots": slots,
        # -2: no key; -1: a key without a TTL (never allowed); else: has one.
        "ttl": ["none" if t == -2 else "forever" if t == -1 else "set" for t in ttls],
    }


def members_of(ops: Ops) -> list[str]:
    return ["a.0", "a.1", "b.0"]


async def held(ops: Ops, client: aioredis.Redis, member: str, token: str) -> None:
    """``member`` holds ``token``: moved from the pool into its registered slot."""
    await ops.renew([SlotState(member, ops.slot_key(member), [])], COUNT, GEN, "lua", TTL, 1350)
    assert await client.lmove(ops.pool_key, ops.slot_key(member), "LEFT", "RIGHT") == token.encode()


async def init(ops: Ops, client: aioredis.Redis) -> Any:
    return await ops.init(COUNT, TTL, GEN, "lua")


async def init_twice(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    return await ops.init(COUNT + 1, TTL, "other", "lua")


async def release_held(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    return await ops.release("a.0", f"{GEN}:0", GEN, TTL)


async def release_twice(ops: Ops, client: aioredis.Redis) -> Any:
    await release_held(ops, client)
    return await ops.release("a.0", f"{GEN}:0", GEN, TTL)


async def release_other_generation(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    return await ops.release("a.0", "old:0", "old", TTL)


async def release_after_flush(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    await client.delete(ops.meta_key, ops.pool_key)
    return await ops.release("a.0", f"{GEN}:0", GEN, TTL)


def _states(ops: Ops, spec: dict[str, list[str]]) -> list[SlotState]:
    return [SlotState(m, ops.slot_key(m), tokens) for m, tokens in spec.items()]


async def renew_holding(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    spec = {"a.0": [f"{GEN}:0"], "a.1": []}
    return await ops.renew(_states(ops, spec), COUNT, GEN, "lua", TTL, recovery_window_ms(TTL))


async def renew_after_flush(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    await client.delete(ops.meta_key, ops.pool_key, ops.holders_key, ops.slot_key("a.0"))
    spec = {"a.0": [f"{GEN}:0"]}
    return await ops.renew(_states(ops, spec), COUNT, GEN, "lua", TTL, recovery_window_ms(TTL))


async def renew_other_generation(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    spec = {"a.0": ["old:1"]}
    return await ops.renew(_states(ops, spec), COUNT, "old", "lua", TTL, recovery_window_ms(TTL))


async def renew_finds_no_registration(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "b.0", f"{GEN}:0")
    await client.delete(ops.holders_key, ops.slot_key("b.0"))  # expired, meta survived
    return await ops.renew([], COUNT, GEN, "lua", TTL, recovery_window_ms(TTL))


async def reclaim_expired(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "b.0", f"{GEN}:0")
    await client.zadd(ops.holders_key, {"b.0": 1})  # its lease ran out long ago
    return await ops.reclaim(["b.0"], GEN, TTL)


async def reclaim_expired_without_slot(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "b.0", f"{GEN}:0")
    await client.zadd(ops.holders_key, {"b.0": 1})
    await client.delete(ops.slot_key("b.0"))  # the slot expired, permit inside
    return await ops.reclaim(["b.0"], GEN, TTL)


async def refill_after_window(ops: Ops, client: aioredis.Redis) -> Any:
    await reclaim_expired_without_slot(ops, client)
    await client.hset(ops.meta_key, "recover", 1)  # the window ended long ago
    members = [m.decode() for m in await client.zrange(ops.holders_key, 0, -1)]
    return await ops.refill(members, COUNT, GEN, TTL)


async def refill_window_still_open(ops: Ops, client: aioredis.Redis) -> Any:
    await reclaim_expired_without_slot(ops, client)
    members = [m.decode() for m in await client.zrange(ops.holders_key, 0, -1)]
    return await ops.refill(members, COUNT, GEN, TTL)


async def deregister_empty_and_held(ops: Ops, client: aioredis.Redis) -> Any:
    await init(ops, client)
    await held(ops, client, "a.0", f"{GEN}:0")
    await ops.renew(_states(ops, {"a.1": []}), COUNT, GEN, "lua", TTL, recovery_window_ms(TTL))
    return await ops.deregister(["a.0", "a.1"])


SCENARIOS: list[Scenario] = [
    init,
    init_twice,
    release_held,
    release_twice,
    release_other_generation,
    release_after_flush,
    renew_holding,
    renew_after_flush,
    renew_other_generation,
    renew_finds_no_registration,
    reclaim_expired,
    reclaim_expired_without_slot,
    refill_after_window,
    refill_window_still_open,
    deregister_empty_and_held,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
async def test_backends_agree(redis: aioredis.Redis, unique_name: str, scenario: Scenario) -> None:
    results = []
    pictures = []
    for backend in (LuaOps, TxOps):
        keys = keyspace(f"{unique_name}-{backend.__name__}-{uuid.uuid4().hex[:6]}")
        link = Link(redis, keys.key("meta"))
        ops = backend(link, keys)
        try:
            results.append(await scenario(ops, redis))
            pictures.append(await picture(redis, ops, members_of(ops)))
        finally:
            await link.close()
    lua, tx = results
    assert lua == tx, f"answers differ: LuaOps {lua!r}, TxOps {tx!r}"
    assert pictures[0] == pictures[1], f"states differ:\nLuaOps {pictures[0]}\nTxOps  {pictures[1]}"
    assert "forever" not in pictures[0]["ttl"], pictures[0]
