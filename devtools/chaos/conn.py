"""Clients from a JSON-able connection spec, shared by the runner and its workers.

A spec is one of::

    {"kind": "standalone", "host": "127.0.0.1", "port": 1234}
    {"kind": "cluster", "nodes": [["127.0.0.1", 1234], ...]}
    {"kind": "sentinel", "sentinels": [["127.0.0.1", 1234], ...], "service": "name"}

Every address must be loopback.
"""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

__all__ = [
    "REPLICA_OPTION_NAMES",
    "ConnSpec",
    "close_client",
    "make_client",
    "optional_kwargs",
    "replica_kwargs",
]

ConnSpec = dict[str, Any]


def _loopback(host: str) -> str:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the chaos runner only talks to loopback addresses, not {host!r}")
    return host


def make_client(spec: ConnSpec, *, name: str, socket_timeout: float | None) -> Any:
    """A redis.asyncio client (Redis or RedisCluster) for ``spec``, named ``name``.

    ``socket_timeout`` applies to every read and to connecting.
    """
    kind = spec["kind"]
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "client_name": name,
    }
    if kind == "standalone":
        return aioredis.Redis(host=_loopback(spec["host"]), port=int(spec["port"]), **common)
    if kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(_loopback(h), int(p)) for h, p in spec["nodes"]]
        return RedisCluster(startup_nodes=nodes, **common)
    if kind == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        sentinels = [(_loopback(h), int(p)) for h, p in spec["sentinels"]]
        sentinel_class: Any = Sentinel  # untyped in some redis-py versions
        sentinel = sentinel_class(
            sentinels,
            sentinel_kwargs={
                "socket_timeout": socket_timeout,
                "socket_connect_timeout": socket_timeout,
            },
        )
        client = sentinel.master_for(spec["service"], **common)
        # Kept so close_client() also closes the connections to the sentinels.
        client._chaos_sentinel = sentinel
        return client
    raise ValueError(f"unknown connection kind {kind!r}")


async def close_client(client: Any) -> None:
    """``aclose()`` where it exists (redis-py >= 5.0.1), else ``close()``; with a
    Sentinel client, its connections to the sentinels too."""
    for c in [client, *getattr(getattr(client, "_chaos_sentinel", None), "sentinels", [])]:
        closer = getattr(c, "aclose", None) or c.close
        await closer()


#: Names a library may give the "wait for N replicas" option, most specific first.
REPLICA_OPTION_NAMES = ("wait_replicas", "replicas")


def replica_kwargs(func: Callable[..., Any], n: int | None) -> dict[str, Any]:
    """``{<the option's name>: n}`` if ``func`` has a wait-for-replicas option, else ``{}``."""
    if n is None:
        return {}
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    for name in REPLICA_OPTION_NAMES:
        if name in params:
            return {name: n}
    return {}


def optional_kwargs(func: Callable[..., Any], **wanted: Any) -> dict[str, Any]:
    """The subset of ``wanted`` (values that are not None) that ``func`` accepts.

    Lets the runner pass options such as ``wait_replicas`` to library versions
    that have them, and run unchanged on versions that do not.
    """
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in wanted.items() if v is not None and k in params}
