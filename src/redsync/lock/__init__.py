"""The distributed lock: :class:`RedisLock`, with fencing tokens."""

from ._lock import LockStatistics, RedisLock

__all__ = ["LockStatistics", "RedisLock"]
