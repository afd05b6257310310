"""What ``replicas=1`` costs: WAIT after acquisitions and releases, measured.

    python -m benchmarks.replicas [--cycles 2000] [--seconds 3]

Starts a private primary and one replica on loopback, then measures, in the
same run and interleaved: the PING round trip (the floor), an uncontended
acquire + release, and 8 tasks contending for one permit, with ``replicas=0``
and ``replicas=1``.  Prints medians and ratios; speed is judged by the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import redis
import redis.asyncio as aioredis

from redsync import RedisSemaphore

from .server import RedisServer


def _wait_linked(port: int, timeout: float = 20.0) -> None:
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if client.info("replication").get("master_link_status") == "up":
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError("the replica did not link up")


async def _ping_p50(client: aioredis.Redis, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _cycle_p50(sem: RedisSemaphore, n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await sem.acquire()
        await sem.release()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def _contended(sem: RedisSemaphore, seconds: float, tasks: int = 8) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with sem:
                done += 1

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return done / seconds


async def measure(port: int, cycles: int, seconds: float, rounds: int) -> dict[str, list[float]]:
    client = aioredis.Redis(port=port)
    results: dict[str, list[float]] = {
        k: [] for k in ("ping", "cycle0", "cycle1", "contended0", "contended1")
    }
    sems = {}
    for replicas in (0, 1):
        name = f"bench-replicas{replicas}-{uuid.uuid4().hex[:8]}"
        sems[replicas] = await RedisSemaphore.create(
            client, name, count=1, lease_ttl=30, replicas=replicas, replica_timeout=1.0
        )
    for _ in range(rounds):
        results["ping"].append(await _ping_p50(client, cycles))
        for replicas in (0, 1):
            results[f"cycle{replicas}"].append(await _cycle_p50(sems[replicas], cycles))
        for replicas in (0, 1):
            results[f"contended{replicas}"].append(await _contended(sems[replicas], seconds))
    shortfalls = (await sems[1].statistics()).replica_shortfalls
    for sem in sems.values():
        await sem.close()
    await client.aclose()
    if shortfalls:
        print(f"note: {shortfalls} writes were acknowledged by fewer replicas than asked")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replicas", description=__doc__)
    parser.add_argument("--cycles", type=int, default=2000, help="samples per latency figure")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a contended run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats (medians)")
    args = parser.parse_args(argv)
    primary = RedisServer().start()
    replica = None
    try:
        replica = RedisServer(["--replicaof", "127.0.0.1", str(primary.port)]).start()
        _wait_linked(replica.port)
        res = asyncio.run(measure(primary.port, args.cycles, args.seconds, args.rounds))
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()
    med = {k: statistics.median(v) for k, v in res.items()}
    us = 1e6
    print("| | replicas=0 | replicas=1 | ratio |")
    print("|---|---|---|---|")
    print(f"| PING round trip p50 (floor) | {med['ping'] * us:.0f} µs | | |")
    print(
        f"| uncontended acquire + release p50 | {med['cycle0'] * us:.0f} µs "
        f"({med['cycle0'] / med['ping']:.1f}x PING) | {med['cycle1'] * us:.0f} µs "
        f"({med['cycle1'] / med['ping']:.1f}x PING) | {med['cycle1'] / med['cycle0']:.2f}x |"
    )
    print(
        f"| 8 tasks, count=1: acquisitions/s | {med['contended0']:,.0f} | "
        f"{med['contended1']:,.0f} | {med['contended1'] / med['contended0']:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
