"""One adapter per library, all behind the same small async interface.

A :class:`Family` lives in one worker process and stands for one semaphore
(or lock) name.  It hands out one :class:`Handle` per task.  How a library is
meant to be used decides what a handle is:

* ``ours`` (redsync from this repository): one ``RedisSemaphore`` per
  process, shared by all its tasks (the documented usage).
* ``lock`` (redsync from this repository): one ``RedisLock`` per process,
  shared by all its tasks; each acquisition also gets its fence.
* ``rs2`` (redsync 2.0.0 from PyPI): one ``RedisSemaphore`` per task, since an
  instance tracks a single acquisition (a plain ``_acquired`` flag).
* ``redis_py_lock``: one ``redis.asyncio.lock.Lock`` per task (its token is
  per object), with the library's default polling interval (``sleep=0.1``).
* ``pottery``: one ``AIORedlock`` per task, one master, default retry delay.
* ``redis_lock`` (python-redis-lock): synchronous; each task's calls run in a
  thread of a dedicated pool (one thread per task), on a sync client.

Only ``ours`` and ``rs2`` support ``count > 1``; the others are mutexes.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis

LIBS: dict[str, str] = {
    "ours": "redsync (this repo)",
    "lock": "redsync RedisLock (this repo)",
    "rs2": "redsync 2.0.0",
    "redis_py_lock": "redis-py asyncio Lock",
    "pottery": "pottery AIORedlock",
    "redis_lock": "python-redis-lock (threads)",
}
MUTEX_ONLY = frozenset({"lock", "redis_py_lock", "pottery", "redis_lock"})


def supports(lib: str, count: int) -> bool:
    return count == 1 or lib not in MUTEX_ONLY


class Handle(Protocol):
    async def acquire(self) -> None: ...

    async def release(self) -> None: ...


def async_client(port: int, client_name: str, max_connections: int = 100) -> aioredis.Redis:
    return aioredis.Redis(
        host="127.0.0.1", port=port, client_name=client_name, max_connections=max_connections
    )


class Family:
    """Handles on one name for one library, in one process."""

    def __init__(
        self,
        lib: str,
        port: int,
        name: str,
        *,
        count: int,
        lease_ttl: float,
        client_name: str,
        max_connections: int = 100,
    ) -> None:
        self.lib = lib
        self.port = port
        self.name = name
        self.count = count
        self.lease_ttl = lease_ttl
        self.client_name = client_name
        self.max_connections = max(100, max_connections)
        self._closers: list[Callable[[], Any]] = []
        self._shared: Any = None
        self._client: aioredis.Redis | None = None
        self._sync_client: redis.Redis | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self, tasks: int) -> None:
        if not supports(self.lib, self.count):
            raise ValueError(f"{self.lib} supports count=1 only")
        if self.lib == "redis_lock":
            self._sync_client = redis.Redis(
                host="127.0.0.1",
                port=self.port,
                client_name=self.client_name,
                max_connections=self.max_connections,
            )
            self._pool = ThreadPoolExecutor(max_workers=tasks + 4, thread_name_prefix="lock")
            return
        self._client = async_client(self.port, self.client_name, self.max_connections)
        if self.lib == "ours":
            from redsync import RedisSemaphore

            self._shared = await RedisSemaphore.create(
                self._client, self.name, count=self.count, lease_ttl=self.lease_ttl
            )
        if self.lib == "lock":
            from redsync import RedisLock

            self._shared = RedisLock(self._client, self.name, lease_ttl=self.lease_ttl)

    async def handle(self) -> Handle:
        if self.lib in ("ours", "lock"):
            return _Semaphore(self._shared)
        if self.lib == "rs2":
            from redsync import RedisSemaphore

            assert self._client is not None
            sem = await RedisSemaphore.create(
                self._client, self.name, count=self.count, lease_ttl=self.lease_ttl
            )
            self._closers.append(sem.close)
            return _Semaphore(sem)
        if self.lib == "redis_py_lock":
            from redis.asyncio.lock import Lock

            assert self._client is not None
            return _AsyncLock(Lock(self._client, self.name, timeout=self.lease_ttl))
        if self.lib == "pottery":
            from pottery import AIORedlock

            assert self._client is not None
            lock = AIORedlock(
                key=self.name, masters={self._client}, auto_release_time=self.lease_ttl
            )
            return _AsyncLock(lock)
        if self.lib == "redis_lock":
            import redis_lock

            assert self._sync_client is not None and self._pool is not None
            expire = max(1, round(self.lease_ttl))
            return _ThreadLock(
                redis_lock.Lock(self._sync_client, self.name, expire=expire), self._pool
            )
        raise ValueError(f"unknown library {self.lib!r}")

    async def close(self) -> None:
        if self.lib in ("ours", "lock") and self._shared is not None:
            await self._shared.close()
        for closer in self._closers:
            await closer()
        if self._client is not None:
            await self._client.aclose()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._sync_client is not None:
            self._sync_client.close()


class _Semaphore:
    __slots__ = ("_sem",)

    def __init__(self, sem: Any) -> None:
        self._sem = sem

    async def acquire(self) -> None:
        await self._sem.acquire()

    async def release(self) -> None:
        await self._sem.release()


class _AsyncLock:
    __slots__ = ("_lock",)

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    async def acquire(self) -> None:
        if not await self._lock.acquire():
            raise RuntimeError("lock not acquired")

    async def release(self) -> None:
        await self._lock.release()


class _ThreadLock:
    __slots__ = ("_lock", "_pool")

    def __init__(self, lock: Any, pool: ThreadPoolExecutor) -> None:
        self._lock = lock
        self._pool = pool

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(self._pool, self._lock.acquire):
            raise RuntimeError("lock not acquired")

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._lock.release)


_DISTRIBUTIONS = {
    "ours": "redsync",
    "lock": "redsync",
    "rs2": "redsync",
    "redis_py_lock": "redis",
    "pottery": "pottery",
    "redis_lock": "python-redis-lock",
}
_MODULES = {
    "ours": "redsync",
    "lock": "redsync",
    "rs2": "redsync",
    "redis_py_lock": "redis.asyncio.lock",
    "pottery": "pottery",
    "redis_lock": "redis_lock",
}


def probe(lib: str) -> dict[str, Any]:
    """What this interpreter would run for ``lib``: versions, or why it cannot."""
    info: dict[str, Any] = {
        "lib": lib,
        "redis_py": redis.__version__,
        "hiredis": importlib.util.find_spec("hiredis") is not None,
    }
    try:
        module = importlib.import_module(_MODULES[lib])
        info["version"] = importlib.metadata.version(_DISTRIBUTIONS[lib])
        info["path"] = getattr(module, "__file__", None)
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
        return info
    if lib == "rs2" and info["version"] != "2.0.0":
        info["error"] = f"expected redsync 2.0.0, found {info['version']}"
    if lib in ("ours", "lock") and "site-packages/redsync/" in str(info["path"]):
        info["error"] = f"expected redsync from this repository, found {info['path']}"
    return info
