"""Security set-ups: the README's ACL line, TLS, and names full of metacharacters."""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from devtools.servers import RedisServer
from devtools.topologies import TlsRedisServer
from redis.exceptions import NoPermissionError

from helpers import assert_permits
from redsync import RedisEvent, RedisSemaphore, SemaphoreInitStrategy

README = Path(__file__).resolve().parent.parent / "README.md"
PASSWORD = "acl-test-pw"


def readme_acl_line() -> list[str]:
    """The ``ACL SETUSER`` line documented in the README, split like a shell would."""
    match = re.search(r"^ACL SETUSER .*$", README.read_text(), re.M)
    assert match, "README.md lost its ACL line"
    words = shlex.split(match.group(0))
    return [f">{PASSWORD}" if w.startswith(">") else w for w in words]


async def exercise(
    client: aioredis.Redis, name: str, inspector: aioredis.Redis, *, reclaim: bool = True
) -> None:
    """Every kind of call the library makes: create, attach, contended acquire and
    release in both strategies, a lease taken back from a stopped instance,
    statistics, WAIT, and every event operation."""
    ttl = 3 if reclaim else 30  # short only where a lease is meant to run out
    for strategy in SemaphoreInitStrategy:
        sem_name = f"{name}-{strategy.value}"
        sem = await RedisSemaphore.create(
            client, sem_name, count=2, lease_ttl=ttl, semaphore_init_strategy=strategy
        )
        other = await RedisSemaphore.attach(client, sem_name, lease_ttl=ttl)

        async def cycle(s: RedisSemaphore) -> None:
            async with s:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(
            asyncio.gather(*(cycle(sem if i % 2 else other) for i in range(20))), 30
        )
        if reclaim:
            # A holder whose renewals stop loses its permit to the live instance.
            await other.acquire(timeout=5)
            await other._renewal.stop()
            await sem.acquire(timeout=5)
            await sem.acquire(timeout=20)  # the stopped holder's permit, reclaimed
            assert (await sem.statistics()).held_here == 2
            await sem.release()
            await sem.release()
        else:
            await other.close()
        await sem.close()
        await assert_permits(inspector, sem_name, 2, free=2)
    waited = RedisEvent(client, name)
    task = asyncio.ensure_future(waited.wait(timeout=10))
    await asyncio.sleep(0)
    await RedisEvent(client, name).set()
    await asyncio.wait_for(task, 15)
    with pytest.raises(Exception, match="no signal"):
        await waited.wait(timeout=0.05)
    await waited.close()
    fresh = RedisEvent(client, name)
    await fresh.set()
    assert await fresh.is_set()
    await fresh.clear()
    assert (await fresh.statistics()).pending_signals == 0


async def test_the_readme_acl_line_is_enough(
    redis_server_factory: Callable[..., RedisServer],
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    server = redis_server_factory()
    line = readme_acl_line()
    if server.cli("COMMAND", "INFO", "client|setinfo").strip():
        # Redis 7.2+ and Valkey have it; the README says to add it there.
        line.append("+client|setinfo")
    server.cli(*line)
    client = redis_factory(f"redis://redsync:{PASSWORD}@{server.host}:{server.port}/0")
    await exercise(client, unique_name, redis_factory(server.url))
    # Nothing was refused along the way...
    log = server.cli("ACL", "LOG").strip()
    assert log == "", log
    # ...and the user really is confined to the library's keys.
    with pytest.raises(NoPermissionError):
        await client.set(f"other:{unique_name}", 1)
    with pytest.raises(NoPermissionError):
        await client.execute_command("FLUSHALL")


async def test_semaphore_and_event_over_tls(
    tls_server: TlsRedisServer,
    redis_factory: Callable[..., aioredis.Redis],
    unique_name: str,
) -> None:
    client = redis_factory(tls_server.url, ssl_ca_certs=str(tls_server.ca_cert))
    await exercise(client, unique_name, client, reclaim=False)
    # The server really speaks TLS only: a plain connection to its port gets nowhere.
    plain = redis_factory(f"redis://{tls_server.host}:{tls_server.port}/0", socket_timeout=2)
    with pytest.raises(Exception):  # noqa: B017 - the exact error depends on redis-py
        await plain.ping()


METACHARACTER_NAMES = [
    "'); redis.call('FLUSHALL'); --",
    "]]..redis.call('DEL', KEYS[1])..[[",
    "\r\n*1\r\n$8\r\nFLUSHALL\r\n",
    "$-1\r\n:0\r\n+OK\r\n-ERR x",
    "%s %d {} } { %7B \\x00 \x00 \t",
    "名前-😀-ñ",
]


@pytest.mark.parametrize("name", METACHARACTER_NAMES, ids=range(len(METACHARACTER_NAMES)))
async def test_names_full_of_lua_and_resp_metacharacters_are_just_names(
    redis: aioredis.Redis, unique_name: str, name: str
) -> None:
    canary = f"canary:{unique_name}"
    await redis.set(canary, "alive")
    full = f"{unique_name}{name}"
    for strategy in SemaphoreInitStrategy:
        sem = await RedisSemaphore.create(
            redis, full, count=2, lease_ttl=5, semaphore_init_strategy=strategy
        )
        async with sem:
            assert (await sem.statistics()).available == 1
        assert await sem.get_count() == 2
        await sem.close()
        await redis.delete(*await redis.keys(f"redsync:semaphore:*{unique_name}*"))
    event = RedisEvent(redis, full)
    await event.set()
    await event.wait(timeout=1)
    await event.close()
    assert await redis.get(canary) == b"alive"
    # Every key the library wrote carries the name (percent-encoded braces aside).
    for key in await redis.keys(f"redsync:*{unique_name}*"):
        assert key.startswith(b"redsync:")
