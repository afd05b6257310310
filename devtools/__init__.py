"""Development tooling for redsync, outside the wheel: private Redis servers
(servers.py), Cluster / Sentinel / TLS set-ups (topologies.py), a fault proxy
(proxy.py), waiting helpers, and the chaos runner (``python -m devtools.chaos``).

Used by the test suite, the chaos runner and the benchmarks; its own tests
are ``tests/test_infra.py``.  Nothing here but the chaos runner imports redsync.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["wait_until"]


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | None = None,
) -> None:
    """Await until ``predicate()`` is truthy, or fail.

    ``predicate`` may be a plain function or return an awaitable (an ``async
    def`` or a lambda calling one); it is called again every ``interval`` s.

    Raises AssertionError naming the predicate (or ``message``) when
    ``timeout`` seconds pass first. Use this instead of sleeping and hoping.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    what = message or getattr(predicate, "__qualname__", repr(predicate))
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            try:
                # Bound the predicate itself too: a hung await must not hang the test.
                result = await asyncio.wait_for(result, max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"condition not met within {timeout:g} s: {what} (predicate still awaiting)"
                ) from None
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(
                f"condition not met within {timeout:g} s: {what} (last value: {result!r})"
            )
        await asyncio.sleep(interval)
