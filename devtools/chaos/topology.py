"""What the chaos runner needs from a Redis set-up, for standalone, Cluster and Sentinel.

A :class:`Topology` starts and stops its servers, tells workers how to
connect (a JSON-able spec, see :mod:`devtools.chaos.conn`), lists the data
nodes where client connections can be killed or the server stalled, and
performs the "big fault": a restart for a standalone server, a failover for
Cluster and Sentinel.  All blocking work runs in threads so that the
runner's event loop (which also runs the fault proxy) never stalls.

Cluster and Sentinel are built on ``devtools.topologies`` and are available
only when that module imports.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from typing import Any

import redis.asyncio as aioredis

from devtools.proxy import FaultProxy
from devtools.servers import RedisServer

from .conn import ConnSpec

__all__ = [
    "ADMIN_NAME",
    "TOPOLOGIES",
    "Topology",
    "admin",
    "make_topology",
    "topologies_available",
]

#: CLIENT SETNAME of the runner's own connections; never targeted by CLIENT KILL.
ADMIN_NAME = "chaos-admin"
#: Lets the runner stall a server with DEBUG SLEEP (Redis 7 refuses DEBUG by default).
DEBUG_ARGS = ["--enable-debug-command", "local"]

TOPOLOGIES = ("standalone", "cluster", "sentinel")

Address = tuple[str, int]


def topologies_available() -> tuple[bool, str]:
    """Whether Cluster / Sentinel set-ups can be built here, and if not, why."""
    try:
        from devtools import topologies  # noqa: F401
    except Exception as exc:
        return False, f"devtools/topologies.py is not importable: {exc!r}"
    return True, ""


@contextlib.asynccontextmanager
async def admin(address: Address, timeout: float = 10.0) -> Any:
    """A short-lived plain connection to one server, named :data:`ADMIN_NAME`."""
    client = aioredis.Redis(
        host=address[0],
        port=address[1],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        client_name=ADMIN_NAME,
    )
    try:
        yield client
    finally:
        closer = getattr(client, "aclose", None) or client.close
        with contextlib.suppress(Exception):
            await closer()


class Topology(abc.ABC):
    """The runner's view of a Redis set-up."""

    name: str
    #: What the big fault is called in the results ("restart" or "failover").
    big_fault_kind: str
    proxy: FaultProxy | None = None

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every process by pid.  Idempotent; safe after a failed start."""

    @abc.abstractmethod
    def worker_conn(self) -> ConnSpec:
        """How workers connect (through the fault proxy where there is one)."""

    @abc.abstractmethod
    def direct_conn(self) -> ConnSpec:
        """How the runner's own clients connect (never through the proxy)."""

    @abc.abstractmethod
    def data_nodes(self) -> list[Address]:
        """Running data nodes: where worker connections can be listed and killed."""

    @abc.abstractmethod
    async def node_for_key(self, key: str) -> Address:
        """The data node currently serving ``key`` (stall target)."""

    @abc.abstractmethod
    async def big_fault(self, mode: str, key: str) -> str:
        """Restart / fail over (``mode``: "graceful" or "kill"); return a description."""

    def describe(self) -> str:
        return self.name


class StandaloneTopology(Topology):
    """One private server; workers go through a :class:`FaultProxy` run by the runner."""

    name = "standalone"
    big_fault_kind = "restart"

    def __init__(self) -> None:
        self.server = RedisServer(DEBUG_ARGS)
        self.proxy: FaultProxy | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        self.proxy = await FaultProxy(self.server.host, self.server.port).start()

    async def stop(self) -> None:
        proxy, self.proxy = self.proxy, None
        try:
            if proxy is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proxy.stop(), 15)
        finally:
            self.server.stop()

    def worker_conn(self) -> ConnSpec:
        assert self.proxy is not None
        return {"kind": "standalone", "host": self.proxy.host, "port": self.proxy.port}

    def direct_conn(self) -> ConnSpec:
        return {"kind": "standalone", "host": self.server.host, "port": self.server.port}

    def data_nodes(self) -> list[Address]:
        return [(self.server.host, self.server.port)] if self.server.running else []

    async def node_for_key(self, key: str) -> Address:
        return (self.server.host, self.server.port)

    async def big_fault(self, mode: str, key: str) -> str:
        began = time.monotonic()
        if mode == "kill":
            await asyncio.to_thread(self.server.kill)
            await asyncio.to_thread(self.server.start)
        else:
            await asyncio.to_thread(self.server.restart)
        how = "SIGKILL" if mode == "kill" else "SIGTERM"
        return f"restart ({mode}, {how}) in {time.monotonic() - began:.2f}s"

    def describe(self) -> str:
        return "standalone: one private server, workers through a fault proxy"


class ClusterTopology(Topology):
    """3 masters with a replica each (``devtools.topologies.ClusterTopology``)."""

    name = "cluster"
    big_fault_kind = "failover"

    def __init__(self, node_timeout_ms: int = 1000) -> None:
        from devtools.topologies import ClusterTopology as Cluster

        self.node_timeout_ms = node_timeout_ms
        self.cluster = Cluster(
            masters=3,
            replicas_per_master=1,
            node_timeout_ms=node_timeout_ms,
            extra_args=DEBUG_ARGS,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.cluster.stop)

    def worker_conn(self) -> ConnSpec:
        return {"kind": "cluster", "nodes": [list(a) for a in self.cluster.startup_nodes]}

    def direct_conn(self) -> ConnSpec:
        return self.worker_conn()

    def data_nodes(self) -> list[Address]:
        return [(n.host, n.port) for n in self.cluster.running_nodes]

    async def node_for_key(self, key: str) -> Address:
        node = await asyncio.to_thread(self.cluster.master_for_key, key)
        return (node.host, node.port)

    async def big_fault(self, mode: str, key: str) -> str:
        began = time.monotonic()
        # A node that a stall left flagged as failing must be seen healthy again first.
        await asyncio.to_thread(self.cluster.wait_converged, 30.0)
        old = await asyncio.to_thread(self.cluster.master_for_key, key)
        new = await asyncio.to_thread(self.cluster.failover, old, force_kill=(mode == "kill"))
        took = time.monotonic() - began
        text = f"failover {old.port}->{new.port} ({mode}) in {took:.2f}s"
        if mode == "kill":
            # Bring the killed master back (as a replica) so the next failover has one.
            await asyncio.to_thread(self.cluster.revive, old)
            text += f", revived {old.port} after {time.monotonic() - began:.2f}s"
        return text

    def describe(self) -> str:
        return f"cluster: 3 masters x 1 replica, node timeout {self.node_timeout_ms} ms"


class SentinelTopology(Topology):
    """A master, one replica and three sentinels (``devtools.topologies.SentinelTopology``)."""

    name = "sentinel"
    big_fault_kind = "failover"

    def __init__(self, down_after_ms: int = 1000) -> None:
        from devtools.topologies import SentinelTopology as Sentinel

        self.down_after_ms = down_after_ms
        self.setup = Sentinel(
            replicas=1, sentinels=3, down_after_ms=down_after_ms, extra_args=DEBUG_ARGS
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.setup.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.setup.stop)

    def worker_conn(self) -> ConnSpec:
        return {
            "kind": "sentinel",
            "sentinels": [list(a) for a in self.setup.sentinel_addresses],
            "service": self.setup.service_name,
        }

    def direct_conn(self) -> ConnSpec:
        return self.worker_conn()

    def data_nodes(self) -> list[Address]:
        return [(n.host, n.port) for n in self.setup.data_nodes if n.running]

    async def node_for_key(self, key: str) -> Address:
        node = await asyncio.to_thread(lambda: self.setup.master)
        return (node.host, node.port)

    async def big_fault(self, mode: str, key: str) -> str:
        began = time.monotonic()
        old = await asyncio.to_thread(lambda: self.setup.master)
        new = await asyncio.to_thread(self.setup.failover, force_kill=(mode == "kill"))
        return f"failover {old.port}->{new.port} ({mode}) in {time.monotonic() - began:.2f}s"

    def describe(self) -> str:
        return f"sentinel: master + 1 replica, 3 sentinels, down-after {self.down_after_ms} ms"


def make_topology(name: str, *, detector_ms: int = 1000) -> Topology:
    """``detector_ms``: Cluster node timeout / Sentinel down-after period."""
    if name == "standalone":
        return StandaloneTopology()
    if name == "cluster":
        return ClusterTopology(node_timeout_ms=detector_ms)
    if name == "sentinel":
        return SentinelTopology(down_after_ms=detector_ms)
    raise ValueError(f"unknown topology {name!r} (one of {', '.join(TOPOLOGIES)})")
