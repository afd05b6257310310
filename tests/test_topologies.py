"""Tests of the multi-process set-ups: Redis Cluster, Sentinel and a TLS-only server.

Each test starts its own processes on free loopback ports (fixtures from
topology_fixtures.py) and they are stopped by pid at teardown. The blocking
topology calls run in a thread so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from devtools import servers as servers_mod
from devtools import wait_until
from devtools.servers import RedisServer, kill_all_servers, ping
from devtools.topologies import (
    ClusterTopology,
    SentinelTopology,
    TlsFiles,
    TlsRedisServer,
    TlsUnsupportedError,
    make_tls_files,
    resp_command,
)
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError

pytestmark = pytest.mark.timeout(60)


def _pid_alive(pid: int) -> bool:
    """False for a gone process and for an unreaped zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def _pids(servers: list[RedisServer]) -> list[int]:
    pids = [server.pid for server in servers]
    assert all(pid is not None for pid in pids)
    return [pid for pid in pids if pid is not None]


async def _direct_get(server: RedisServer, key: str, *, cluster_node: bool = False) -> Any:
    """GET ``key`` on exactly this server.

    ``cluster_node``: send READONLY first, so a cluster replica answers instead
    of redirecting (outside cluster mode a replica answers reads anyway).
    """
    client = aioredis.Redis(host=server.host, port=server.port, socket_timeout=5)
    try:
        if cluster_node:
            await client.execute_command("READONLY")  # type: ignore[no-untyped-call]
        return await client.get(key)
    finally:
        await client.aclose()


async def _retry(call: Callable[[], Any], *, attempts: int = 5) -> Any:
    """Run ``call()`` again after a ConnectionError (a client meeting a failed-over node)."""
    for attempt in range(attempts):
        try:
            return await call()
        except RedisConnectionError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- cluster


async def test_cluster_serves_keys_across_slots_and_stops_by_pid(
    cluster: ClusterTopology,
) -> None:
    assert len(cluster.nodes) == 3
    assert len(cluster.masters_now()) == 3
    assert cluster.startup_url.startswith("redis://127.0.0.1:")
    assert all(host == "127.0.0.1" for host, _ in cluster.startup_nodes)

    client = RedisCluster.from_url(cluster.startup_url, socket_timeout=5)
    try:
        keys = [f"topo-key-{i}" for i in range(60)]
        for key in keys:
            await client.set(key, key.upper())
        for key in keys:
            assert await client.get(key) == key.upper().encode()
        # The keys spread over every master, and master_for_key names the owner.
        owners = {cluster.master_for_key(key).port for key in keys}
        assert owners == {node.port for node in cluster.nodes}
        for key in keys[:10]:
            owner = cluster.master_for_key(key)
            assert await _direct_get(owner, key, cluster_node=True) == key.upper().encode()
    finally:
        await client.aclose()

    # The startup_nodes form works too.
    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
    client = RedisCluster(startup_nodes=nodes, socket_timeout=5)
    try:
        assert await client.get(keys[0]) == keys[0].upper().encode()
    finally:
        await client.aclose()

    # Every node is a RedisServer the emergency backstop knows; stop() is by pid.
    assert set(cluster.nodes) <= servers_mod._live
    pids = _pids(cluster.nodes)
    servers = list(cluster.nodes)
    cluster.stop()
    assert not any(_pid_alive(pid) for pid in pids)
    assert not any(ping(s.host, s.port) for s in servers)
    assert not (set(servers) & servers_mod._live)
    cluster.stop()  # idempotent; the fixture stops it once more


async def test_cluster_failover_graceful_then_kill(cluster_with_replicas: ClusterTopology) -> None:
    topo = cluster_with_replicas
    assert len(topo.nodes) == 6
    key = "topo-failover-key"
    first = topo.master_for_key(key)
    assert [r.port for r in topo.replicas_of(first)] != []

    client = RedisCluster.from_url(topo.startup_url, socket_timeout=5)
    try:
        await client.set(key, "v1")

        # Graceful: CLUSTER FAILOVER on the replica.
        second = await asyncio.to_thread(topo.failover, first)
        graceful_s = topo.last_failover_seconds
        assert second is not first
        assert topo.master_for_key(key) is second
        assert resp_command(second.host, second.port, "ROLE")[0] == "master"
        assert topo.replicas_of(second) == [first]  # the old master follows it
        assert await _direct_get(second, key, cluster_node=True) == b"v1"
        assert await client.get(key) == b"v1"  # the cluster client follows MOVED
        await client.set(key, "v2")
        assert await client.execute_command(
            "WAIT", 1, 5000, target_nodes=client.get_node(second.host, second.port)
        )

        # Crash: SIGKILL the new master; its replica (the first master) takes over.
        third = await asyncio.to_thread(topo.failover, second, force_kill=True)
        kill_s = topo.last_failover_seconds
        assert third is first
        assert not second.running
        assert topo.master_for_key(key) is third
        assert await _direct_get(third, key, cluster_node=True) == b"v2"
        assert await _retry(lambda: client.get(key)) == b"v2"
        await _retry(lambda: client.set(key, "v3"))

        # The killed node comes back with its identity, as a replica of the winner.
        old_id = topo.node_id(second)
        await asyncio.to_thread(topo.revive, second)
        assert resp_command(second.host, second.port, "CLUSTER", "MYID") == old_id
        assert topo.replicas_of(third) == [second]
        await wait_until(
            lambda: _direct_get(second, key, cluster_node=True),  # full sync
            timeout=10,
            message="revived node has the data",
        )
        assert await _direct_get(second, key, cluster_node=True) == b"v3"
    finally:
        await client.aclose()
    assert graceful_s is not None and kill_s is not None
    print(
        f"cluster ready {topo.ready_seconds:.2f}s graceful {graceful_s:.2f}s "
        f"kill {kill_s:.2f}s (promoted after {topo.last_promotion_seconds:.2f}s)"
    )


def test_cluster_failover_needs_a_replica(cluster: ClusterTopology) -> None:
    master = cluster.master_for_key("x")
    assert cluster.replicas_of(master) == []
    with pytest.raises(ValueError, match="no running replica"):
        cluster.failover(master)
    assert master.running  # nothing was killed


# --------------------------------------------------------------------------- sentinel


async def test_sentinel_master_for_and_failover_both_ways(
    sentinel_setup: SentinelTopology,
) -> None:
    topo = sentinel_setup
    assert len(topo.sentinel_addresses) == 3
    assert len(topo.data_nodes) == 2
    first = topo.master
    assert topo.replica_nodes != [] and first not in topo.replica_nodes

    sentinel = Sentinel(topo.sentinel_addresses, socket_timeout=2)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(topo.service_name, socket_timeout=2)
    try:
        assert await sentinel.discover_master(topo.service_name) == (first.host, first.port)
        await client.set("topo-sentinel-key", "v1")

        # Graceful: SENTINEL FAILOVER.
        second = await asyncio.to_thread(topo.failover)
        graceful_s = topo.last_failover_seconds
        assert second is not first and topo.master is second
        assert await sentinel.discover_master(topo.service_name) == (second.host, second.port)
        assert topo.replica_nodes == [first]
        # The pooled connection still points at the old master (now a replica): the
        # first command fails with "The previous master is now a slave", the next
        # one reconnects through the sentinels.
        assert await _retry(lambda: client.get("topo-sentinel-key")) == b"v1"
        await _retry(lambda: client.set("topo-sentinel-key", "v2"))
        assert await _direct_get(second, "topo-sentinel-key") == b"v2"

        # Crash: SIGKILL the master; the sentinels promote the replica, and the old
        # process is restarted as its replica.
        old_pid = second.pid
        third = await asyncio.to_thread(topo.failover, force_kill=True)
        kill_s = topo.last_failover_seconds
        assert third is first and topo.master is first
        assert second.running and second.pid != old_pid
        assert topo.replica_nodes == [second]
        assert await sentinel.discover_master(topo.service_name) == (third.host, third.port)
        await _retry(lambda: client.set("topo-sentinel-key", "v3"))
        assert await client.get("topo-sentinel-key") == b"v3"
        assert await _direct_get(third, "topo-sentinel-key") == b"v3"
    finally:
        await client.aclose()
        for sentinel_client in sentinel.sentinels:
            await sentinel_client.aclose()
    assert graceful_s is not None and kill_s is not None
    print(
        f"sentinel ready {topo.ready_seconds:.2f}s graceful {graceful_s:.2f}s "
        f"kill {kill_s:.2f}s (promoted after {topo.last_promotion_seconds:.2f}s)"
    )


def test_kill_all_servers_reaches_sentinels_and_data_nodes() -> None:
    """The emergency backstop SIGKILLs a topology's processes too (others are left alone)."""
    topo = SentinelTopology(replicas=1, sentinels=1).start()
    try:
        mine = [*topo.sentinels, *topo.data_nodes]
        assert set(mine) <= servers_mod._live
        pids = _pids(mine)
        others = servers_mod._live - set(mine)
        servers_mod._live.difference_update(others)
        try:
            kill_all_servers()
        finally:
            servers_mod._live.update(others)
        deadline = time.monotonic() + 10
        while any(_pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_pid_alive(pid) for pid in pids)
    finally:
        topo.stop()
    assert not (set(mine) & servers_mod._live)


# --------------------------------------------------------------------------- TLS


async def test_tls_server_over_rediss(tls_server: TlsRedisServer) -> None:
    assert tls_server.url == f"rediss://127.0.0.1:{tls_server.port}/0"
    assert tls_server.cli("PING").strip() == "PONG"
    client = aioredis.Redis.from_url(tls_server.url, ssl_ca_certs=str(tls_server.ca_cert))
    try:
        await client.set("topo-tls-key", "secret")
        assert await client.get("topo-tls-key") == b"secret"
    finally:
        await client.aclose()
    # Plain TCP gets no RESP reply from the TLS-only port.
    assert not ping(tls_server.host, tls_server.port)


async def test_tls_client_without_the_ca_is_refused(tls_server: TlsRedisServer) -> None:
    other_ca = make_tls_files(Path(tls_server.ca_cert).parent / "other")
    client = aioredis.Redis.from_url(
        tls_server.url, ssl_ca_certs=str(other_ca.ca_cert), socket_timeout=5
    )
    try:
        with pytest.raises(RedisConnectionError):
            await client.ping()
    finally:
        await client.aclose()


def test_tls_files_cover_loopback(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path)
    assert isinstance(files, TlsFiles)
    assert files.key.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO) == 0
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    context.load_cert_chain(str(files.cert), str(files.key))  # key matches the certificate


def test_tls_unsupported_build_is_reported(tmp_path: Path) -> None:
    """A redis-server without TLS fails with a clear TlsUnsupportedError (tests skip on it)."""
    fake = tmp_path / "redis-server-no-tls"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '*** FATAL CONFIG FILE ERROR (Redis 7.0.0) ***'\n"
        'echo ">>> \'tls-port "6390"\'"\n'
        "echo 'Bad directive or wrong number of arguments'\n"
        "exit 1\n"
    )
    fake.chmod(0o755)
    files = TlsFiles(ca_cert=tmp_path / "ca.crt", cert=tmp_path / "c.crt", key=tmp_path / "k.key")
    server = TlsRedisServer(files, executable=str(fake))
    with pytest.raises(TlsUnsupportedError, match="no TLS support"):
        server.start()
    assert not server.running
    assert isinstance(TlsUnsupportedError("x"), RuntimeError)
