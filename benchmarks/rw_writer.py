"""The writer of the read-write lock case, in a process of its own.

Usage: python -m benchmarks.rw_writer PORT NAME.  For every line "go" on
stdin it takes the writer, prints "<asked> <registered> <in>" (monotonic
seconds: when it called acquire(), when its entry was registered, when it
got in) and releases it; "stop" ends it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import redis.asyncio as aioredis

from redsync import RedisReadWriteLock


async def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    client = aioredis.Redis(host="127.0.0.1", port=port)
    rw = RedisReadWriteLock(client, name, lease_ttl=30.0)
    registered = [0.0]
    want = rw._want

    async def timed_want(write: Any) -> None:
        await want(write)
        registered[0] = time.monotonic()

    rw._want = timed_want  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line != "go":
                break
            asked = time.monotonic()
            async with rw.writer:
                got = time.monotonic()
            print(f"{asked} {registered[0]} {got}", flush=True)
    finally:
        await rw.close()
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
