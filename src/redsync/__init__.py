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
from .semaphore import HolderInfo, RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics

__all__ = [
    "EventStatistics",
    "HolderInfo",
    "LockStatistics",
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
