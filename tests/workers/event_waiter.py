"""A worker process that waits on an event, for the crash tests.

Usage: python event_waiter.py URL NAME LEASE_MS BLOCK_S
Shortens the inbox lease (LEASE_MS) and the longest block (BLOCK_S) so a
test need not wait the default 20 s, prints "waiting" and waits forever.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

import redsync.event._event
from redsync import RedisEvent


async def main() -> None:
    url, name, lease_ms, block = sys.argv[1:5]
    redsync.event._event.INBOX_LEASE_MS = int(lease_ms)
    redsync.event._event.MAX_BLOCK = float(block)
    client = aioredis.Redis.from_url(url)
    event = RedisEvent(client, name)
    task = asyncio.ensure_future(event.wait())
    print("waiting", flush=True)
    await task
    print("got", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
