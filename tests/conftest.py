"""Shared fixtures. The Redis at REDIS_URL (default redis://127.0.0.1:6379/0) is shared:
tests never flush it and only write keys that contain their ``unique_name``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from devtools.proxy import FaultProxy
from devtools.servers import REDIS_SERVER, RedisServer, ensure_default_redis, kill_all_servers
from devtools.topologies import ClusterTopology, SentinelTopology
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

pytest_plugins = ["topology_fixtures"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

RedisFactory = Callable[..., aioredis.Redis]
ServerFactory = Callable[..., RedisServer]


# --------------------------------------------------------------------------- hang backstop
#
# pytest-timeout (signal method, timeout = 120 in pyproject) arms ONE timer per test.
# When it fires in the test body, the test fails but teardown is unbounded, and
# pytest-asyncio's loop teardown waits forever for a task that swallows
# CancelledError. This backstop ends the whole session (stacks and pending asyncio
# tasks printed, private redis-servers killed) when one test, teardown included,
# outlives its timeout + 60 s (REDSYNC_TEST_BACKSTOP_GRACE; 0 disables it).

_BACKSTOP_GRACE = float(os.environ.get("REDSYNC_TEST_BACKSTOP_GRACE", "60"))


def _test_timeout(item: pytest.Item) -> float | None:
    if _BACKSTOP_GRACE <= 0 or item.config.getoption("usepdb", False):
        return None  # disabled, or someone is debugging
    marker = item.get_closest_marker("timeout")
    value: object = None
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if value is None:
        value = item.config.getoption("timeout", None)
    if value is None:
        try:
            value = item.config.getini("timeout")
        except ValueError:  # pytest-timeout not installed
            return None
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _abort_hung_session(item: pytest.Item, seconds: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    err = sys.stderr
    try:
        err.write(
            f"\n{'+' * 20} {item.nodeid} is still running after {seconds:g} s "
            "(setup + call + teardown); aborting the test session.\n"
            "Typical cause: a task that swallows CancelledError blocks event-loop teardown.\n"
        )
        try:
            for obj in gc.get_objects():
                if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running():
                    for task in asyncio.all_tasks(obj):
                        err.write(f"\n-- pending {task!r}\n")
                        task.print_stack(file=err)
        except Exception as exc:  # best effort only: the loop belongs to another thread
            err.write(f"(could not list asyncio tasks: {exc!r})\n")
        err.write("\n-- threads:\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.flush()
    finally:
        kill_all_servers()  # os._exit skips fixture teardown and atexit
        os._exit(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    timeout = _test_timeout(item)
    timer: threading.Timer | None = None
    if timeout is not None:
        limit = timeout + _BACKSTOP_GRACE
        timer = threading.Timer(limit, _abort_hung_session, args=(item, limit))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis that answers: $REDIS_URL, or a throwaway local server."""
    return ensure_default_redis(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


# --------------------------------------------------------------------------- topologies
#
# A test module (or test) opts in with ``pytestmark = pytest.mark.usefixtures("topology")``:
# it then runs once per deployment, and its ``redis`` / ``redis_factory()`` clients
# are a plain client of the shared server, a RedisCluster client of a private
# 3-master cluster, or a Sentinel ``master_for`` client of a private master +
# replica + 3 sentinels. The private set-ups are started once per session (on
# first use) and stopped by pid at the end.

TOPOLOGIES = ("standalone", "cluster", "sentinel")


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[ClusterTopology]:
    with ClusterTopology(masters=3, replicas_per_master=0) as topology:
        yield topology


@pytest.fixture(scope="session")
def shared_sentinel() -> Iterator[SentinelTopology]:
    with SentinelTopology(replicas=1, sentinels=3) as topology:
        yield topology


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    """The deployment this test runs against (see above)."""
    name: str = request.param
    if name != "standalone":
        request.getfixturevalue(f"shared_{name}")  # started here, not inside the event loop
    return name


def _client_for(request: pytest.FixtureRequest, redis_url: str, **kwargs: Any) -> Any:
    name = request.getfixturevalue("topology") if "topology" in request.fixturenames else None
    if name == "cluster":
        cluster: ClusterTopology = request.getfixturevalue("shared_cluster")
        return RedisCluster.from_url(cluster.startup_url, **kwargs)
    if name == "sentinel":
        setup: SentinelTopology = request.getfixturevalue("shared_sentinel")
        sentinel = Sentinel(setup.sentinel_addresses, socket_timeout=5)
        return sentinel.master_for(setup.service_name, **kwargs)
    return aioredis.Redis.from_url(redis_url, **kwargs)


@pytest.fixture
async def redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client for ``redis_url`` (``Redis.from_url``, bytes replies), or for
    the test's ``topology`` when it has one.

    NB: with redis-py 8 ``from_url`` clients have NO retry (``Redis(host=, port=)``
    gets the default Retry) and speak RESP3; redis-py 5.0 speaks RESP2.
    """
    client = _client_for(request, redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis_factory(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[RedisFactory]:
    """``make(url=None, **kwargs) -> redis.asyncio.Redis``; every client is closed at teardown.

    ``url`` defaults to ``redis_url`` (or the test's ``topology``); kwargs go to
    ``Redis.from_url``.
    """
    clients: list[Any] = []

    def make(url: str | None = None, **kwargs: Any) -> aioredis.Redis:
        if url is None:
            client = _client_for(request, redis_url, **kwargs)
        else:
            client = aioredis.Redis.from_url(url, **kwargs)
        clients.append(client)
        return client  # type: ignore[no-any-return]

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:limit] or "test"


@pytest.fixture
def unique_name(request: pytest.FixtureRequest, redis_url: str) -> Iterator[str]:
    """``t-<testname>-<uuid8>``; at teardown every key containing it is deleted."""
    name = f"t-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"
    yield name
    # The name only contains [A-Za-z0-9_-], so it is safe inside a glob pattern.
    client = sync_redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{name}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


@pytest.fixture
def redis_server_factory() -> Iterator[ServerFactory]:
    """``make(extra_args=(), **kwargs) -> RedisServer``, started; all stopped at teardown.

    kwargs go to :class:`RedisServer` (``port=``, ``cli_auth=``).
    """
    if shutil.which(REDIS_SERVER) is None:
        pytest.fail(
            "redis-server is not installed; these tests start private servers. "
            "Install it with `apt-get install redis-server`."
        )
    servers: list[RedisServer] = []

    def make(extra_args: Sequence[str] = (), **kwargs: Any) -> RedisServer:
        server = RedisServer(extra_args, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def private_server(redis_server_factory: ServerFactory) -> RedisServer:
    """A started private redis-server (own port, own INFO stats), stopped at teardown."""
    return redis_server_factory()


@pytest.fixture
def primary_and_replica(redis_server_factory: ServerFactory) -> tuple[RedisServer, RedisServer]:
    """A private primary and its replica (wait for the link: ``helpers.replica_linked``)."""
    primary = redis_server_factory()
    replica = redis_server_factory(["--replicaof", primary.host, str(primary.port)])
    return primary, replica


@pytest.fixture
async def fault_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """A started :class:`FaultProxy` in front of ``redis_url``'s server.

    Connect through ``fault_proxy.rewrite(redis_url)`` (keeps credentials and db).
    """
    parts = urlsplit(redis_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
