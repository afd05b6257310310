"""redsync: fault-safe distributed synchronization primitives for asyncio, on Redis."""

from ._version import __version__
from .event import EventStatistics, RedisEvent
from .exceptions import (
    RedisEventClosedError,
    RedisEventError,
    RedisEventTimeoutError,
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
from .semaphore import HolderInfo, RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics

__all__ = [
    "EventStatistics",
    "HolderInfo",
    "RedisEvent",
    "RedisEventClosedError",
    "RedisEventError",
    "RedisEventTimeoutError",
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
