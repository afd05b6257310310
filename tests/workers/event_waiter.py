"""A worker process that waits on an event, for the crash tests.

Usage: python event_waiter.py URL NAME LEASE_MS BLOCK_S [MODE]
Shortens the inbox lease and the queue's lease (LEASE_MS) and the longest
block (BLOCK_S) so a test need not wait the default 15-20 s, prints
"waiting" and waits forever.  MODE "lanes" waits on blocking connections,
"queue" (the default) in the event's queue in Redis.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis

import redsync.event._lanes
import redsync.event._queue
from redsync import RedisEvent


async def main() -> None:
    url, name, lease_ms, block = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else "queue"
    redsync.event._lanes.INBOX_LEASE_MS = int(lease_ms)
    redsync.event._lanes.MAX_BLOCK = float(block)
    redsync.event._queue.LEASE_MS = int(lease_ms)
    client = aioredis.Redis.from_url(url)
    event = RedisEvent(client, name)
    if mode == "lanes":
        event._queue.usable = False
    task = asyncio.ensure_future(event.wait())
    print("waiting", flush=True)
    await task
    print("got", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
