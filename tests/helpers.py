"""Assertions about what Redis holds for a semaphore, shared by the semaphore tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from typing import Any

import redis.asyncio as aioredis
from devtools.servers import RedisServer

from redsync._core.keys import KeySpace

PREFIX = "redsync:semaphore"


def keyspace(name: str, prefix: str = PREFIX) -> KeySpace:
    return KeySpace(prefix, name)


async def keys_of(client: aioredis.Redis, name: str) -> list[str]:
    """Every key in Redis whose name contains ``name`` (tests use unique names)."""
    found = [k.decode() if isinstance(k, bytes) else k async for k in client.scan_iter(f"*{name}*")]
    return sorted(found)


async def tokens(client: aioredis.Redis, name: str, prefix: str = PREFIX) -> dict[str, list[str]]:
    """Where every permit token is: ``{"pool": [...], "<slot key>": [...]}``.

    A token handed to a queued waiter (``handed[member]``) counts as being in
    that member's slot, where its holder reports it.
    """
    ks = keyspace(name, prefix)
    where: dict[str, list[str]] = {}
    pool = await client.lrange(ks.key("pool"), 0, -1)
    where["pool"] = [t.decode() for t in pool]
    for key in await keys_of(client, name):
        if ":slot:" in key:
            items = await client.lrange(key, 0, -1)
            if not items:
                continue  # the slot expired between SCAN and LRANGE
            assert items[0] == b"", f"slot {key} lacks its marker: {items!r}"
            where[key] = [t.decode() for t in items[1:]]
    for member, token in (await client.hgetall(ks.key("handed"))).items():
        where.setdefault(ks.key(f"slot:{member.decode()}"), []).append(token.decode())
    return where


async def assert_permits(
    client: aioredis.Redis, name: str, count: int, *, free: int | None = None, **kw: Any
) -> None:
    """Exactly ``count`` distinct tokens exist (no loss, no duplicate)."""
    where = await tokens(client, name, **kw)
    every = [t for items in where.values() for t in items]
    assert len(every) == count, f"expected {count} permits, found {where}"
    assert len(set(every)) == count, f"duplicated permit in {where}"
    if free is not None:
        assert len(where["pool"]) == free, f"expected {free} free permits, found {where}"


def clients_named(server: RedisServer, name: str) -> list[dict[str, str]]:
    """CLIENT LIST entries called ``name`` (the redis-cli connection asking is not among them)."""
    found = []
    for line in server.cli("CLIENT", "LIST").splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if fields.get("name") == name:
            found.append(fields)
    return found


async def replica_linked(replica: RedisServer) -> bool:
    """The replica's link to its primary is up (for ``wait_until``)."""
    return "master_link_status:up" in replica.cli("INFO", "replication")


class WorkerProcess:
    """A Python worker script (``tests/workers``) talked to by lines on stdin/stdout."""

    def __init__(self, script: str, *args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def line(self, timeout: float = 20) -> str:
        assert self.proc.stdout is not None
        read = asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        return (await asyncio.wait_for(read, timeout)).strip()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        """Kill it if it still runs (resuming it first, should it be stopped)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
