"""Tests of the test infrastructure itself: private servers, the fault proxy, wait_until."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from devtools import servers as servers_mod
from devtools import wait_until
from devtools.proxy import FaultProxy
from devtools.servers import RedisServer, ensure_default_redis, free_port, ping
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

REDIS_PY_MAJOR = int(sync_redis.__version__.split(".")[0])


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _retrying(url: str) -> aioredis.Redis:
    """A client that re-sends a command after a ConnectionError, on every redis-py >= 5.0.

    (redis-py 5.x ignores ``retry=`` unless the error is also in ``retry_on_error``.)
    """
    return aioredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 3), retry_on_error=[RedisConnectionError]
    )


def _pid_alive(pid: int) -> bool:
    """False for a gone process and for an unreaped zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def _wait_pid_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def _blocked_clients(server: RedisServer) -> int:
    info = await asyncio.to_thread(server.cli, "INFO", "clients")
    for line in info.splitlines():
        if line.startswith("blocked_clients:"):
            return int(line.split(":", 1)[1])
    raise AssertionError(f"no blocked_clients in INFO clients: {info!r}")


# --------------------------------------------------------------------------- wait_until


async def test_wait_until_sync_and_async_predicates() -> None:
    state = {"n": 0}

    def bump() -> bool:
        state["n"] += 1
        return state["n"] >= 3

    await wait_until(bump, timeout=5)
    assert state["n"] == 3

    async def ready() -> bool:
        return True

    await wait_until(ready, timeout=5)


async def test_wait_until_times_out_with_message() -> None:
    with pytest.raises(AssertionError, match="never-true"):
        await wait_until(lambda: False, timeout=0.05, message="never-true")


async def test_wait_until_bounds_a_hanging_async_predicate() -> None:
    async def hangs() -> bool:
        await asyncio.Event().wait()
        return True

    with pytest.raises(AssertionError, match="hangs"):
        await wait_until(hangs, timeout=0.05)


# --------------------------------------------------------------------------- servers


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_private_server_basics(private_server: RedisServer) -> None:
    assert private_server.running
    assert private_server.url == f"redis://127.0.0.1:{private_server.port}/0"
    assert private_server.cli("PING").strip() == "PONG"
    assert ping("127.0.0.1", private_server.port)
    with pytest.raises(RuntimeError, match="unknown command"):
        private_server.cli("NO-SUCH-COMMAND")


def test_stop_is_by_pid_and_idempotent() -> None:
    server = RedisServer().start()
    pid = server.pid
    assert pid is not None and _pid_alive(pid)
    server.stop()
    assert not _pid_alive(pid)
    assert not ping("127.0.0.1", server.port)
    server.stop()  # no-op


def test_kill_crashes_server(private_server: RedisServer) -> None:
    pid = private_server.pid
    assert pid is not None
    private_server.kill()
    assert not _pid_alive(pid)
    assert not private_server.running


def test_restart_loses_data_and_keeps_port(private_server: RedisServer) -> None:
    port, pid = private_server.port, private_server.pid
    client = sync_redis.Redis.from_url(private_server.url, socket_timeout=5)
    try:
        client.set("restart-key", "v")
        assert client.get("restart-key") == b"v"
        private_server.restart()
        assert private_server.port == port
        assert private_server.pid != pid
        # The pooled connection died with the old process; a fresh client sees the new one.
    finally:
        client.close()
    client = sync_redis.Redis.from_url(private_server.url, socket_timeout=5)
    try:
        assert client.get("restart-key") is None
        assert client.dbsize() == 0
    finally:
        client.close()


def test_commandstats_and_reset(private_server: RedisServer) -> None:
    client = sync_redis.Redis.from_url(private_server.url, socket_timeout=5)
    try:
        private_server.reset_stats()
        for _ in range(3):
            client.incrby("stats-key", 2)
        client.client_id()
        stats = private_server.commandstats()
        # NB: redis-py's incr() is sent as INCRBY, so it would count under "incrby".
        assert stats["incrby"] == 3
        assert stats["client|id"] == 1
        assert all(name == name.lower() for name in stats)
        private_server.reset_stats()
        stats = private_server.commandstats()
        assert "incrby" not in stats
        assert "client|id" not in stats
    finally:
        client.close()


def test_extra_args_and_cli_auth(redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory(["--requirepass", "s3cret"], cli_auth=["-a", "s3cret"])
    assert server.cli("PING").strip() == "PONG"
    anonymous = sync_redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            anonymous.ping()
    finally:
        anonymous.close()
    authed = sync_redis.Redis.from_url(server.url, password="s3cret", socket_timeout=5)
    try:
        assert authed.ping()
    finally:
        authed.close()


def test_start_refuses_a_port_with_a_server_on_it(private_server: RedisServer) -> None:
    with pytest.raises(RuntimeError, match="already taken"):
        RedisServer(port=private_server.port).start()


def test_start_failure_reports_log() -> None:
    server = RedisServer(["--no-such-option", "1"])
    with pytest.raises(RuntimeError, match="exited with status"):
        server.start()
    assert not server.running


def test_ensure_default_redis_returns_answering_url(redis_url: str) -> None:
    assert ensure_default_redis(redis_url) == redis_url


def test_ensure_default_redis_starts_throwaway_server() -> None:
    had_one = servers_mod._default_server is not None
    url = ensure_default_redis(f"redis://127.0.0.1:{free_port()}/3")
    try:
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/3")
        client = sync_redis.Redis.from_url(url, socket_timeout=5)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        if not had_one:
            servers_mod._stop_default_server()


def test_ensure_default_redis_explains_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers_mod, "_default_server", None)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        ensure_default_redis(f"redis://127.0.0.1:{free_port()}/0")


# --------------------------------------------------------------------------- proxy


def test_proxy_refuses_non_loopback_target() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 6379)


async def test_proxy_rewrite_keeps_credentials_and_db() -> None:
    async with FaultProxy() as proxy:
        assert proxy.rewrite("redis://u:p@127.0.0.1:6379/5?x=1") == (
            f"redis://u:p@127.0.0.1:{proxy.port}/5?x=1"
        )
        assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"


async def test_proxy_forwards(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str, redis: aioredis.Redis
) -> None:
    client = aioredis.Redis.from_url(fault_proxy.rewrite(redis_url))
    try:
        assert await client.set(unique_name, b"x" * 200_000)
        assert await client.get(unique_name) == b"x" * 200_000
        assert await redis.strlen(unique_name) == 200_000
        assert fault_proxy.accepted == 1
        assert fault_proxy.active == 1
    finally:
        await client.aclose()
    await wait_until(lambda: fault_proxy.active == 0, timeout=5)


async def test_cut_all_fails_in_flight_command(private_server: RedisServer) -> None:
    async with FaultProxy("127.0.0.1", private_server.port) as proxy:
        client = aioredis.Redis(host="127.0.0.1", port=proxy.port, retry=_no_retry())
        blpop = asyncio.ensure_future(client.blpop(["cut-list"], timeout=30))
        try:
            await wait_until(lambda: _blocked_clients(private_server), timeout=10)
            assert proxy.cut_all() == 1
            with pytest.raises(RedisConnectionError):
                await asyncio.wait_for(blpop, 10)
            assert proxy.cuts == 1
            assert proxy.active == 0
            # The server side of the cut connection is gone too.
            await wait_until(lambda: _not_blocked(private_server), timeout=10)
            # The client reconnects (through the proxy) on its next command.
            assert await client.ping()
            assert proxy.accepted == 2
        finally:
            blpop.cancel()
            await asyncio.gather(blpop, return_exceptions=True)
            await client.aclose()


async def _not_blocked(server: RedisServer) -> bool:
    return await _blocked_clients(server) == 0


async def test_cut_idle_connection_without_retry(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str
) -> None:
    # redis-py 5.0 notices the dead pooled connection and reconnects; redis-py 8
    # raises ConnectionError once. Either way the client works again afterwards.
    client = aioredis.Redis.from_url(fault_proxy.rewrite(redis_url), retry=_no_retry())
    try:
        assert await client.set(unique_name, b"1")
        assert fault_proxy.cut_all() == 1
        try:
            assert await client.get(unique_name) == b"1"
        except RedisConnectionError:
            pass
        assert await client.get(unique_name) == b"1"
        assert fault_proxy.accepted == 2
    finally:
        await client.aclose()


async def test_cut_all_then_retrying_client_recovers(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str
) -> None:
    client = _retrying(fault_proxy.rewrite(redis_url))
    try:
        assert await client.set(unique_name, b"1")
        assert fault_proxy.cut_all() == 1
        assert await client.get(unique_name) == b"1"
        assert fault_proxy.accepted == 2
    finally:
        await client.aclose()


async def test_swallowed_reply_makes_retry_resend_incr(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str, redis: aioredis.Redis
) -> None:
    client = _retrying(fault_proxy.rewrite(redis_url))
    try:
        assert await client.ping()
        fault_proxy.swallow_next_reply()
        # The first INCR ran but its reply was lost; the retry ran it again.
        assert await client.incr(unique_name) == 2
        assert await redis.get(unique_name) == b"2"
        assert fault_proxy.swallowed == 1
        assert fault_proxy.accepted == 2
        assert not fault_proxy.swallow_pending
    finally:
        await client.aclose()


@pytest.mark.skipif(REDIS_PY_MAJOR < 6, reason="redis-py < 6 has no default Retry")
async def test_swallowed_reply_with_default_constructor_retry(
    fault_proxy: FaultProxy, unique_name: str, redis: aioredis.Redis
) -> None:
    # Redis(host=..., port=...) gets redis-py's default Retry (Redis.from_url does not!).
    client = aioredis.Redis(host="127.0.0.1", port=fault_proxy.port)
    try:
        assert await client.ping()
        fault_proxy.swallow_next_reply()
        assert await client.incr(unique_name) == 2
        assert await redis.get(unique_name) == b"2"
    finally:
        await client.aclose()


async def test_swallowed_reply_without_retry_raises_after_command_ran(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str, redis: aioredis.Redis
) -> None:
    client = aioredis.Redis.from_url(fault_proxy.rewrite(redis_url), retry=_no_retry())
    try:
        assert await client.ping()
        fault_proxy.swallow_next_reply()
        with pytest.raises(RedisConnectionError):
            await client.incr(unique_name)
        assert await redis.get(unique_name) == b"1"
    finally:
        await client.aclose()


async def test_swallow_only_matching_reply(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str, redis: aioredis.Redis
) -> None:
    client = _retrying(fault_proxy.rewrite(redis_url))
    try:
        assert await client.ping()  # the connection's handshake happens before arming
        fault_proxy.swallow_next_reply(match=b":1\r\n")
        assert await client.set(unique_name, b"0")  # +OK passes
        assert fault_proxy.swallow_pending
        assert await client.incr(unique_name) == 2  # :1 swallowed, retried -> :2
        assert fault_proxy.swallowed == 1
    finally:
        await client.aclose()
    assert await redis.get(unique_name) == b"2"


async def test_swallow_after_request(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str
) -> None:
    client = _retrying(fault_proxy.rewrite(redis_url))
    try:
        fault_proxy.swallow_next_reply(after_request=b"INCRBY")
        assert await client.set(unique_name, b"5")
        assert await client.get(unique_name) == b"5"
        assert fault_proxy.swallowed == 0
        assert await client.incrby(unique_name, 10) == 25  # 5 + 10 + 10 (re-sent)
        assert fault_proxy.swallowed == 1
    finally:
        await client.aclose()


async def test_pause_holds_replies_until_resume(
    fault_proxy: FaultProxy, redis_url: str, unique_name: str, redis: aioredis.Redis
) -> None:
    client = aioredis.Redis.from_url(fault_proxy.rewrite(redis_url), retry=_no_retry())
    try:
        assert await client.ping()
        fault_proxy.pause()
        assert fault_proxy.paused
        incr = asyncio.ensure_future(client.incr(unique_name))

        async def applied() -> bool:
            return await redis.get(unique_name) == b"1"

        await wait_until(applied, timeout=10)
        assert not incr.done()
        fault_proxy.resume()
        assert await asyncio.wait_for(incr, 10) == 1
    finally:
        fault_proxy.resume()
        await client.aclose()


async def test_stop_closes_everything(redis_url: str, unique_name: str) -> None:
    proxy = FaultProxy()
    await proxy.start()
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port, retry=_no_retry())
    try:
        assert await client.set(unique_name, b"1")
        await proxy.stop()
        assert proxy.active == 0
        with pytest.raises(RedisConnectionError):
            await client.get(unique_name)
    finally:
        await proxy.stop()
        await client.aclose()


async def test_proxy_in_front_of_restarted_server(private_server: RedisServer) -> None:
    async with FaultProxy("127.0.0.1", private_server.port) as proxy:
        client = _retrying(proxy.url)
        try:
            assert await client.set("k", b"v")
            await asyncio.to_thread(private_server.restart)
            # The server closed the upstream side; the proxy closes the client side.
            await wait_until(lambda: proxy.active == 0, timeout=10)
            assert await client.get("k") is None
        finally:
            await client.aclose()


# --------------------------------------------------------------------------- hang backstop

_HANGING_SUITE = """
import asyncio
import os


async def _stubborn() -> None:
    while True:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            pass


async def test_hangs_in_teardown(private_server) -> None:
    with open(os.environ["PID_FILE"], "w") as f:
        f.write(str(private_server.pid))
    asyncio.ensure_future(_stubborn())
    await asyncio.sleep(100)


def test_never_reached() -> None:
    pass
"""


def test_backstop_aborts_a_session_hung_in_teardown(tmp_path: Path) -> None:
    tests_dir = Path(__file__).parent
    suite = tmp_path / "tests"
    suite.mkdir()
    shutil.copy(tests_dir / "conftest.py", suite / "conftest.py")
    shutil.copy(tests_dir / "topology_fixtures.py", suite / "topology_fixtures.py")
    shutil.copytree(tests_dir.parent / "devtools", tmp_path / "devtools")
    (suite / "test_hang.py").write_text(textwrap.dedent(_HANGING_SUITE))
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "timeout = 1\npythonpath = tests .\n"
    )
    pid_file = tmp_path / "server.pid"
    env = {**os.environ, "REDSYNC_TEST_BACKSTOP_GRACE": "2", "PID_FILE": str(pid_file)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "test_hangs_in_teardown is still running after 3 s" in output, output
    assert "_stubborn" in output, output  # the task that ignores cancellation is named
    assert "test_never_reached" not in output.split("aborting the test session")[-1]
    # SIGKILLed by the backstop; reaped by init once the aborted pytest is gone.
    assert _wait_pid_gone(int(pid_file.read_text())), "private server left running"
