"""Minimal reproductions of problems the chaos runner found.

    python -m devtools.chaos.repros lost-permit [--outage 1.5]
    python -m devtools.chaos.repros sentinel-stale

``lost-permit``: a SIGKILLed holder's permit is lost for good when no
surviving instance's renewal lands in the second half of the dead holder's
lease.  A semaphore of 2 permits (lease_ttl 2 s) has a survivor ("keeper")
connected through a fault proxy and a holder process taking one permit.  The
holder is SIGKILLed; shortly before the second half of its lease begins the
proxy holds the keeper's replies for ``--outage`` seconds (its commands still
reach the server), covering the lease deadline.  The holder's slot key expires
with the token inside at the deadline; the reclaim that runs afterwards finds
nothing to return; ``meta`` and ``pool`` still exist, so no recovery/refill
starts.  Expected: both permits available again; observed with an outage above
lease_ttl/2: one.

``sentinel-stale``: with redis-py 8, an idle RedisSemaphore whose client is a
Sentinel ``master_for`` client never renews again after a failover.  The
connection the library keeps between operations reconnects to its old
address (redis-py 8's auto-connect in ``send_packed_command`` bypasses
``SentinelManagedConnection.connect()``, which would ask the sentinels), so
every renewal hits the demoted master (READONLY, reported as
"The previous master is now a slave") or a dead port, forever.  With redis-py
5.0.8 the same code recovers after one failed renewal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import TESTS_DIR

HOLDER = str(Path(TESTS_DIR) / "workers" / "holder.py")
LEASE_TTL = 2.0


def _start_holder(url: str, name: str) -> subprocess.Popen[str]:
    """tests/workers/holder.py taking 1 of 2 permits."""
    return subprocess.Popen(
        [sys.executable, HOLDER, url, name, "2", str(LEASE_TTL), "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def lost_permit(outage: float) -> bool:
    """True if the permits all came back (no bug)."""
    import redis.asyncio as aioredis

    from devtools.proxy import FaultProxy
    from devtools.servers import RedisServer
    from redsync import RedisSemaphore, RedisSemaphoreTimeoutError

    name = "repro-lost-permit"
    server = RedisServer().start()
    try:
        async with FaultProxy(server.host, server.port) as proxy:
            direct = aioredis.Redis(host=server.host, port=server.port)
            keeper_client = aioredis.Redis(host=proxy.host, port=proxy.port, socket_timeout=None)
            keeper = await RedisSemaphore.create(keeper_client, name, count=2, lease_ttl=LEASE_TTL)
            holder = _start_holder(server.url, name)
            try:
                assert holder.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 20)
                assert line.startswith("held"), line
            finally:
                os.kill(holder.pid, signal.SIGKILL)
                holder.wait(10)
            holders = f"redsync:semaphore:{{{name}}}:holders"
            members: Any = await direct.zrange(holders, 0, -1, withscores=True)
            server_time: Any = await direct.time()
            sec, usec = int(server_time[0]), int(server_time[1])
            now_ms = sec * 1000 + usec // 1000
            deadline_ms = max(score for _, score in members)
            lead = LEASE_TTL / 2 + 0.05
            await asyncio.sleep(max(0.0, (deadline_ms - now_ms) / 1000 - lead))
            print(
                f"holder killed; holding the keeper's replies for {outage:g} s from "
                f"{lead:.2f} s before its lease deadline"
            )
            proxy.pause()
            await asyncio.sleep(outage)
            proxy.resume()
            await asyncio.sleep(LEASE_TTL)  # a renewal period or two for the keeper
            got = 0
            try:
                for _ in range(2):
                    await keeper.acquire(timeout=3)
                    got += 1
            except RedisSemaphoreTimeoutError:
                pass
            pool = await direct.lrange(f"redsync:semaphore:{{{name}}}:pool", 0, -1)
            print(f"a survivor could take {got} of 2 permits; pool now {pool!r}")
            for _ in range(got):
                await keeper.release()
            await keeper.close()
            for client in (keeper_client, direct):
                await client.aclose()
            return got == 2
    finally:
        server.stop()


async def sentinel_stale() -> bool:
    """True if the semaphore kept renewing after the failover (no bug)."""
    from devtools.topologies import SentinelTopology
    from redsync import RedisSemaphore

    from .conn import close_client, make_client

    setup = SentinelTopology(replicas=1, sentinels=3)
    await asyncio.to_thread(setup.start)
    try:
        spec = {
            "kind": "sentinel",
            "sentinels": [list(a) for a in setup.sentinel_addresses],
            "service": setup.service_name,
        }
        client: Any = make_client(spec, name="repro", socket_timeout=5.0)
        sem = await RedisSemaphore.create(client, "repro-sentinel", count=1, lease_ttl=3.0)
        await asyncio.sleep(1.5)
        new = await asyncio.to_thread(setup.failover, force_kill=False)
        print(f"failed over to port {new.port}; watching the renewals for 6 s")
        failures: list[str] = []
        original = sem._renew_once

        async def traced() -> None:
            try:
                await original()
            except Exception as exc:
                failures.append(repr(exc))
                raise

        sem._renew_once = traced  # type: ignore[method-assign]
        await asyncio.sleep(6)
        await sem.close()
        await close_client(client)
        print(f"{len(failures)} failed renewal(s) after the failover: {failures[:2]}")
        return len(failures) <= 1
    finally:
        await asyncio.to_thread(setup.stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.chaos.repros")
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("lost-permit")
    lp.add_argument("--outage", type=float, default=1.5, help="seconds (lease_ttl is 2 s)")
    sub.add_parser("sentinel-stale")
    a = p.parse_args(argv)
    ok = asyncio.run(lost_permit(a.outage) if a.what == "lost-permit" else sentinel_stale())
    print("OK" if ok else "REPRODUCED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
