"""Argument checks shared by every primitive.

Each check raises before anything is sent to Redis, names the parameter and
states the allowed values, so bad input never leaves half-written state.
"""

from __future__ import annotations

import math
from typing import Any

MAX_SECONDS = 10_000_000.0  # about 115 days: far beyond any real wait, well inside Redis limits
MIN_LEASE_TTL = 0.1


def _number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{param} must be a number of seconds or None, got {type(value).__name__}")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{param} must be a number of seconds or None, got NaN")
    return result


def timeout(value: object, param: str = "timeout") -> float | None:
    """Normalise a wait timeout.

    ``None`` and ``+inf`` mean "wait as long as it takes"; any value ``<= 0``
    means one attempt that does not block.  NaN and non-numbers are errors.
    """
    if value is None:
        return None
    result = _number(value, param)
    if result == math.inf:
        return None
    return max(result, 0.0)


def lease_ttl(value: object) -> float:
    result = _number(value, "lease_ttl")
    if not MIN_LEASE_TTL <= result <= MAX_SECONDS:
        raise ValueError(
            f"lease_ttl must be from {MIN_LEASE_TTL} to {MAX_SECONDS:.0f} seconds, got {value!r}"
        )
    return result


MAX_REPLICAS = 1000
MIN_REPLICA_TIMEOUT = 0.001
MAX_REPLICA_TIMEOUT = 3600.0


def replicas(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"replicas must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_REPLICAS:
        raise ValueError(f"replicas must be from 0 to {MAX_REPLICAS}, got {value!r}")
    return value


def replica_timeout(value: object) -> float:
    result = _number(value, "replica_timeout")
    if not MIN_REPLICA_TIMEOUT <= result <= MAX_REPLICA_TIMEOUT:
        raise ValueError(
            f"replica_timeout must be from {MIN_REPLICA_TIMEOUT} to {MAX_REPLICA_TIMEOUT:.0f} "
            f"seconds (WAIT never waits forever here), got {value!r}"
        )
    return result


def name(value: object, param: str = "name") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{param} must be a non-empty str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{param} must be a non-empty str")
    return value


def client(value: Any) -> Any:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    if not isinstance(value, (Redis, RedisCluster)):
        raise TypeError(
            "redis_client must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster "
            "client (for example redis.asyncio.Redis.from_url(url), or a Sentinel's "
            "master_for(...)), got "
            f"{type(value).__module__}.{type(value).__qualname__}"
        )
    return value


def key_prefix(value: object) -> str:
    """The prefix as keys use it: trailing ``:`` are dropped, as 2.0.0 did, so
    ``"app:"`` and ``"app"`` name the same primitives."""
    given = name(value, "key_prefix")
    prefix = given.rstrip(":")
    if not prefix:
        raise ValueError(f"key_prefix must contain something other than ':', got {given!r}")
    first = prefix.find("{")
    if first != -1 and prefix[first + 1 : first + 2] == "}":
        raise ValueError(
            "key_prefix must not contain an empty hash tag '{}' before any other "
            f"'{{...}}': it would spread one primitive's keys over cluster slots, got {given!r}"
        )
    return prefix
