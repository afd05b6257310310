"""A worker process for the crash tests: takes permits, reports, then holds them.

Usage: python holder.py URL NAME COUNT LEASE_TTL PERMITS
Prints "held <instance id>" once it holds PERMITS permits, then waits for a
line on stdin: "release" releases them all and prints the outcome of each
("released" or the exception's class name), then "done".
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from redsync import RedisSemaphore


async def main() -> None:
    url, name, count, ttl, permits = sys.argv[1:6]
    client = aioredis.Redis.from_url(url)
    sem = await RedisSemaphore.create(client, name, count=int(count), lease_ttl=float(ttl))
    lost: list[int] = []
    sem.add_lease_lost_callback(lambda: lost.append(1))
    for _ in range(int(permits)):
        await sem.acquire()
    print("held", sem.instance_id, flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() == "release":
        # Let the watchdog run once after the pause, as a live process would.
        await asyncio.sleep(0)
        for _ in range(int(permits)):
            try:
                await sem.release()
                print("released", flush=True)
            except Exception as exc:
                print(type(exc).__name__, flush=True)
        print("lost-callbacks", len(lost), flush=True)
    print("done", flush=True)
    await sem.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
