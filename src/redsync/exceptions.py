"""The exception tree of redsync.

Every exception raised on purpose by this package derives from
:class:`RedsyncError`, so ``except RedsyncError`` catches all of them.  Three
bases cut across primitives: :class:`RedsyncTimeoutError` (also a builtin
``TimeoutError``), :class:`RedsyncClosedError` and
:class:`RedsyncLeaseLostError`; each primitive's own classes (the 2.0 names
among them) derive from its base and from these.
Errors from the Redis client itself (``redis.exceptions.ConnectionError``
after the library's own retries are exhausted, ``ResponseError`` for a
misconfigured server) are passed through unchanged.
"""

from __future__ import annotations

__all__ = [
    "RedisEventClosedError",
    "RedisEventError",
    "RedisEventTimeoutError",
    "RedisLockClosedError",
    "RedisLockError",
    "RedisLockLeaseLostError",
    "RedisLockNotAcquiredError",
    "RedisLockTimeoutError",
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
]


class RedsyncError(Exception):
    """Base class of every error raised by redsync.

    Raised without arguments, an error carries its class's
    :attr:`default_message`, so ``str(error)`` is never empty (as in 2.0.0).
    """

    #: The message of an instance built without arguments.
    default_message = "redsync error"

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (self.default_message,)))


class RedsyncTimeoutError(RedsyncError, TimeoutError):
    """Any wait of any primitive ran out of time; also a builtin :class:`TimeoutError`."""

    default_message = "timed out"


class RedsyncClosedError(RedsyncError):
    """The instance was closed (before or during the call)."""

    default_message = "the instance is closed"


class RedsyncLeaseLostError(RedsyncError):
    """Something held through a lease was found taken back (the lease ran out)."""

    default_message = "the lease was lost"


class RedisSemaphoreError(RedsyncError):
    """Base class of the errors raised by :class:`~redsync.RedisSemaphore`."""

    default_message = "semaphore error"


class RedisSemaphoreTimeoutError(RedisSemaphoreError, RedsyncTimeoutError):
    """``acquire()`` or ``attach()`` ran out of time.

    It is also a builtin :class:`TimeoutError`, so code written against
    ``asyncio.wait_for`` conventions catches it too.
    """

    default_message = "no semaphore permit could be acquired in time"


class RedisSemaphoreNotAcquiredError(RedisSemaphoreError):
    """``release()`` was called on an instance that holds no permit."""

    default_message = "release() called without a permit held; call acquire() first"


class RedisSemaphoreClosedError(RedisSemaphoreError, RedsyncClosedError):
    """The semaphore instance was closed; waiting tasks get this at close."""

    default_message = "the semaphore instance is closed"


class RedisSemaphoreLeaseLostError(RedisSemaphoreError, RedsyncLeaseLostError):
    """The permit being released was no longer held when it was released.

    This happens when the holder's lease expired (its process stalled for
    longer than ``lease_ttl``, or lost Redis for that long) and another
    instance returned the permit to the pool, or when the semaphore was
    re-created under a new generation while the permit was held.  Work done
    under that permit may have overlapped with another holder.
    """

    default_message = "the permit's lease had expired and it was reclaimed before release()"


class RedisSemaphoreCountError(RedisSemaphoreError, ValueError):
    """``count`` is not an integer from 1 to 4096."""

    def __init__(self, count: object) -> None:
        self.count = count
        super().__init__(f"count must be an int from 1 to 4096, got {count!r}")


class RedisSemaphoreCountMismatchError(RedisSemaphoreError):
    """``create()`` asked for a different count than the existing semaphore has."""

    def __init__(self, requested: int, actual: int) -> None:
        self.requested = requested
        self.actual = actual
        super().__init__(
            f"the semaphore already exists with count={actual}, but count={requested} "
            "was requested; use the same count, use attach() to join with the existing "
            "count, or pick another name"
        )


class RedisEventError(RedsyncError):
    """Base class of the errors raised by :class:`~redsync.RedisEvent`."""

    default_message = "event error"


class RedisEventClosedError(RedisEventError, RedsyncClosedError):
    """The event instance was closed; waiting tasks get this at close."""

    default_message = "the event instance is closed"


class RedisEventTimeoutError(RedisEventError, RedsyncTimeoutError):
    """``wait()`` ran out of time before a signal arrived."""

    default_message = "no event signal arrived in time"


class RedisLockError(RedsyncError):
    """Base class of the errors raised by :class:`~redsync.RedisLock` and
    :class:`~redsync.RedisReadWriteLock`; also raised for a second acquisition
    by the owning task of a lock that is not re-entrant."""

    default_message = "lock error"


class RedisLockTimeoutError(RedisLockError, RedsyncTimeoutError):
    """``acquire()`` ran out of time; also a builtin :class:`TimeoutError`."""

    default_message = "the lock could not be acquired in time"


class RedisLockNotAcquiredError(RedisLockError):
    """``release()`` was called with nothing held through this instance."""

    default_message = "release() called without the lock held; call acquire() first"


class RedisLockClosedError(RedisLockError, RedsyncClosedError):
    """The lock instance was closed; waiting tasks get this at close."""

    default_message = "the lock instance is closed"


class RedisLockLeaseLostError(RedisLockError, RedsyncLeaseLostError):
    """The lease of a held lock ran out (or could no longer be confirmed).

    Raised by ``release()`` when the lock had been taken back, and by a
    ``guarded()`` block whose body was stopped for that reason.  Work done
    under it may have overlapped with another holder, unless the resource
    checked the fence.
    """

    default_message = "the lock's lease had expired and it was taken back"
