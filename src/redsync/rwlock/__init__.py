"""The read-write lock: :class:`RedisReadWriteLock` (``rw.reader``, ``rw.writer``)."""

from ._rwlock import ReadWriteLockStatistics, RedisReadWriteLock

__all__ = ["ReadWriteLockStatistics", "RedisReadWriteLock"]
