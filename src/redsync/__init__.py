"""redsync: fault-safe distributed synchronization primitives for asyncio, on Redis."""

from ._version import __version__
from .event import EventStatistics, RedisEvent
from .exceptions import (
    RedisEventError,
    RedisEventTimeoutError,
    RedisSemaphoreCountError,
    RedisSemaphoreCountMismatchError,
    RedisSemaphoreError,
    RedisSemaphoreLeaseLostError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
    RedsyncError,
)
from .semaphore import HolderInfo, RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics

__all__ = [
    "EventStatistics",
    "HolderInfo",
    "RedisEvent",
    "RedisEventError",
    "RedisEventTimeoutError",
    "RedisSemaphore",
    "RedisSemaphoreCountError",
    "RedisSemaphoreCountMismatchError",
    "RedisSemaphoreError",
    "RedisSemaphoreLeaseLostError",
    "RedisSemaphoreNotAcquiredError",
    "RedisSemaphoreTimeoutError",
    "RedsyncError",
    "SemaphoreInitStrategy",
    "SemaphoreStatistics",
    "__version__",
]
