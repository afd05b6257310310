"""Fixtures for multi-process Redis set-ups (Cluster, Sentinel, TLS).

Registered from conftest.py with ``pytest_plugins = ["topology_fixtures"]``.
Each fixture is function-scoped: it starts its own processes on free loopback
ports and stops every one of them by pid at teardown. See
``devtools/topologies.py`` for what "started" waits for.

The topology methods block (a failover takes seconds): from an async test call
them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from devtools.servers import REDIS_CLI, REDIS_SERVER
from devtools.topologies import (
    ClusterTopology,
    SentinelTopology,
    TlsRedisServer,
    TlsUnsupportedError,
    make_tls_files,
)

__all__ = ["cluster", "cluster_with_replicas", "sentinel_setup", "tls_server"]


def _require_redis_binaries() -> None:
    missing = [exe for exe in (REDIS_SERVER, REDIS_CLI) if shutil.which(exe) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed; these tests start private servers. "
            "Install them with `apt-get install redis-server`."
        )


@pytest.fixture
def cluster() -> Iterator[ClusterTopology]:
    """A started 3-master Redis Cluster without replicas (node timeout 1 s)."""
    _require_redis_binaries()
    with ClusterTopology(masters=3, replicas_per_master=0) as topology:
        yield topology


@pytest.fixture
def cluster_with_replicas() -> Iterator[ClusterTopology]:
    """A started 3-master Redis Cluster with one replica per master (node timeout 1 s).

    ``cluster_with_replicas.failover(master, force_kill=...)`` promotes a replica.
    """
    _require_redis_binaries()
    with ClusterTopology(masters=3, replicas_per_master=1) as topology:
        yield topology


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelTopology]:
    """A started master + 1 replica watched by 3 sentinels (quorum 2, down after 2 s).

    Connect with ``Sentinel(sentinel_setup.sentinel_addresses, socket_timeout=...)
    .master_for(sentinel_setup.service_name)``.
    """
    _require_redis_binaries()
    with SentinelTopology(replicas=1, sentinels=3) as topology:
        yield topology


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TlsRedisServer]:
    """A started TLS-only redis-server with a throwaway CA.

    Connect with ``Redis.from_url(tls_server.url, ssl_ca_certs=str(tls_server.ca_cert))``.
    Skips the test when ``openssl`` is missing or redis-server has no TLS support.
    """
    _require_redis_binaries()
    try:
        files = make_tls_files(tmp_path / "tls")
        server = TlsRedisServer(files)
        server.start()
    except TlsUnsupportedError as exc:
        pytest.skip(f"TLS unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
