"""Waiting for an event's signal in a queue in Redis, told by a notice.

A waiting task takes a *member* of its instance (``<instance>.<n>``, one per
task waiting at a time) and runs ``wait.lua``: a pending signal is delivered
at once, or the member is queued as a numbered ticket.  ``set.lua`` hands a
new signal straight to the oldest live ticket (``handed[member]``) and
publishes a notice on the instance's channel; the waiting task then
delivers it to itself with ``ack.lua`` (handed -> acked, under the wait's
id), so a signal counts as delivered only once one wait has it, exactly
once.  A wait that ends otherwise runs ``leave.lua``.

Nothing here holds a connection while waiting: the notice comes through the
process's listener (:mod:`redsync._core.push`), and the leases of the
queued members are renewed in the process's shared renewal round trip.  A
notice is a shortcut only: the renewal, a timeout's ``leave`` and a gap's
look all find a signal handed over without one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoPermissionError, NoScriptError

from .._core.keys import KeySpace
from .._core.link import Command, Link, Script, retrying, text
from .._core.push import PushUnavailable, Subscription
from .._core.renewal import Batch, Renewal, renewer

__all__ = ["Queue"]

log = logging.getLogger("redsync")

SCRIPTS = {name: Script("redsync.event", name) for name in ("wait", "ack", "leave", "set", "renew")}

#: How long a queued member's lease lasts; renewed every third of it.
LEASE_MS = 15_000
#: How long the record of a delivery is kept, for retries after a lost reply.
ACK_RECORD_TTL_MS = 120_000


@dataclass(eq=False)
class _Wait:
    """One waiting task's wait: its member, id, ticket number and result."""

    member: str
    fut: asyncio.Future[str | None]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    #: The ticket number (None: not known yet).
    number: str | None = None
    #: Notices (signal, number) that came before the number was known.
    early: list[tuple[str, str]] = field(default_factory=list)


class Queue:
    """The push-mode waits of one :class:`~redsync.RedisEvent` instance."""

    def __init__(
        self,
        link: Link,
        keys: KeySpace,
        instance: str,
        name: str,
        closed_error: Callable[[], BaseException],
    ) -> None:
        self._link = link
        self._name = name
        self._instance = instance
        self._closed_error = closed_error
        self.signals = keys.key("signals")
        self.waiters = keys.key("waiters")
        self.leases = keys.key("leases")
        self.handed = keys.key("handed")
        self.acked = keys.key("acked")
        self.tickets = keys.key("tickets")
        #: The event's channel; an instance listens on "<channel>:<instance>".
        self.channel = keys.key("wake")
        self._sub: Subscription | None = None
        self._usable = True
        #: Refusals are remembered per key prefix and loop: one refused
        #: script per process (an ACL LOG entry), not one per instance.
        self._scope = self.channel.split("{", 1)[0]
        self._waits: dict[str, _Wait] = {}
        self._free: list[str] = []
        self._seq = 0
        self._renewal: Renewal | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._waits)

    @property
    def usable(self) -> bool:
        """False once the server refused this event's scripts or subscription."""
        if not self._usable:
            return False
        refused = _REFUSED.get(asyncio.get_running_loop())
        return refused is None or self._scope not in refused

    @usable.setter
    def usable(self, value: bool) -> None:
        self._usable = value

    def refused(self, exc: BaseException) -> None:
        """The server refused a script (no ``@scripting``): this process's
        events of this prefix wait on lanes and set with MULTI from now on."""
        self._usable = False
        _REFUSED.setdefault(asyncio.get_running_loop(), set()).add(self._scope)
        log.info("event %r: scripts refused (%s); waiting on blocking connections", self._name, exc)

    # -- one wait -------------------------------------------------------------

    async def get(self, wait: float | None, timeout_error: Callable[[], BaseException]) -> bool:
        """Wait for one signal (``wait`` seconds, None: forever); False when
        push mode is unavailable (then the caller waits on lanes)."""
        if self._closed:
            raise self._closed_error()
        if not self.usable:
            return False
        if self._sub is None:
            channel = f"{self.channel}:{self._instance}"
            self._sub = Subscription(self._link, channel, self._pushed, self._gap)
        sub = self._sub
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        item = _Wait(self._free.pop() if self._free else self._new_member(), loop.create_future())
        self._waits[item.member] = item
        settled = False
        try:
            while True:
                if self._closed:
                    raise self._closed_error()
                # Not subscribed (this instance has not had to wait lately):
                # only take a pending signal first, so a wait that finds one
                # is one script and subscribes to nothing.
                take_only, joined = not sub.active, sub.joined
                try:
                    status, value, listening = await retrying(
                        lambda _, take=take_only: self._enqueue(item, take),  # type: ignore[misc]
                        what="event wait",
                    )
                except NoPermissionError as exc:
                    self.refused(exc)
                    settled = True  # nothing was queued
                    return False
                if status == 1:
                    settled = True
                    return True
                if status < 0:
                    try:
                        await sub.start()  # before queueing: no notice can be missed
                    except PushUnavailable as exc:
                        self.usable = False
                        log.info("event %r: waiting on blocking connections (%s)", self._name, exc)
                        settled = True  # nothing was queued
                        return False
                    continue
                self._ensure_renewal()
                self._numbered(item, value)
                if not listening:
                    sub.misplaced(joined)
                timer = (
                    None if deadline is None else loop.call_at(deadline, _settle, item.fut, None)
                )
                try:
                    signal = await item.fut
                finally:
                    if timer is not None:
                        timer.cancel()
                if signal is None:  # time is up: leave, unless a signal came meanwhile
                    got = await retrying(lambda _: self._leave(item, keep=True), what="event wait")
                    settled = True
                    if got is None:
                        raise timeout_error()
                    return True
                if await retrying(
                    functools.partial(self._ack_call, item, signal), what="event wait"
                ):
                    settled = True
                    return True
                # The member's lease had run out and the signal went on (this
                # process stalled): queue again.
                item.fut = loop.create_future()
                item.number = None
        except BaseException:
            if not settled:
                # Cancelled, closed or failed midway: a signal that reached
                # this wait (handed, or even delivered) goes on to another.
                self._spawn(self._abandon(item))
            raise
        finally:
            if settled:
                self._end(item, reuse=True)

    def _new_member(self) -> str:
        member = f"{self._instance}.{self._seq}"
        self._seq += 1
        return member

    def _end(self, item: _Wait, *, reuse: bool) -> None:
        if self._waits.get(item.member) is item:
            del self._waits[item.member]
        if reuse:
            self._free.append(item.member)
        if not self._waits:
            self._stop_renewal()

    async def _abandon(self, item: _Wait) -> None:
        try:
            await retrying(lambda _: self._leave(item, keep=False), what="event wait")
        except Exception as exc:  # the lease runs out; a later wait hands it on
            log.debug("event %r: leaving the queue failed: %r", self._name, exc)
            self._end(item, reuse=False)
        else:
            self._end(item, reuse=True)

    def _numbered(self, item: _Wait, number: str | None) -> None:
        item.number = number
        early, item.early = item.early, []
        for signal, named in early:
            if named == number:
                _settle(item.fut, signal)

    # -- scripts ----------------------------------------------------------------

    async def _enqueue(self, item: _Wait, take_only: bool) -> tuple[int, str | None, bool]:
        """``wait.lua``: (1, signal, True) delivered, (0, number, listening)
        queued, (-1, None, True) nothing pending (``take_only``)."""
        reply = await self._link.script(
            SCRIPTS["wait"],
            [self.signals, self.waiters, self.leases, self.handed, self.acked, self.tickets],
            [item.member, item.id, LEASE_MS, self.channel, ACK_RECORD_TTL_MS, int(take_only)],
        )
        status = int(reply[0])
        if status == 1:
            return 1, text(reply[1]), True
        if status < 0:
            return -1, None, True
        return 0, text(reply[1]), bool(int(reply[2]))

    async def _ack_call(self, item: _Wait, signal: str, _: bool) -> bool:
        return await self._ack(item, signal)

    async def _ack(self, item: _Wait, signal: str) -> bool:
        reply = await self._link.script(
            SCRIPTS["ack"],
            [self.waiters, self.leases, self.handed, self.acked],
            [item.member, item.id, signal, ACK_RECORD_TTL_MS],
        )
        return bool(int(reply))

    async def _leave(self, item: _Wait, *, keep: bool) -> str | None:
        reply = await self._link.script(
            SCRIPTS["leave"],
            [self.signals, self.waiters, self.leases, self.handed, self.acked],
            [item.member, item.id, "1" if keep else "0", self.channel, ACK_RECORD_TTL_MS],
        )
        return None if reply is None else text(reply)

    # -- notices -------------------------------------------------------------------

    def _pushed(self, data: str) -> None:
        """A notice ``<member> <signal> <number>``, taken only by the wait that
        queued ticket ``number`` of ``member``."""
        member, signal, number = ([*data.split(" "), "", ""])[:3]
        item = self._waits.get(member)
        if item is None:
            return
        if item.number is None:
            item.early.append((signal, number))
        elif item.number == number:
            _settle(item.fut, signal)

    def _gap(self) -> None:
        """Notices may have been missed: look in the handed hash, and renew."""
        if self._waits:
            self._spawn(self._look())
            if self._renewal is not None:
                self._renewal.kick()

    async def _look(self) -> None:
        waits = dict(self._waits)
        if not waits:
            return
        found = await self._link.call("HMGET", self.handed, *waits)
        for (member, item), signal in zip(waits.items(), found):
            if signal is not None and self._waits.get(member) is item:
                _settle(item.fut, text(signal))

    # -- renewal ---------------------------------------------------------------------

    def _ensure_renewal(self) -> None:
        if self._renewal is None or self._renewal.stopped:
            self._renewal = renewer().add(self, LEASE_MS / 3000, f"event {self._name!r} waits")

    def _stop_renewal(self) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            self._spawn(renewal.stop(grace=0))

    def _renew_parts(self) -> tuple[list[str], list[Any], dict[str, _Wait], int]:
        waits = dict(self._waits)
        sub = self._sub
        active = sub is not None and sub.active
        channel = sub.channel if sub is not None and active else ""
        joined = sub.joined if sub is not None else -1
        args: list[Any] = [LEASE_MS, self.channel, channel, len(waits)]
        for member, item in waits.items():
            args += [member, item.number or ""]
        keys = [self.signals, self.waiters, self.leases, self.handed, self.tickets]
        return keys, args, waits, joined

    async def _renew_batch(self) -> Batch | None:
        if not self._waits:
            return None
        keys, args, waits, joined = self._renew_parts()
        command: Command = ("EVALSHA", SCRIPTS["renew"].sha, len(keys), *keys, *args)
        return Batch(self._link, [command], functools.partial(self._renewed, waits, joined))

    async def _renew_tick(self) -> None:
        if not self._waits:
            return
        keys, args, waits, joined = self._renew_parts()
        reply = await self._link.script(SCRIPTS["renew"], keys, args)
        await self._renewed(waits, joined, [reply], 0)

    async def _renewed(
        self, waits: dict[str, _Wait], joined: int, replies: list[Any] | BaseException, _: int
    ) -> None:
        if isinstance(replies, BaseException):
            return
        (reply,) = replies
        if isinstance(reply, NoScriptError):  # a restarted or flushed server
            await self._renew_tick()
            return
        reply = self._link.check(reply)
        if not int(reply[0]) and self._sub is not None:
            self._sub.misplaced(joined)
        queued = [text(v) for v in reply[1]]
        for member, number in zip(queued[::2], queued[1::2]):
            item = waits.get(member)
            if item is not None and self._waits.get(member) is item and item.number is None:
                self._numbered(item, number)
        for (member, item), signal in zip(waits.items(), reply[2:]):
            signal = text(signal)
            if self._waits.get(member) is item:
                if signal:
                    # Handed over (the notice was lost) or taken for a dropped
                    # ticket: the waiting task delivers it to itself.
                    _settle(item.fut, signal)
            elif member not in self._waits and member in self._free:
                # The wait ended while the renewal was on its way: what the
                # renewal queued or took for it goes on.
                self._free.remove(member)
                self._spawn(self._abandon(item))

    # -- lifetime ------------------------------------------------------------------

    def _spawn(self, step: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await step
            except Exception as exc:
                log.debug("event %r: %r", self._name, exc)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Fail every wait (each leaves the queue) and stop renewing."""
        self._closed = True
        for item in list(self._waits.values()):
            if not item.fut.done():
                item.fut.set_exception(self._closed_error())
                item.fut.exception()  # retrieved: its task may be gone
        for _ in range(3):
            await asyncio.sleep(0)  # let the waiting tasks start leaving
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=0.5)
        self._stop_renewal()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.close()
            except Exception as exc:
                log.debug("event %r: unsubscribing failed: %r", self._name, exc)


#: Per loop: the key prefixes whose scripts the server refused.
_REFUSED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[str]] = (
    weakref.WeakKeyDictionary()
)


def _settle(fut: asyncio.Future[str | None], value: str | None) -> None:
    if not fut.done():
        fut.set_result(value)
