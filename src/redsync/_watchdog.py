"""A periodic background task that outlives transient errors and stops at once."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger("redsync")


class Watchdog:
    """Calls ``tick`` every ``period`` seconds (±20 % jitter, so instances
    started together do not renew in lock-step), or sooner when kicked.

    A failing tick is logged and retried with backoff from 50 ms up to the
    period; the loop only ends through :meth:`stop`.  ``stop`` cancels the
    task and waits at most ``grace`` seconds, so closing never hangs on a
    renewal stuck behind a dead connection.
    """

    def __init__(self, period: float, tick: Callable[[], Awaitable[None]], what: str) -> None:
        self.period = period
        self._tick = tick
        self._what = what
        self._kicked = False
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.ticks = 0
        self._stopped = False

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    def kick(self) -> None:
        """Run the next tick now instead of at the end of the period."""
        self._kicked = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self, grace: float = 0.5) -> None:
        # The flag ends the loop even if a cancellation is swallowed on the
        # way (asyncio.wait_for inside redis-py can drop one on Python <= 3.11).
        self._stopped = True
        self.kick()
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while not task.done() and loop.time() < deadline:
            task.cancel()
            await asyncio.wait([task], timeout=min(0.05, max(0.0, deadline - loop.time())))

    async def _loop(self) -> None:
        while not self._stopped:
            if self.failures:
                delay = min(0.05 * 2 ** (self.failures - 1), self.period)
            else:
                delay = self.period * random.uniform(0.8, 1.2)
            if not self._kicked:
                # A plain future and timer rather than wait_for(): wait_for can
                # swallow a cancellation that races its timeout on 3.10/3.11.
                loop = asyncio.get_running_loop()
                self._wake = wake = loop.create_future()
                timer = loop.call_later(delay, _wake_up, wake)
                try:
                    await wake
                finally:
                    timer.cancel()
                    self._wake = None
            self._kicked = False
            if self._stopped:
                return
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("%s failed (%d in a row): %r", self._what, self.failures, exc)
            else:
                self.failures = 0
                self.ticks += 1


def _wake_up(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
