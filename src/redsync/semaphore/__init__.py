"""The distributed counting semaphore: :class:`RedisSemaphore`.

``_semaphore`` holds the public class and its local state, ``_ops`` every
state change (Lua scripts in ``lua/``, or WATCH/MULTI without scripting).
"""

from ._semaphore import HolderInfo, RedisSemaphore, SemaphoreInitStrategy, SemaphoreStatistics

__all__ = ["HolderInfo", "RedisSemaphore", "SemaphoreInitStrategy", "SemaphoreStatistics"]
