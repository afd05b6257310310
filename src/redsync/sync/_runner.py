"""The blocking facade's engine: one private event loop on one thread per process.

Every blocking call submits a coroutine to that loop and waits for it.  What
breaks such facades, and what this does about it:

* ``fork()``: the loop thread does not exist in the child.  The runner
  remembers its pid; in a child, the next call starts a fresh loop thread
  (facade objects rebuild their async halves there too, see ``Semaphore``).
* A call from inside a running event loop would block that loop while it
  waits: it raises at once and says to use the async classes.
* A call from the loop thread itself (a lease-lost callback calling back
  into the facade) would wait for itself for ever: callbacks run on a worker
  thread instead, and a call from the loop thread raises.
* Ctrl-C while waiting: ``KeyboardInterrupt`` cancels the coroutine, waits
  until its cancellation has run (a cancelled acquire takes nothing), and is
  raised again.
* Interpreter shutdown: the loop thread is a daemon, stopped at exit after
  the facade objects still open are closed (for at most a few seconds).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from ._clients import async_client, close_client

T = TypeVar("T")

#: How long exit and a Ctrl-C wait for the loop to settle what was running.
SETTLE = 5.0


class Runner:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="redsync-sync", daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError(
                f"redsync.sync: {what} was called from redsync's own event-loop thread "
                "(from inside a callback it runs); do the work elsewhere"
            )
        call = _Call(coro)
        try:
            self.loop.call_soon_threadsafe(call.start)
            return call.result()
        except KeyboardInterrupt:
            # Cancel the wait and let its cancellation run to the end (nothing
            # is then taken), then let the interrupt through.  This holds
            # wherever the interrupt lands after the call was made.
            self.loop.call_soon_threadsafe(call.cancel)
            call.finished.wait(SETTLE)
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(SETTLE)


class _Call(Generic[T]):
    """One blocking call's coroutine on the loop, and when it has really finished.

    ``asyncio.run_coroutine_threadsafe`` marks its future cancelled at once,
    before the coroutine's own cancellation has run; a Ctrl-C must wait for
    that (a cancelled acquire gives back what it took), so this tracks the
    task itself.
    """

    __slots__ = ("coro", "finished", "task")

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self.coro = coro
        self.task: asyncio.Task[T] | None = None
        self.finished = threading.Event()

    def start(self) -> None:  # on the loop
        if self.finished.is_set():
            return  # cancelled before it started
        self.task = asyncio.ensure_future(self.coro)
        self.task.add_done_callback(lambda _: self.finished.set())

    def cancel(self) -> None:  # on the loop
        if self.task is not None:
            self.task.cancel()
        elif not self.finished.is_set():
            # The interrupt came before start() was queued: it never runs.
            self.coro.close()
            self.finished.set()

    def result(self) -> T:
        self.finished.wait()
        assert self.task is not None
        return self.task.result()


_lock = threading.Lock()
_runner: Runner | None = None
#: Open facade objects, closed at interpreter exit (each has ``_close_quietly``).
_open: set[Any] = set()


def runner() -> Runner:
    """This process's runner (a new one in a forked child)."""
    global _runner
    with _lock:
        if _runner is None or _runner.pid != os.getpid():
            _open.clear()  # objects of the parent; theirs are not ours to close
            _runner = Runner()
        return _runner


def call(coro: Coroutine[Any, Any, T], what: str) -> T:
    """Run ``coro`` on the private loop and return its result, blocking."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            f"redsync.sync: {what} blocks, and was called inside a running event loop; "
            "use the async classes (redsync.RedisSemaphore, redsync.RedisEvent) there"
        )
    return runner().run(coro, what)


def run_callback(fn: Any) -> None:
    """Run a user callback on a worker thread: it may call back into the facade."""
    threading.Thread(target=fn, name="redsync-callback", daemon=True).start()


def _at_exit() -> None:
    current = _runner
    if current is None or current.pid != os.getpid() or not current.thread.is_alive():
        return
    for obj in list(_open):
        try:
            obj._close_quietly()
        except Exception:
            pass
    current.stop()


#: The parent's async objects, in a forked child: kept, never finalized here.
orphans: list[Any] = []
#: One async client per source (a URL, or a blocking client object) and process,
#: shared by every facade object built from it: [source, client, users].  So a
#: thousand facade objects on one client share one pool and its few kept
#: connections, as the async classes do.
_shared: dict[object, list[Any]] = {}


def _source_key(source: Any) -> object:
    return ("url", source) if isinstance(source, str) else ("client", id(source))


def share_client(source: Any) -> Any:
    """The process's async client for ``source`` (on the loop thread), one more user."""
    key = _source_key(source)
    entry = _shared.get(key)
    if entry is None:
        # The source itself is kept in the entry, so its id is not reused meanwhile.
        entry = _shared[key] = [source, async_client(source), 0]
    entry[2] += 1
    return entry[1]


async def unshare_client(source: Any) -> None:
    """One user fewer; the last one closes the client."""
    key = _source_key(source)
    entry = _shared.get(key)
    if entry is None:
        return
    entry[2] -= 1
    if entry[2] <= 0:
        del _shared[key]
        await close_client(entry[1])


def _after_fork_in_child() -> None:
    global _lock, _runner
    if _runner is not None:
        # The parent's loop, copied into this process, still holds the parent's
        # epoll descriptor, and an epoll instance is shared across fork():
        # a connection of the parent finalized here would remove its socket
        # from the *parent's* epoll set, and the parent's next read would
        # hang for ever.  A closed loop touches nothing.
        _runner.loop._closed = True  # type: ignore[attr-defined]
    orphans.extend(_shared.values())  # the parent's clients
    _shared.clear()
    # Another thread of the parent may have held the lock when it forked.
    _lock = threading.Lock()
    _runner = None
    _open.clear()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
