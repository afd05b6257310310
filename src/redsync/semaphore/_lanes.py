"""The semaphore's blocking connections ("lanes"), for when it cannot queue.

Waiting in the semaphore's queue (see ``RedisSemaphore._queue_get``) needs
scripts and channel rights, and is not used with ``replicas``.  Otherwise a
few lanes, shared by every waiting task of the instance, block with BLMOVE
from the pool straight into a free leased slot of the instance; see
:mod:`redsync._core.waiting`.

:class:`SlotLanes` is what the dispatcher calls.  It works on its
semaphore's slots, so it uses the semaphore's internals: it is part of that
class, kept apart so the dispatcher's calls are not on the public class.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .._core.link import text
from .._core.waiting import Lane
from ._slot import Check, Phase

if TYPE_CHECKING:
    from ._semaphore import RedisSemaphore

__all__ = ["READ_GRACE", "SlotLanes"]

#: How much longer than its server-side timeout a blocking read may take.
READ_GRACE = 5.0


class SlotLanes:
    """The dispatcher's backend for one semaphore instance: moves permit tokens."""

    def __init__(self, sem: RedisSemaphore) -> None:
        self._sem = sem

    async def pull(self, lane: Lane, block: float | None) -> str | None:
        sem = self._sem
        slot = sem._free_slot()
        if slot is None:
            # Every permit this instance may hold is held or on its way back.
            if block is not None:
                await sem._slot_freed(min(1.0, block))
            return None
        slot.to(Phase.RESERVED)  # renewals leave it alone from now on
        try:
            loop = asyncio.get_running_loop()
            if not slot.registered or loop.time() - sem._last_renew > sem.lease_ttl / 2:
                # Never move a permit into a slot that is not (freshly) leased:
                # it could otherwise outlive the lease unnoticed.
                await sem._sync(slot)
            if not slot.registered:  # the renewal found a new generation: start over
                sem._clear(slot)
                return None
            lane.conn = conn = await sem._link.ensure(lane.conn)
            pool = sem._keys.key("pool")
        except BaseException:
            sem._clear(slot)
            raise
        lane.blocked = block is not None
        try:
            if block is not None:
                seconds = min(block, sem._block)
                command = ("BLMOVE", pool, slot.key, "LEFT", "RIGHT", seconds)
                reply = await sem._link.blocking(conn, command, read_timeout=seconds + READ_GRACE)
            else:
                (reply,) = await sem._link.run(conn, [("LMOVE", pool, slot.key, "LEFT", "RIGHT")])
            lane.blocked = False
            if reply is not None:
                # With replicas=N: durable before it is handed out.  The slot
                # stays reserved meanwhile, so a renewal cannot take the token
                # for an orphan; if this is cancelled, the renewal adopts it.
                await sem._link.replicate(conn)
        except BaseException:
            sem._unsure(slot, Check.CONTENT)
            raise
        finally:
            lane.blocked = False
        if reply is None:
            sem._clear(slot)
            return None
        return sem._hold(slot, text(reply)).token

    async def accept(self, lane: Lane, item: str) -> bool:
        return True  # the token already sits in this instance's leased slot

    async def refuse(self, lane: Lane, item: str) -> None:
        await self.give_back(lane, item)

    async def settle(self, lane: Lane) -> None:
        sem = self._sem
        # Slots, not lanes, carry state: a marked slot is settled by a renewal.
        sem._renewal.kick()

    async def give_back(self, lane: Lane, item: str) -> None:
        sem = self._sem
        holding = sem._held.pop(item, None)
        if holding is None:
            return
        if holding.lost:
            sem._vacate(holding)
        else:
            await sem._return(holding)
