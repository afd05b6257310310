"""Differences between redis-py versions, and its private attributes, in one place.

Every version shim of the library lives here, each with the versions it
covers and why it is needed, so that dropping an old redis-py is deleting
code from one module; so does every read of an attribute redis-py does not
document (a connection's stream and parser), so that a redis-py release
that renames one breaks one module, where its tests show it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection

log = logging.getLogger("redsync")

#: The installed redis-py, as (major, minor).
REDIS_PY: tuple[int, int] = tuple(int(p) for p in redis.__version__.split(".")[:2])  # type: ignore[assignment]

#: redis-py < 5.3: ``ConnectionPool.get_connection`` takes a command name.
OLD_POOL_API = REDIS_PY < (5, 3)

#: redis-py < 8.0 builds new node objects on every refresh of a cluster's slot
#: map and closes every connection of the old ones, those in use included: one
#: refresh (after a MOVED, say) cuts every command in flight on that client,
#: and each cut command makes its sender refresh again.  See keep_cluster_nodes().
REPLACES_CLUSTER_NODES = REDIS_PY < (8, 0)


async def pool_get(pool: Any) -> AbstractConnection:
    """A connection from a plain client's pool."""
    if OLD_POOL_API:
        return await pool.get_connection("_")  # type: ignore[no-any-return]
    return await pool.get_connection()  # type: ignore[no-any-return]


def node_put(node: ClusterNode, conn: AbstractConnection) -> None:
    """Give ``conn`` back to the cluster node it came from."""
    if hasattr(node, "release"):
        node.release(conn)  # type: ignore[arg-type]
    else:  # redis-py < 5.1 has no ClusterNode.release()
        node._free.append(conn)  # type: ignore[arg-type]


# -- a connection's stream (redis-py private attributes) --------------------------


def stream_reader(conn: AbstractConnection) -> asyncio.StreamReader | None:
    """The open connection's stream reader (None when it is closed)."""
    reader = getattr(conn, "_reader", None)
    return reader if isinstance(reader, asyncio.StreamReader) else None


def stream_writer(conn: AbstractConnection) -> asyncio.StreamWriter | None:
    """The open connection's stream writer (None when it is closed)."""
    writer = getattr(conn, "_writer", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def take_buffered(reader: asyncio.StreamReader) -> bytes:
    """Whatever the stream reader holds unread, taken out of it."""
    buffer = getattr(reader, "_buffer", None)
    if not buffer:
        return b""
    data = bytes(buffer)
    buffer.clear()
    return data


def reply_parser(conn: AbstractConnection) -> Any:
    """redis-py's reply parser of the connection (None when it has none)."""
    return getattr(conn, "_parser", None)


def parser_holds_data(parser: Any) -> bool:
    """Whether redis-py's pure-Python parser has buffered bytes of a reply."""
    return bool(getattr(parser, "_buffer", None))


# -- refreshing a cluster's slot map ---------------------------------------------


class _Refresher:
    """The slot-map refreshes of one cluster client on one event loop.

    Every link of a client that finds its route stale needs *a* refresh begun
    after it found out, not one of its own: a failover seen by a hundred
    instances costs one ``CLUSTER SLOTS``, not a hundred.
    """

    __slots__ = ("finished", "lock", "started")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        #: Number of the last refresh begun, and of the last one completed.
        self.started = 0
        self.finished = 0


_REFRESHERS: weakref.WeakKeyDictionary[
    RedisCluster, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Refresher]
] = weakref.WeakKeyDictionary()


def _refresher(client: RedisCluster) -> _Refresher:
    per_loop = _REFRESHERS.get(client)
    if per_loop is None:
        per_loop = _REFRESHERS[client] = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    found = per_loop.get(loop)
    if found is None:
        found = per_loop[loop] = _Refresher()
    return found


def refresh_mark(client: RedisCluster) -> int:
    """A mark to pass to :func:`refresh_slots` for a route found stale now."""
    return _refresher(client).started


async def refresh_slots(client: RedisCluster, mark: int) -> None:
    """Make sure a refresh of the slot map begun after ``mark`` has completed."""
    refresher = _refresher(client)
    async with refresher.lock:
        if refresher.finished > mark:
            return  # another link's refresh, begun after ours was asked for
        refresher.started += 1
        number = refresher.started
        await client.nodes_manager.initialize()
        refresher.finished = number


def keep_cluster_nodes(client: RedisCluster) -> None:
    """On redis-py < 8.0, make the client's slot-map refreshes keep its node objects.

    Those versions replace every node object on each refresh and close all
    connections of the replaced ones, including connections checked out and
    in use: a command in flight fails as if the node had died, a subscriber
    loses its subscription, and each such failure makes its sender refresh
    the map again, which cuts everything in flight once more.  redis-py 8.2
    keeps a node object (and its connections) for as long as the node is in
    the map, whatever its role; this gives older versions that behaviour.  A
    connection that reaches a node no longer serving its slot gets MOVED, and
    the library never sends READONLY, so a kept connection is always usable.
    Nodes that left the map are closed, as before.
    """
    if not REPLACES_CLUSTER_NODES:
        return
    manager = client.nodes_manager
    if isinstance(manager, _KeepingNodes):
        return
    # NodesManager has __slots__: no method can be set on the instance, but a
    # subclass adding no slots has its layout, so the instance can become one.
    manager.__class__ = _keeping_class(type(manager))


class _KeepingNodes:
    """Marks a NodesManager whose refreshes keep node objects (see keep_cluster_nodes)."""

    __slots__ = ()

    def set_nodes(
        self, old: dict[str, ClusterNode], new: dict[str, ClusterNode], remove_old: bool = False
    ) -> None:
        if remove_old:
            for name in [name for name in old if name not in new]:
                _close_later(old.pop(name))
        kept: dict[int, ClusterNode] = {}
        for name, node in new.items():
            prior = old.get(name)
            if prior is None:
                old[name] = node
            elif prior is not node:
                prior.server_type = node.server_type
                kept[id(node)] = prior
        manager: Any = self
        if kept and old is manager.nodes_cache:
            # The fresh slot table names the fresh node objects: point it at the kept ones.
            for nodes in manager.slots_cache.values():
                for i, node in enumerate(nodes):
                    nodes[i] = kept.get(id(node), node)


_KEEPING: dict[type, type] = {}


def _keeping_class(base: type) -> type:
    found = _KEEPING.get(base)
    if found is None:
        found = _KEEPING[base] = type(
            f"Keeping{base.__name__}", (_KeepingNodes, base), {"__slots__": ()}
        )
    return found


_CLOSING: set[asyncio.Task[Any]] = set()


def _close_later(node: ClusterNode) -> None:
    task = asyncio.ensure_future(node.disconnect())
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
