"""redsync: fault-safe distributed synchronization primitives for asyncio, on Redis."""

from ._version import __version__
from .event import EventStatistics, RedisEvent
from .exceptions import (
    RedisEventClosedError,
    RedisEventError,
    RedisEventTimeoutError,
    RedisLockClosedError,
    RedisLockError,
    RedisLockLeaseLostError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
    RedisSemaphoreClosedError,
    RedisSemaphoreCountError,
    RedisSemaphoreCountMismatchError,
    RedisSemaphoreError,
    RedisSemaphoreLeaseLostError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
    RedsyncClosedError,
    RedsyncError,
    RedsyncLeaseLostError,
    RedsyncTimeoutError,
)
from .lock import LockStatistics, RedisLock
from .rwlock import ReadWriteLockStatistics, RedisReadWriteLock
from .semaphore import HolderInfo, RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics

__all__ = [
    "EventStatistics",
    "HolderInfo",
    "LockStatistics",
    "ReadWriteLockStatistics",
    "RedisEvent",
    "RedisEventClosedError",
    "RedisEventError",
    "RedisEventTimeoutError",
    "RedisLock",
    "RedisLockClosedError",
    "RedisLockError",
    "RedisLockLeaseLostError",
    "RedisLockNotAcquiredError",
    "RedisLockTimeoutError",
    "RedisReadWriteLock",
    "RedisSemaphore",
    "RedisSemaphoreClosedError",
    "RedisSemaphoreCountError",
    "RedisSemaphoreCountMismatchError",
    "RedisSemaphoreError",
    "RedisSemaphoreLeaseLostError",
    "RedisSemaphoreNotAcquiredError",
    "RedisSemaphoreTimeoutError",
    "RedsyncClosedError",
    "RedsyncError",
    "RedsyncLeaseLostError",
    "RedsyncTimeoutError",
    "SemaphoreInitStrategy",
    "SemaphoreStatistics",
    "__version__",
]
