"""A worker process for the read-write lock's crash tests.

Usage: python rwlock_holder.py URL NAME LEASE_TTL SIDE   (SIDE: reader or writer)
Prints "held <fence>" (0 for a reader) once it holds SIDE, then waits for a
line on stdin: "release" releases it and prints the outcome ("released" or
the exception's class name), then "done".
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

from redsync import RedisReadWriteLock


async def main() -> None:
    url, name, ttl, side = sys.argv[1:5]
    client = aioredis.Redis.from_url(url)
    rw = RedisReadWriteLock(client, name, lease_ttl=float(ttl))
    held = rw.reader if side == "reader" else rw.writer
    fence = await held.acquire()
    print("held", fence or 0, flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() == "release":
        await asyncio.sleep(0)  # let a renewal due after a pause run, as in a live process
        try:
            await held.release()
            print("released", flush=True)
        except Exception as exc:
            print(type(exc).__name__, flush=True)
    print("done", flush=True)
    await rw.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
