"""An asyncio client built from the settings of a blocking one (or from a URL).

The facade runs the async library on its own loop, so it needs an async
client that talks to the same server(s) with the same settings: the
connection keyword arguments of the blocking client's pool, its connection
class (plain, TLS or Unix socket), a Sentinel service, or a cluster's nodes.
Everything here reads redis-py attributes that are public in practice but
not documented API, so it is kept in this one place.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio import connection as aconnection

#: Connection keyword arguments the async classes do not take.
_DROP = frozenset({"connection_pool", "retry_on_timeout", "redis_connect_func", "cache"})


def async_client(source: Any) -> Any:
    """An async client for ``source``: a URL, or a blocking ``redis.Redis``
    (plain, TLS, Unix socket, or a Sentinel ``master_for`` client), or a
    blocking ``redis.cluster.RedisCluster``."""
    if isinstance(source, str):
        return aioredis.Redis.from_url(source)
    from redis.cluster import RedisCluster

    if isinstance(source, RedisCluster):
        return _cluster(source)
    if isinstance(source, redis.Redis):
        pool = source.connection_pool
        from redis.sentinel import SentinelConnectionPool

        if isinstance(pool, SentinelConnectionPool):
            return _sentinel(pool)
        kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _DROP}
        connection_class = getattr(aconnection, pool.connection_class.__name__, None)
        if connection_class is None:
            raise TypeError(
                f"redsync.sync cannot mirror a {pool.connection_class.__name__} connection; "
                "pass a URL instead"
            )
        apool = aioredis.ConnectionPool(
            connection_class=connection_class,
            max_connections=pool.max_connections,
            **kwargs,
        )
        return aioredis.Redis(connection_pool=apool)
    raise TypeError(
        "redsync.sync needs a URL string, a redis.Redis or a redis.cluster.RedisCluster, "
        f"got {type(source).__name__}"
    )


def _sentinel(pool: Any) -> Any:
    from redis.asyncio.sentinel import Sentinel

    manager = pool.sentinel_manager
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in manager.sentinels
    ]
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in _DROP}
    for key in ("host", "port", "connection_class"):
        kwargs.pop(key, None)
    make: Any = Sentinel  # untyped in some redis-py releases, typed in others
    sentinel = make(addresses, sentinel_kwargs=dict(manager.sentinel_kwargs))
    return sentinel.master_for(pool.service_name, **kwargs)


def _cluster(client: Any) -> Any:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(n.host, n.port) for n in client.get_nodes()]
    kwargs: dict[str, Any] = {}
    node_kwargs = getattr(client.nodes_manager, "connection_kwargs", {}) or {}
    for key in ("password", "username", "socket_timeout", "socket_connect_timeout", "ssl"):
        if node_kwargs.get(key) is not None:
            kwargs[key] = node_kwargs[key]
    return RedisCluster(startup_nodes=nodes, **kwargs)


async def close_client(client: Any) -> None:
    """Close an async client from :func:`async_client`, with the pool built for it."""
    if isinstance(client, aioredis.Redis):
        # The pool was passed in (or made by from_url / master_for): close it too.
        await client.aclose(close_connection_pool=True)
    else:
        await client.aclose()
