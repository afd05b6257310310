"""The distributed event: :class:`RedisEvent` (``_event`` holds the class)."""

from ._event import EventStatistics, RedisEvent

__all__ = ["EventStatistics", "RedisEvent"]
