"""One renewal loop per event loop, for every lease of every primitive instance.

A process holding a thousand semaphores must not run a thousand renewal
tasks, nor send a thousand round trips per period.  :class:`Renewer` is the
loop's single renewal task.  Each instance registers once and gets a
:class:`Renewal` handle (``kick()``, ``stop()``, ``ticks``, ``failures``).
When renewals fall due, the renewer asks each instance for a :class:`Batch`
(commands and a ``finish`` callback), groups the batches by the node that
serves them, and sends every group as **one pipelined round trip**, led by
one ``TIME`` that every ``finish`` receives.  Batches with the same ``dedupe``
key in one group (several idle instances of one semaphore) are sent once.
An instance that cannot be batched right now (a transaction, or a write
that must wait for replicas) returns no batch and its ``tick()`` runs on its
own, beside the group round trips.

Due times lie on a grid of half periods (0.6 to 1.1 periods after the last
renewal), and a scheduled round takes along every renewal due within 0.55
periods (a grid step), so instances with the same period share one round
per period whenever they started.  A failing renewal backs
off from 50 ms up to its period, per instance; it never ends the loop.
The task exists only while some instance is registered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .link import Command, Link, now_ms

log = logging.getLogger("redsync")

#: How far ahead of its due time (in periods) a renewal may run to share a round trip.
EARLY = 0.55
#: Seconds after which the loop stops waiting for a round and goes on beside it.
HELD_UP = 0.1


@dataclass(eq=False)
class Batch:
    """What one instance sends in a shared renewal round trip."""

    link: Link
    commands: Sequence[Command]
    #: Called with the replies (errors in place) and the server time in ms,
    #: or with the exception that failed the whole round trip.
    finish: Callable[[list[Any] | BaseException, int], Awaitable[None]]
    #: Batches with equal keys in one round trip are sent once.
    dedupe: object = None
    #: Seconds until the next renewal after this one succeeds.
    period: float | None = None
    #: ``finish`` sends nothing (it only reads the replies): it runs in the
    #: round itself, with no task of its own (the thousands of idle instances).
    inline: bool = False


class Renewable(Protocol):
    async def _renew_batch(self) -> Batch | None:
        """A batch for the shared round trip, or None to run ``_renew_tick`` alone."""

    async def _renew_tick(self) -> None:
        """Renew on its own (not batchable right now)."""


@dataclass(eq=False)
class Renewal:
    """One instance's place in the renewer: when it is due and how it fared."""

    owner: Renewable
    period: float
    what: str
    renewer: Renewer
    due: float = 0.0
    failures: int = 0
    ticks: int = 0
    stopped: bool = False
    #: The period of the last renewal (a batch may set its own).
    pace: float = 0.0
    #: The tick of this instance running on its own, if one is.
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _busy: bool = False

    @property
    def running(self) -> bool:
        return not self.stopped

    def kick(self) -> None:
        """Renew now instead of at the end of the period."""
        if self.stopped:
            return
        self.due = 0.0
        self.renewer.wake()

    async def stop(self, grace: float = 0.5) -> None:
        """Never renew again; wait at most ``grace`` s for a tick in flight."""
        if self.stopped:
            return
        self.stopped = True
        self.renewer.remove(self)
        task = self._task
        if task is None or task.done():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait([task], timeout=min(0.05, max(0.0, deadline - loop.time())))

    def _succeeded(self, now: float, period: float | None) -> None:
        self.failures = 0
        self.ticks += 1
        self.pace = period or self.period
        if self.due != 0.0:  # not kicked meanwhile
            self.due = next_due(now, self.pace)

    def _failed(self, now: float, exc: BaseException) -> None:
        self.failures += 1
        if self.failures in (1, 2, 4) or self.failures % 20 == 0:
            log.warning("%s failed (%d in a row): %r", self.what, self.failures, exc)
        if self.due != 0.0:
            self.due = now + min(0.05 * 2 ** (self.failures - 1), self.period)


class Renewer:
    """The event loop's renewal task; see the module docstring."""

    def __init__(self) -> None:
        self._members: dict[Renewal, None] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        #: Rounds in flight (each runs as its own task).
        self._rounds: set[asyncio.Task[None]] = set()
        #: Round trips sent (for tests and benchmarks).
        self.rounds = 0

    def add(self, owner: Renewable, period: float, what: str) -> Renewal:
        loop = asyncio.get_running_loop()
        renewal = Renewal(owner, period, what, self, due=loop.time() + period)
        self._members[renewal] = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop(), name="redsync renewals")
        else:
            self.wake()
        return renewal

    def remove(self, renewal: Renewal) -> None:
        self._members.pop(renewal, None)
        self.wake()

    def wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._members:
                now = loop.time()
                ready = [r for r in self._members if not r._busy]
                due = [r for r in ready if r.due <= now]
                if any(r.due > 0 for r in due):
                    # A scheduled round (not only kicks): take along what
                    # falls due soon, so that every instance shares it.
                    due = [r for r in ready if r.due <= now + EARLY * (r.pace or r.period)]
                if not due:
                    await self._sleep(min(r.due for r in ready) - now if ready else 1.0)
                    continue
                for renewal in due:
                    renewal._busy = True
                    if renewal.due == 0.0:
                        renewal.due = -1.0  # kicked: a kick during this round re-arms it
                # Rounds follow one another (one connection per node), but a
                # round held up (a node that stopped answering, a finish that
                # falls back to sending a script's source) goes on beside the
                # loop after HELD_UP: it delays only its own renewals, never
                # the next round of every other instance.
                task = loop.create_task(self._round_guarded(due))
                self._rounds.add(task)
                task.add_done_callback(self._round_done)
                await asyncio.wait([task], timeout=HELD_UP)
        finally:
            self._task = None

    def _round_done(self, task: asyncio.Task[None]) -> None:
        self._rounds.discard(task)
        self.wake()  # its renewals are ready again, with new due times

    async def _round_guarded(self, due: list[Renewal]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._round(due)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: never let it end every renewal
            log.exception("renewal round failed")
            for renewal in due:
                if renewal._busy and renewal._task is None:
                    renewal._failed(loop.time(), exc)
                    renewal._busy = False

    async def _sleep(self, delay: float) -> None:
        # A plain future and timer rather than wait_for(): wait_for can
        # swallow a cancellation that races its timeout on 3.10/3.11.
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(max(0.0, delay), _wake_up, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def _round(self, due: list[Renewal]) -> None:
        groups: dict[object, list[tuple[Renewal, Batch]]] = {}
        solo: list[Renewal] = []
        loop = asyncio.get_running_loop()
        for renewal in due:
            batch: Batch | None = None
            try:
                batch = await renewal.owner._renew_batch()
                if batch is None:
                    solo.append(renewal)
                else:
                    groups.setdefault(await batch.link.group(), []).append((renewal, batch))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if batch is not None:
                    # Built but never sent: its finish still runs (it may hold a lock).
                    await _finish_quietly(batch, exc)
                renewal._failed(loop.time(), exc)
                renewal._busy = False
        work: list[Awaitable[None]] = [self._send(items) for items in groups.values()]
        for renewal in solo:
            renewal._task = task = loop.create_task(self._tick(renewal))
            work.append(task)
        if len(work) == 1:
            await work[0]
        elif work:
            await asyncio.gather(*work)

    async def _tick(self, renewal: Renewal) -> None:
        loop = asyncio.get_running_loop()
        try:
            await renewal.owner._renew_tick()
        except asyncio.CancelledError:
            if not renewal.stopped:
                raise
        except Exception as exc:
            renewal._failed(loop.time(), exc)
        else:
            renewal._succeeded(loop.time(), None)
        finally:
            renewal._busy = False
            renewal._task = None

    async def _send(self, items: list[tuple[Renewal, Batch]]) -> None:
        commands: list[Command] = [("TIME",)]
        spans: list[tuple[int, int]] = []
        sent: dict[object, tuple[int, int]] = {}
        for _, batch in items:
            if batch.dedupe is not None and batch.dedupe in sent:
                spans.append(sent[batch.dedupe])
                continue
            span = (len(commands), len(commands) + len(batch.commands))
            commands.extend(batch.commands)
            spans.append(span)
            if batch.dedupe is not None:
                sent[batch.dedupe] = span
        outcome: list[Any] | BaseException
        try:
            outcome = await items[0][1].link.pipeline(commands, tolerant=True)
            server_now = now_ms(outcome[0])
            self.rounds += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome, server_now = exc, 0
        loop = asyncio.get_running_loop()
        left: list[asyncio.Task[None]] = []
        for (renewal, batch), (start, end) in zip(items, spans):
            # One after another (a finish that writes borrows a connection:
            # side by side they would open more), but one that takes longer
            # than HELD_UP (a fallback after NOSCRIPT to a node that stopped
            # answering) goes on beside the others instead of holding them up.
            step = self._finish(renewal, batch, outcome, start, end, server_now)
            if batch.inline:
                await step
                continue
            task = loop.create_task(step)
            done, _ = await asyncio.wait([task], timeout=HELD_UP)
            if not done:
                left.append(task)
        if left:
            await asyncio.wait(left)

    async def _finish(
        self,
        renewal: Renewal,
        batch: Batch,
        outcome: list[Any] | BaseException,
        start: int,
        end: int,
        server_now: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        replies = outcome if isinstance(outcome, BaseException) else outcome[start:end]
        try:
            await batch.finish(replies, server_now)
            if isinstance(replies, BaseException):
                raise replies
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            renewal._failed(loop.time(), exc)
        else:
            renewal._succeeded(loop.time(), batch.period)
        finally:
            renewal._busy = False


def next_due(now: float, period: float) -> float:
    """When a renewal done at ``now`` is due next: 0.6 to 1.1 periods later, on
    a grid of half periods, so instances with one period share their rounds
    whenever they started (with ``EARLY``, one round takes the other phase along)."""
    step = period / 2
    return math.ceil((now + 0.6 * period) / step) * step


async def _finish_quietly(batch: Batch, exc: BaseException) -> None:
    try:
        await batch.finish(exc, 0)
    except Exception:
        log.exception("finishing a renewal batch that was never sent failed")


_RENEWERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Renewer] = (
    weakref.WeakKeyDictionary()
)


def renewer() -> Renewer:
    """The running event loop's renewer."""
    loop = asyncio.get_running_loop()
    found = _RENEWERS.get(loop)
    if found is None:
        found = _RENEWERS[loop] = Renewer()
    return found


def _wake_up(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
