"""Blocking twins of the primitives, for threads: Django views, Celery tasks, scripts.

::

    import redis
    from redsync.sync import Semaphore

    sem = Semaphore.create(redis.Redis(), "gpu", count=4)
    with sem:
        ...  # at most 4 holders across every process and thread
    sem.close()

They are a facade over the async classes, not a second implementation: every
call runs on one private event loop thread per process (see ``_runner``), so
every guarantee of :class:`redsync.RedisSemaphore` and
:class:`redsync.RedisEvent` holds unchanged.  They take a blocking client
(``redis.Redis``, a Sentinel ``master_for`` client, ``redis.cluster.RedisCluster``)
or a URL, and build the async client they need from its settings.

* **Ownership is per thread**: ``release()`` returns a permit the calling
  thread acquired if it has one (any thread may release, as with
  ``threading.Semaphore``).
* **fork()**: a child gets a working object on its own connections and
  holds nothing of its parent's (its ``release()`` raises NotAcquired).
* Calling from inside a running event loop raises (use the async classes
  there); lease-lost callbacks run on a worker thread, so they may call back.
* Ctrl-C during a wait cancels it (nothing is taken) and raises
  ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..event import EventStatistics, RedisEvent
from ..lock import LockStatistics, RedisLock
from ..rwlock import ReadWriteLockStatistics, RedisReadWriteLock
from ..semaphore import RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics
from . import _runner

__all__ = ["Event", "Lock", "ReadWriteLock", "Semaphore"]

T = TypeVar("T")


class _Facade:
    """What both facades share: the async half, rebuilt in a forked child."""

    _what = "object"

    def _init_facade(self, source: Any) -> None:
        self._source = source
        self._pid = -1
        self._closed = False
        self._client: Any = None
        self._async: Any = None

    async def _build(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _bind(self) -> Any:
        if self._pid != os.getpid():
            # First use, or the first in a forked child: the parent's async half
            # lives on a loop that does not exist here, and its holdings are the
            # parent's.  Start over on this process's own connections.
            if self._async is not None:  # the parent's: keep it, never finalize it here
                _runner.orphans.append((self._async, self._client))
            self._client = _runner.share_client(self._source)
            try:
                self._async = await self._build()
            except BaseException:
                self._client = self._async = None
                await _runner.unshare_client(self._source)
                raise
            self._pid = os.getpid()
        return self._async

    def _call(self, work: Callable[[Any], Coroutine[Any, Any, T]], what: str) -> T:
        if self._closed and self._pid == os.getpid():
            raise self._closed_error()

        async def run() -> T:
            return await work(await self._bind())

        return _runner.call(run(), f"{type(self).__name__}.{what}()")

    def _closed_error(self) -> Exception:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Close the async half and its client (idempotent)."""
        if self._pid == -1:  # never used: nothing to close
            self._closed = True
            _runner._open.discard(self)
            return
        if self._closed and self._pid == os.getpid():
            return
        try:
            self._call(self._shut, "close")
        finally:
            self._closed = True
            _runner._open.discard(self)

    async def _shut(self, obj: Any) -> None:
        """Close the async half ``obj`` and the client built for it."""
        await obj.close()
        await _runner.unshare_client(self._source)

    def _close_quietly(self) -> None:
        """At interpreter exit: close the async half and its client, bounded in time."""
        if self._pid != os.getpid() or self._closed:
            return
        try:
            self._call(lambda obj: asyncio.wait_for(self._shut(obj), _runner.SETTLE), "close")
        except Exception:
            pass
        self._closed = True


class _Leased(_Facade):
    """Lease-lost reporting, shared by the facades of primitives that hold leases."""

    _callbacks: list[Callable[[], object]]

    def _with_callbacks(self, obj: Any) -> Any:
        """``obj``, with the callbacks registered so far (on a fresh async half)."""
        for callback in self._callbacks:
            obj.add_lease_lost_callback(_on_worker(callback))
        return obj

    def add_lease_lost_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (on a worker thread) when something held here is lost."""
        self._callbacks.append(callback)
        wrapped = _on_worker(callback)

        async def add(obj: Any) -> None:
            obj.add_lease_lost_callback(wrapped)

        self._call(add, "add_lease_lost_callback")

    def wait_lease_lost(self, timeout: float | None = None) -> bool:
        """Block until something held here is found lost (True) or ``timeout`` passes (False)."""

        async def wait(obj: Any) -> bool:
            try:
                await asyncio.wait_for(obj.wait_lease_lost(), timeout)
            except asyncio.TimeoutError:
                return False
            return True

        return self._call(wait, "wait_lease_lost")


class Semaphore(_Leased):
    """The blocking twin of :class:`redsync.RedisSemaphore` (same methods, no ``await``)."""

    name: str
    _make: Callable[..., Any]
    _kwargs: dict[str, Any]

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("use Semaphore.create(...) or Semaphore.attach(...)")

    @classmethod
    def create(
        cls,
        redis_client: Any,
        name: str,
        *,
        count: int = 1,
        lease_ttl: float = 300.0,
        semaphore_init_strategy: SemaphoreInitStrategy = SemaphoreInitStrategy.LUA,
        key_prefix: str = "redsync:semaphore",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> Semaphore:
        """See :meth:`redsync.RedisSemaphore.create`."""
        kwargs = dict(
            count=count,
            lease_ttl=lease_ttl,
            semaphore_init_strategy=semaphore_init_strategy,
            key_prefix=key_prefix,
            replicas=replicas,
            replica_timeout=replica_timeout,
        )
        return cls._start(redis_client, name, RedisSemaphore.create, kwargs)

    @classmethod
    def attach(
        cls,
        redis_client: Any,
        name: str,
        *,
        timeout: float | None = 60.0,
        lease_ttl: float = 300.0,
        key_prefix: str = "redsync:semaphore",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> Semaphore:
        """See :meth:`redsync.RedisSemaphore.attach`."""
        kwargs = dict(
            timeout=timeout,
            lease_ttl=lease_ttl,
            key_prefix=key_prefix,
            replicas=replicas,
            replica_timeout=replica_timeout,
        )
        return cls._start(redis_client, name, RedisSemaphore.attach, kwargs)

    @classmethod
    def _start(
        cls, source: Any, name: str, make: Callable[..., Any], kwargs: dict[str, Any]
    ) -> Semaphore:
        self = cls.__new__(cls)
        self._init_facade(source)
        self.name = name
        self._make = make
        self._kwargs = kwargs
        self._callbacks = []
        # Builds it: errors raise here (and _bind gives its share of the client back).
        self._call(lambda sem: asyncio.sleep(0), "create")
        _runner._open.add(self)
        return self

    async def _build(self) -> RedisSemaphore:
        sem: RedisSemaphore = await self._make(self._client, self.name, **self._kwargs)
        return self._with_callbacks(sem)  # type: ignore[no-any-return]

    def _closed_error(self) -> Exception:
        from ..exceptions import RedisSemaphoreClosedError

        return RedisSemaphoreClosedError(f"semaphore {self.name!r} is closed")

    def acquire(self, timeout: float | None = None) -> None:
        """Take one permit (see :meth:`redsync.RedisSemaphore.acquire`), for this thread."""
        owner = threading.current_thread()
        self._call(lambda sem: sem._acquire_for(owner, timeout), "acquire")

    def release(self) -> None:
        """Return a permit, preferably one this thread acquired."""
        owner = threading.current_thread()
        self._call(lambda sem: sem._release_for(owner), "release")

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def locked(self) -> bool:
        """True if threads of this process are waiting in :meth:`acquire`."""
        return self._call(_locked, "locked")

    def statistics(self) -> SemaphoreStatistics:
        stats: SemaphoreStatistics = self._call(lambda sem: sem.statistics(), "statistics")
        return stats

    def get_count(self) -> int | None:
        count: int | None = self._call(lambda sem: sem.get_count(), "get_count")
        return count

    @property
    def instance_id(self) -> str:
        return self._call(_instance_id, "instance_id")

    def __repr__(self) -> str:
        return f"<redsync.sync.Semaphore {self.name!r}{' closed' if self._closed else ''}>"


class Event(_Facade):
    """The blocking twin of :class:`redsync.RedisEvent` (no I/O until first used)."""

    def __init__(self, redis_client: Any, name: str, *, key_prefix: str = "redsync:event") -> None:
        from .._core import validate

        self.name = validate.name(name)
        self._key_prefix = validate.key_prefix(key_prefix)
        self._init_facade(redis_client)
        _runner._open.add(self)

    async def _build(self) -> RedisEvent:
        return RedisEvent(self._client, self.name, key_prefix=self._key_prefix)

    def _closed_error(self) -> Exception:
        from ..exceptions import RedisEventClosedError

        return RedisEventClosedError(f"event {self.name!r} is closed")

    def set(self) -> None:
        self._call(lambda event: event.set(), "set")

    def wait(self, timeout: float | None = None) -> None:
        self._call(lambda event: event.wait(timeout), "wait")

    def clear(self) -> None:
        self._call(lambda event: event.clear(), "clear")

    def is_set(self) -> bool:
        pending: bool = self._call(lambda event: event.is_set(), "is_set")
        return pending

    def statistics(self) -> EventStatistics:
        stats: EventStatistics = self._call(lambda event: event.statistics(), "statistics")
        return stats

    def __repr__(self) -> str:
        return f"<redsync.sync.Event {self.name!r}{' closed' if self._closed else ''}>"


class Lock(_Leased):
    """The blocking twin of :class:`redsync.RedisLock` (no I/O until first used).

    Ownership is per thread: :meth:`owned`, :attr:`fence` and re-entrancy are
    the calling thread's; any thread may :meth:`release`.  There is no
    ``guarded()``: a thread cannot be cancelled, so run
    :meth:`wait_lease_lost` beside long critical sections instead.
    """

    def __init__(
        self,
        redis_client: Any,
        name: str,
        *,
        lease_ttl: float = 30.0,
        key_prefix: str = "redsync:lock",
        reentrant: bool = False,
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        from .._core import validate

        self.name = validate.name(name)
        if not isinstance(reentrant, bool):
            raise TypeError(f"reentrant must be True or False, got {reentrant!r}")
        self._kwargs = dict(
            lease_ttl=validate.lease_ttl(lease_ttl),
            key_prefix=validate.key_prefix(key_prefix),
            reentrant=reentrant,
            replicas=validate.replicas(replicas),
            replica_timeout=validate.replica_timeout(replica_timeout),
        )
        self._callbacks: list[Callable[[], object]] = []
        self._init_facade(redis_client)
        _runner._open.add(self)

    async def _build(self) -> RedisLock:
        lock = RedisLock(self._client, self.name, **self._kwargs)  # type: ignore[arg-type]
        return self._with_callbacks(lock)  # type: ignore[no-any-return]

    def _closed_error(self) -> Exception:
        from ..exceptions import RedisLockClosedError

        return RedisLockClosedError(f"lock {self.name!r} is closed")

    def acquire(self, timeout: float | None = None) -> int:
        """Take the lock for this thread; return its fence (as RedisLock.acquire)."""
        owner = threading.current_thread()
        fence: int = self._call(lambda lock: lock._acquire_for(owner, timeout), "acquire")
        return fence

    def release(self) -> None:
        """Release the lock held through this object (by any thread)."""
        self._call(lambda lock: lock.release(), "release")

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def owned(self) -> bool:
        """Whether the calling thread holds the lock."""
        owner = threading.current_thread()

        async def owned(lock: RedisLock) -> bool:
            return lock._owned_by(owner)

        return self._call(owned, "owned")

    @property
    def fence(self) -> int | None:
        """The calling thread's fence, or None if it does not hold the lock."""
        owner = threading.current_thread()

        async def fence(lock: RedisLock) -> int | None:
            return lock._fence_of_owner(owner)

        return self._call(fence, "fence")

    def locked(self) -> bool:
        """Whether somebody, anywhere, holds the lock."""
        held: bool = self._call(lambda lock: lock.locked(), "locked")
        return held

    def statistics(self) -> LockStatistics:
        stats: LockStatistics = self._call(lambda lock: lock.statistics(), "statistics")
        return stats

    def __repr__(self) -> str:
        return f"<redsync.sync.Lock {self.name!r}{' closed' if self._closed else ''}>"


class ReadWriteLock(_Leased):
    """The blocking twin of :class:`redsync.RedisReadWriteLock` (no I/O until first used).

    ``with rw.reader: ...`` and ``with rw.writer as fence: ...``; ownership
    (nested reads, the upgrade and downgrade rules, :attr:`_SyncWriter.fence`)
    is the calling thread's; any thread may release.
    """

    def __init__(
        self,
        redis_client: Any,
        name: str,
        *,
        lease_ttl: float = 30.0,
        key_prefix: str = "redsync:rwlock",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        from .._core import validate

        self.name = validate.name(name)
        self._kwargs = dict(
            lease_ttl=validate.lease_ttl(lease_ttl),
            key_prefix=validate.key_prefix(key_prefix),
            replicas=validate.replicas(replicas),
            replica_timeout=validate.replica_timeout(replica_timeout),
        )
        self._callbacks: list[Callable[[], object]] = []
        self._init_facade(redis_client)
        self.reader = _SyncReader(self)
        self.writer = _SyncWriter(self)
        _runner._open.add(self)

    async def _build(self) -> RedisReadWriteLock:
        rw = RedisReadWriteLock(self._client, self.name, **self._kwargs)  # type: ignore[arg-type]
        return self._with_callbacks(rw)  # type: ignore[no-any-return]

    def _closed_error(self) -> Exception:
        from ..exceptions import RedisLockClosedError

        return RedisLockClosedError(f"read-write lock {self.name!r} is closed")

    def statistics(self) -> ReadWriteLockStatistics:
        stats: ReadWriteLockStatistics = self._call(lambda rw: rw.statistics(), "statistics")
        return stats

    def __repr__(self) -> str:
        return f"<redsync.sync.ReadWriteLock {self.name!r}{' closed' if self._closed else ''}>"


def _ask(rw: ReadWriteLock, question: Callable[[RedisReadWriteLock], T], what: str) -> T:
    """A question about local state, answered on the loop thread (no I/O)."""

    async def ask(lock: RedisReadWriteLock) -> T:
        return question(lock)

    return rw._call(ask, what)


class _SyncReader:
    """``rw.reader`` of the blocking read-write lock."""

    def __init__(self, rw: ReadWriteLock) -> None:
        self._rw = rw

    def acquire(self, timeout: float | None = None) -> None:
        owner = threading.current_thread()
        self._rw._call(lambda rw: rw._read(owner, timeout), "reader.acquire")

    def release(self) -> None:
        owner = threading.current_thread()
        self._rw._call(lambda rw: rw._unread(owner), "reader.release")

    def owned(self) -> bool:
        owner = threading.current_thread()
        return _ask(self._rw, lambda rw: rw._owns_read(owner), "reader.owned")

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class _SyncWriter:
    """``rw.writer`` of the blocking read-write lock."""

    def __init__(self, rw: ReadWriteLock) -> None:
        self._rw = rw

    def acquire(self, timeout: float | None = None) -> int:
        owner = threading.current_thread()
        fence: int = self._rw._call(lambda rw: rw._acquire_write(owner, timeout), "writer.acquire")
        return fence

    def release(self) -> None:
        self._rw._call(lambda rw: rw._release_write(), "writer.release")

    def downgrade(self) -> None:
        self._rw._call(lambda rw: rw._downgrade(), "writer.downgrade")

    def owned(self) -> bool:
        owner = threading.current_thread()
        return _ask(self._rw, lambda rw: rw._owns_write(owner), "writer.owned")

    @property
    def fence(self) -> int | None:
        owner = threading.current_thread()
        return _ask(self._rw, lambda rw: rw._write_fence(owner), "writer.fence")

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        owner = threading.current_thread()
        self._rw._call(lambda rw: rw._end_write_block(owner), "writer.__exit__")


async def _locked(sem: RedisSemaphore) -> bool:
    return sem.locked()


async def _instance_id(sem: RedisSemaphore) -> str:
    return sem.instance_id


def _on_worker(callback: Callable[[], object]) -> Callable[[], None]:
    return lambda: _runner.run_callback(callback)
