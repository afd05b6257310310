"""A worker process for the lock's crash tests: takes a lock, reports, then holds it.

Usage: python lock_holder.py URL NAME LEASE_TTL
Prints "held <fence> <time.monotonic()>" once it holds the lock, then waits
for a line on stdin:
"release" releases it and prints the outcome ("released" or the exception's
class name), then "done".
"""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as aioredis

from redsync import RedisLock


async def main() -> None:
    url, name, ttl = sys.argv[1:4]
    client = aioredis.Redis.from_url(url)
    lock = RedisLock(client, name, lease_ttl=float(ttl))
    fence = await lock.acquire()
    print("held", fence, time.monotonic(), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() == "release":
        await asyncio.sleep(0)  # let a renewal due after a pause run, as in a live process
        try:
            await lock.release()
            print("released", flush=True)
        except Exception as exc:
            print(type(exc).__name__, flush=True)
    print("done", flush=True)
    await lock.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
