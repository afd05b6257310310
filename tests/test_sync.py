"""The blocking facade (``redsync.sync``): threads, fork, Ctrl-C, SIGKILL, exit.

These tests are plain functions (no event loop of their own): the facade
runs its own.  Processes are started for what must happen in another
process (a SIGKILL, a Ctrl-C, interpreter exit).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from devtools.topologies import ClusterTopology
from redis.cluster import RedisCluster

from helpers import keyspace
from redsync import (
    RedisLockError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
    RedisSemaphoreNotAcquiredError,
    RedisSemaphoreTimeoutError,
)
from redsync.sync import Event, Lock, ReadWriteLock, Semaphore

pytestmark = pytest.mark.timeout(120)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


@pytest.fixture
def sync_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_threads_share_a_semaphore_and_never_exceed_count(
    sync_client: redis.Redis, unique_name: str
) -> None:
    sem = Semaphore.create(sync_client, unique_name, count=2, lease_ttl=5)
    inside = peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        for _ in range(10):
            with sem:
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.003)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert peak == 2
        assert sem.statistics().available == 2
        assert sem.get_count() == 2
        sem.acquire()
        sem.acquire()
        other = Semaphore.attach(sync_client, unique_name, lease_ttl=5)
        with pytest.raises(RedisSemaphoreTimeoutError):
            other.acquire(timeout=0)
        other.close()
        sem.release()
        sem.release()
    finally:
        sem.close()
    sem.close()  # idempotent


def test_release_prefers_the_calling_threads_permit(redis_url: str, unique_name: str) -> None:
    sem = Semaphore.create(redis_url, unique_name, count=2, lease_ttl=5)
    try:
        other = threading.Thread(target=sem.acquire)
        other.start()
        other.join(30)
        sem.acquire()
        sem.release()  # this thread's own permit
        owners = [h.owner for h in sem._async._held.values()]
        assert owners == [other], owners
        sem.release()  # any thread may release the rest
        with pytest.raises(RedisSemaphoreNotAcquiredError):
            sem.release()
        assert sem.statistics().available == 2
    finally:
        sem.close()


def test_a_call_inside_a_running_event_loop_raises(redis_url: str, unique_name: str) -> None:
    sem = Semaphore.create(redis_url, unique_name, count=1)
    try:

        async def inside() -> None:
            sem.acquire()

        with pytest.raises(RuntimeError, match="running event loop"):
            asyncio.run(inside())
        assert sem.statistics().available == 1
    finally:
        sem.close()


def test_a_lease_lost_callback_may_call_back(
    sync_client: redis.Redis, unique_name: str, redis_url: str
) -> None:
    sem = Semaphore.create(sync_client, unique_name, count=1, lease_ttl=1.5)
    seen: list[int] = []
    sem.add_lease_lost_callback(lambda: seen.append(sem.statistics().count))
    try:
        sem.acquire()
        # Re-created under a new generation: the permit held here is void.
        sync_client.delete(*sync_client.scan_iter(match=f"*{unique_name}*"))
        fresh = Semaphore.create(redis_url, unique_name, count=1, lease_ttl=1.5)
        assert sem.wait_lease_lost(timeout=10)
        wait_for(lambda: seen == [1])
        fresh.close()
    finally:
        sem.close()


def test_a_forked_child_works_and_holds_nothing_of_its_parent(
    sync_client: redis.Redis, unique_name: str
) -> None:
    sem = Semaphore.create(sync_client, unique_name, count=2, lease_ttl=5)
    event = Event(sync_client, unique_name)
    try:
        sem.acquire()
        event.set()
        pid = os.fork()
        if pid == 0:  # the child
            faulthandler.dump_traceback_later(30, exit=True)  # never hang the suite
            status = 1
            try:
                try:
                    sem.release()
                except RedisSemaphoreNotAcquiredError:
                    sem.acquire(timeout=10)
                    event.wait(timeout=10)
                    sem.release()
                    status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        stats = sem.statistics()
        assert stats.held_here == 1 and stats.available == 1  # the parent's, still held
        sem.release()
        assert not event.is_set()  # the child took the signal
    finally:
        sem.close()
        event.close()


def _script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_ctrl_c_while_waiting_takes_nothing(redis_url: str, unique_name: str) -> None:
    holder = Semaphore.create(redis_url, unique_name, count=1, lease_ttl=5)
    holder.acquire()
    waiter = subprocess.Popen(
        _script(f"""
            import faulthandler, signal, sys
            # A hang shows where every thread stands, instead of a bare timeout.
            faulthandler.dump_traceback_later(20, exit=True)
            # As at a terminal: a job started in the background (nohup cmd &)
            # inherits SIGINT ignored, and its Python then never raises
            # KeyboardInterrupt.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            from redsync.sync import Semaphore
            sem = Semaphore.attach({redis_url!r}, {unique_name!r}, lease_ttl=5)
            print("waiting", flush=True)
            try:
                sem.acquire()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            sem.close()
        """),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "waiting"
        holders = keyspace(unique_name).key("holders")
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: int(client.zcard(holders)) >= 2)  # its slot is registered: it waits
        client.close()
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=30)
        assert "interrupted" in out, err
        assert waiter.returncode == 0, err
        holder.release()
        assert holder.statistics().available == 1  # nothing taken by the interrupted wait
    finally:
        if waiter.poll() is None:
            waiter.kill()
        holder.close()


def _held_in_a_thread_then_killed(source: str, make_client: str, name: str) -> None:
    proc = subprocess.Popen(
        _script(f"""
            import threading, time
            {make_client}
            from redsync.sync import Semaphore
            sem = Semaphore.create(client, {name!r}, count=1, lease_ttl=2)
            def hold():
                sem.acquire()
                print("held", flush=True)
            t = threading.Thread(target=hold)
            t.start(); t.join()
            time.sleep(60)
        """),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        proc.kill()
        proc.wait(10)
        killed_at = time.monotonic()
        after = Semaphore.attach(_source(source), name, lease_ttl=2, timeout=10)
        try:
            after.acquire(timeout=15)
            assert time.monotonic() - killed_at < 2 * 1.4 + 1.5
            after.release()
        finally:
            after.close()
    finally:
        if proc.poll() is None:
            proc.kill()


def _source(source: str) -> Any:
    if source.startswith("cluster:"):
        return RedisCluster.from_url(source[len("cluster:") :])
    return source


def test_a_sigkilled_process_holding_in_a_thread_frees_its_permit(
    redis_url: str, unique_name: str
) -> None:
    make = f"import redis; client = redis.Redis.from_url({redis_url!r})"
    _held_in_a_thread_then_killed(redis_url, make, unique_name)


def test_the_same_on_a_cluster(shared_cluster: ClusterTopology, unique_name: str) -> None:
    url = shared_cluster.startup_url
    make = f"from redis.cluster import RedisCluster; client = RedisCluster.from_url({url!r})"
    _held_in_a_thread_then_killed(f"cluster:{url}", make, unique_name)


def test_interpreter_exit_does_not_hang(redis_url: str, unique_name: str) -> None:
    started = time.monotonic()
    done = subprocess.run(
        _script(f"""
            from redsync.sync import Event, Semaphore
            sem = Semaphore.create({redis_url!r}, {unique_name!r}, count=1, lease_ttl=2)
            sem.acquire()
            event = Event({redis_url!r}, {unique_name!r})
            event.set()
            print("leaving", flush=True)
        """),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "leaving"
    assert time.monotonic() - started < 20
    assert "Traceback" not in done.stderr, done.stderr


def test_a_sentinel_master_for_client(shared_sentinel: Any, unique_name: str) -> None:
    """A blocking Sentinel ``master_for`` client is mirrored by an async one that
    follows the same service."""
    from redis.sentinel import Sentinel

    sentinel = Sentinel(shared_sentinel.sentinel_addresses, socket_timeout=5)
    client = sentinel.master_for(shared_sentinel.service_name)
    sem = Semaphore.create(client, unique_name, count=1, lease_ttl=5)
    try:
        with sem:
            assert sem.statistics().available == 0
        assert sem.statistics().available == 1
        assert client.exists(keyspace(unique_name).key("meta")) == 1  # the same server
    finally:
        sem.close()
        client.close()


def test_many_facade_objects_share_one_client_and_few_connections(
    private_server: Any, unique_name: str
) -> None:
    """Facade objects built from one blocking client share one async client (one
    pool, a few kept connections), as the async classes do: 200 semaphores and
    200 events cost a handful of connections, not 400."""
    from redsync._core.link import MAX_KEPT

    client = redis.Redis.from_url(private_server.url)
    sems = [
        Semaphore.create(client, f"{unique_name}-{i}", count=1, lease_ttl=5) for i in range(200)
    ]
    events = [Event(client, f"{unique_name}-{i}") for i in range(200)]
    try:
        for sem in sems:
            with sem:
                pass
        for event in events:
            event.set()
            event.wait(timeout=5)
        lines = [
            line
            for line in private_server.cli("CLIENT", "LIST").splitlines()
            if line and "cmd=client|list" not in line
        ]
        assert len(lines) <= MAX_KEPT + 1, lines  # + the blocking client's own
        assert sems[0].statistics().available == 1
    finally:
        for sem in sems:
            sem.close()
        for event in events:
            event.close()
        client.close()
    # The last user closed the shared client: nothing is left connected.
    wait_for(
        lambda: (
            not [
                line
                for line in private_server.cli("CLIENT", "LIST").splitlines()
                if line and "cmd=client|list" not in line and "cmd=client|setinfo" not in line
            ]
        )
    )


# -- the lock ----------------------------------------------------------------------------


def test_threads_share_a_lock_one_at_a_time_with_rising_fences(
    sync_client: redis.Redis, unique_name: str
) -> None:
    lock = Lock(sync_client, unique_name, lease_ttl=5)
    inside = peak = 0
    fences: list[int] = []
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        for _ in range(8):
            with lock as fence:
                assert lock.owned() and lock.fence == fence
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                    fences.append(fence)
                time.sleep(0.002)
                with guard:
                    inside -= 1
            assert not lock.owned()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert peak == 1 and len(fences) == 32
        assert fences == sorted(fences) and len(set(fences)) == 32
        assert not lock.locked()
    finally:
        lock.close()
    lock.close()  # idempotent


def test_lock_ownership_is_the_thread(redis_url: str, unique_name: str) -> None:
    lock = Lock(redis_url, unique_name, lease_ttl=5)
    try:
        other = threading.Thread(target=lock.acquire)
        other.start()
        other.join(30)
        assert lock.locked() and not lock.owned() and lock.fence is None
        with pytest.raises(RedisLockTimeoutError):
            lock.acquire(timeout=0.2)  # this thread waits like anyone else
        lock.release()  # any thread may release
        fence = lock.acquire(timeout=5)
        with pytest.raises(RedisLockError, match="reentrant"):
            lock.acquire()
        assert lock.owned() and lock.fence == fence
        lock.release()
        with pytest.raises(RedisLockNotAcquiredError):
            lock.release()
        assert lock.statistics().held_here is False
    finally:
        lock.close()


def test_a_reentrant_lock_counts_per_thread(sync_client: redis.Redis, unique_name: str) -> None:
    lock = Lock(sync_client, unique_name, lease_ttl=5, reentrant=True)
    try:
        fence = lock.acquire()
        assert lock.acquire() == fence
        assert lock.statistics().depth == 2
        lock.release()
        assert lock.owned() and lock.locked()
        lock.release()
        assert not lock.locked()
    finally:
        lock.close()


def test_a_lock_facade_checks_its_arguments_without_io() -> None:
    for kwargs, word in (({"lease_ttl": -1}, "lease_ttl"), ({"reentrant": "yes"}, "reentrant")):
        with pytest.raises((ValueError, TypeError), match=word):
            Lock("redis://127.0.0.1:9/0", "x", **kwargs)  # nothing listens there
    Lock("redis://127.0.0.1:9/0", "x").close()  # never used: closes without I/O


# -- the read-write lock -------------------------------------------------------------


def test_reader_threads_share_and_a_writer_thread_is_alone(
    sync_client: redis.Redis, unique_name: str
) -> None:
    rw = ReadWriteLock(sync_client, unique_name, lease_ttl=5)
    # Three reader threads and this one: the readers all hold at once (or the
    # wait times out), then the writers start and wait for them to leave.
    together = threading.Barrier(4, timeout=20)
    state = {"readers": 0, "writers": 0, "bad": 0}
    guard = threading.Lock()
    fences: list[int] = []

    def read() -> None:
        with rw.reader:
            assert rw.reader.owned()
            with guard:
                state["readers"] += 1
                state["bad"] += state["writers"]
            together.wait()
            time.sleep(0.02)
            with guard:
                state["readers"] -= 1

    def write() -> None:
        for _ in range(3):
            with rw.writer as fence:
                assert rw.writer.owned() and rw.writer.fence == fence
                with guard:
                    state["writers"] += 1
                    state["bad"] += state["readers"] + state["writers"] - 1
                    fences.append(fence)
                time.sleep(0.005)
                with guard:
                    state["writers"] -= 1

    try:
        threads = [threading.Thread(target=read) for _ in range(3)]
        for thread in threads:
            thread.start()
        together.wait()
        threads += [threading.Thread(target=write) for _ in range(2)]
        for thread in threads[3:]:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert state == {"readers": 0, "writers": 0, "bad": 0}
        assert len(fences) == 6 and fences == sorted(set(fences))
        assert rw.statistics().readers == 0
    finally:
        rw.close()
    rw.close()  # idempotent


def test_read_write_ownership_is_the_thread(redis_url: str, unique_name: str) -> None:
    rw = ReadWriteLock(redis_url, unique_name, lease_ttl=5)
    try:
        other = threading.Thread(target=rw.reader.acquire)
        other.start()
        other.join(30)
        assert not rw.reader.owned() and rw.statistics().readers == 1
        with pytest.raises(RedisLockTimeoutError):
            rw.writer.acquire(timeout=0.2)  # another thread's read: this thread waits
        rw.reader.release()  # any thread may release
        with rw.reader, pytest.raises(RedisLockError, match="release the read first"):
            rw.writer.acquire()
        with rw.writer as fence:
            assert rw.writer.fence == fence
            rw.writer.downgrade()
            assert rw.reader.owned() and not rw.writer.owned()
        assert not rw.reader.owned() and rw.statistics().readers == 0
        with pytest.raises(RedisLockNotAcquiredError):
            rw.writer.release()
    finally:
        rw.close()


_TAKE = {
    "lock": ("Lock", "held = Lock(client, {name!r}, lease_ttl=2); take = held.acquire"),
    "writer": (
        "ReadWriteLock",
        "held = ReadWriteLock(client, {name!r}, lease_ttl=2); take = held.writer.acquire",
    ),
    "reader": (
        "ReadWriteLock",
        "held = ReadWriteLock(client, {name!r}, lease_ttl=2); take = held.reader.acquire",
    ),
}


def _lock_held_in_a_thread_then_killed(source: str, make_client: str, name: str, kind: str) -> None:
    cls, build = _TAKE[kind]
    proc = subprocess.Popen(
        _script(f"""
            import threading, time
            {make_client}
            from redsync.sync import {cls}
            {build.format(name=name)}
            def hold():
                take()
                print("held", flush=True)
            t = threading.Thread(target=hold)
            t.start(); t.join()
            time.sleep(60)
        """),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        after: Any = (Lock if cls == "Lock" else ReadWriteLock)(_source(source), name, lease_ttl=2)
        try:
            taking = after.acquire if cls == "Lock" else after.writer.acquire
            with pytest.raises(RedisLockTimeoutError):
                taking(timeout=0.3)  # held by the other process's thread
            proc.kill()
            proc.wait(10)
            killed_at = time.monotonic()
            taking(timeout=15)
            assert time.monotonic() - killed_at < 2 * 1.4 + 1.5
        finally:
            after.close()
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("kind", sorted(_TAKE))
def test_a_sigkilled_process_holding_a_lock_in_a_thread_frees_it(
    redis_url: str, unique_name: str, kind: str
) -> None:
    make = f"import redis; client = redis.Redis.from_url({redis_url!r})"
    _lock_held_in_a_thread_then_killed(redis_url, make, unique_name, kind)


@pytest.mark.parametrize("kind", sorted(_TAKE))
def test_the_same_for_locks_on_a_cluster(
    shared_cluster: ClusterTopology, unique_name: str, kind: str
) -> None:
    url = shared_cluster.startup_url
    make = f"from redis.cluster import RedisCluster; client = RedisCluster.from_url({url!r})"
    _lock_held_in_a_thread_then_killed(f"cluster:{url}", make, unique_name, kind)


def test_a_forked_child_gets_working_locks_and_none_of_its_parents_holds(
    sync_client: redis.Redis, unique_name: str
) -> None:
    lock = Lock(sync_client, unique_name, lease_ttl=5)
    rw = ReadWriteLock(sync_client, unique_name, lease_ttl=5)
    try:
        fence = lock.acquire()
        rw.writer.acquire()
        pid = os.fork()
        if pid == 0:  # the child
            faulthandler.dump_traceback_later(30, exit=True)  # never hang the suite
            status = 1
            try:
                held_nothing = not lock.owned() and not rw.writer.owned()
                try:
                    lock.release()
                except RedisLockNotAcquiredError:
                    try:
                        rw.writer.release()
                    except RedisLockNotAcquiredError:
                        try:
                            lock.acquire(timeout=0.3)  # the parent holds it: a timeout
                        except RedisLockTimeoutError:
                            status = 0 if held_nothing else 1
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert lock.owned() and lock.fence == fence and rw.writer.owned()
        lock.release()
        rw.writer.release()
        assert not lock.locked() and rw.statistics().gate_held is False
    finally:
        lock.close()
        rw.close()
