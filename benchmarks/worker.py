"""Runs benchmark cases for one library in this interpreter and prints JSON results.

The harness starts it as ``python -m benchmarks.worker SPEC`` (working
directory: the repository root) with the interpreter of the library's
environment, so redsync 2.0.0 and this repository's redsync, which share an
import name, never meet in one process.  ``SPEC`` is a JSON object or a list
of them; each result is printed on a line starting with ``BENCH-RESULT``.

Round trips are counted on the client: every ``send_packed_command`` of
redis-py (async or sync) is one request written to the server (a pipeline is
one).  Server-side commands come from ``INFO commandstats`` deltas, which
count commands run inside scripts under their own names as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .contenders import Family, Handle, async_client, probe
from .stats import percentile

RESULT_MARK = "BENCH-RESULT "
MONITOR_NAME = "bench-monitor"
#: Commands the measuring connection itself sends; left out of every delta.
OWN_COMMANDS = frozenset({"info", "client|list", "echo", "monitor", "client|setname", "hello"})
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})

_sends = 0
_sends_lock = threading.Lock()


def _install_send_counter() -> None:
    from redis.asyncio.connection import AbstractConnection as AsyncConnection
    from redis.connection import AbstractConnection as SyncConnection

    async_send = AsyncConnection.send_packed_command
    sync_send = SyncConnection.send_packed_command

    async def counted_async(self: Any, command: Any, check_health: bool = True) -> None:
        global _sends
        if getattr(self, "client_name", None) != MONITOR_NAME:
            _sends += 1
        await async_send(self, command, check_health)

    def counted_sync(self: Any, command: Any, check_health: bool = True) -> None:
        global _sends
        if getattr(self, "client_name", None) != MONITOR_NAME:
            with _sends_lock:
                _sends += 1
        sync_send(self, command, check_health)  # type: ignore[no-untyped-call]

    AsyncConnection.send_packed_command = counted_async  # type: ignore[method-assign]
    SyncConnection.send_packed_command = counted_sync  # type: ignore[method-assign]


def sends() -> int:
    with _sends_lock:
        return _sends


class Probe:
    """The measuring connection: command statistics and client lists."""

    def __init__(self, port: int) -> None:
        self.client = async_client(port, MONITOR_NAME)

    async def commandstats(self) -> dict[str, int]:
        info = await self.client.info("commandstats")
        calls: dict[str, int] = {}
        for key, value in info.items():
            if key.startswith("cmdstat_") and isinstance(value, dict):
                calls[key[len("cmdstat_") :]] = int(value["calls"])
        return calls

    async def connections(self, client_name: str) -> int:
        clients = await self.client.client_list()
        return sum(1 for c in clients if c.get("name") == client_name)

    async def close(self) -> None:
        await self.client.aclose()


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {}
    for name, calls in after.items():
        diff = calls - before.get(name, 0)
        if diff > 0 and name not in OWN_COMMANDS:
            delta[name] = diff
    return delta


def summarize_commands(delta: dict[str, int]) -> dict[str, Any]:
    scripts = sum(v for k, v in delta.items() if k in SCRIPT_COMMANDS)
    return {"commands": sum(delta.values()), "scripts": scripts, "by_command": delta}


def _family(spec: dict[str, Any], client_name: str, max_connections: int = 100) -> Family:
    return Family(
        spec["lib"],
        spec["port"],
        spec["name"],
        count=spec.get("count", 1),
        lease_ttl=spec.get("lease_ttl", 300.0),
        client_name=client_name,
        max_connections=max_connections,
    )


def _clock(spec: dict[str, Any]) -> Callable[[], float]:
    return time.time if spec.get("clock") == "wall" else time.perf_counter


# -- the floor -------------------------------------------------------------------


async def run_floor(spec: dict[str, Any]) -> dict[str, Any]:
    client = async_client(spec["port"], "bench-floor")
    ops = int(spec["ops"])
    key = f"{spec['name']}:list"
    try:
        for _ in range(200):
            await client.ping()
        ping: list[float] = []
        started = time.perf_counter()
        for _ in range(ops):
            t0 = time.perf_counter()
            await client.ping()
            ping.append(time.perf_counter() - t0)
        ping_elapsed = time.perf_counter() - started
        per_op: list[float] = []
        pairs: list[float] = []
        started = time.perf_counter()
        for _ in range(ops):
            t0 = time.perf_counter()
            await client.rpush(key, "x")
            t1 = time.perf_counter()
            await client.lpop(key)
            t2 = time.perf_counter()
            per_op += (t1 - t0, t2 - t1)
            pairs.append(t2 - t0)
        list_elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return {
        "ping_p50": percentile(ping, 50),
        "ping_p99": percentile(ping, 99),
        "ping_ops": ops / ping_elapsed,
        "list_p50": percentile(per_op, 50),
        "list_p99": percentile(per_op, 99),
        "list_ops": 2 * ops / list_elapsed,
        "pair_p50": percentile(pairs, 50),
        "pair_p99": percentile(pairs, 99),
    }


# -- case 1: uncontended ------------------------------------------------------------


async def run_uncontended(spec: dict[str, Any]) -> dict[str, Any]:
    cycles = int(spec["cycles"])
    family = _family(spec, "bench-lib")
    probe_ = Probe(spec["port"])
    await family.start(1)
    try:
        handle = await family.handle()
        for _ in range(min(100, cycles)):
            await handle.acquire()
            await handle.release()
        before = await probe_.commandstats()
        sent = sends()
        cpu = time.process_time()
        cycle: list[float] = []
        acquire: list[float] = []
        release: list[float] = []
        started = time.perf_counter()
        for _ in range(cycles):
            t0 = time.perf_counter()
            await handle.acquire()
            t1 = time.perf_counter()
            await handle.release()
            t2 = time.perf_counter()
            cycle.append(t2 - t0)
            acquire.append(t1 - t0)
            release.append(t2 - t1)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        sent = sends() - sent
        delta = command_delta(before, await probe_.commandstats())
        split = await _monitor_split(spec["port"], handle, int(spec.get("monitor_cycles", 100)))
    finally:
        await family.close()
        await probe_.close()
    commands = summarize_commands(delta)
    return {
        "p50": percentile(cycle, 50),
        "p99": percentile(cycle, 99),
        "acquire_p50": percentile(acquire, 50),
        "release_p50": percentile(release, 50),
        "cycles_per_s": cycles / elapsed,
        "round_trips": sent / cycles,
        "commands": commands["commands"] / cycles,
        "scripts": commands["scripts"] / cycles,
        "by_command": {k: v / cycles for k, v in sorted(delta.items())},
        "cpu": cpu / cycles,
        **split,
    }


async def _monitor_split(port: int, handle: Handle, cycles: int) -> dict[str, float]:
    """Top-level commands vs commands run inside scripts, from MONITOR (a separate pass)."""
    if cycles <= 0:
        return {}
    client = async_client(port, MONITOR_NAME)
    marker = async_client(port, MONITOR_NAME)
    await marker.ping()  # connected now, so that its handshake is not seen below
    seen: Counter[str] = Counter()
    try:
        async with client.monitor() as monitor:

            async def read() -> None:
                while True:
                    entry = await monitor.next_command()
                    command = str(entry["command"])
                    if command.lower() == "echo bench-monitor-end":
                        return
                    kind = "inner" if entry["client_type"] == "lua" else "top"
                    seen[kind] += 1

            reader = asyncio.ensure_future(read())
            await asyncio.sleep(0.05)
            for _ in range(cycles):
                await handle.acquire()
                await handle.release()
            await marker.echo("bench-monitor-end")
            await asyncio.wait_for(reader, 10)
    finally:
        await client.aclose()
        await marker.aclose()
    return {"top_level": seen["top"] / cycles, "inner": seen["inner"] / cycles}


# -- cases 2, 3, 6: contended ---------------------------------------------------------


async def run_contended(spec: dict[str, Any]) -> dict[str, Any]:
    tasks = int(spec["tasks"])
    duration = float(spec["duration"])
    hold = float(spec.get("cs", 0.0))
    clock = _clock(spec)
    family = _family(spec, "bench-lib", tasks + 16)
    probe_ = Probe(spec["port"])
    await family.start(tasks)
    try:
        handles = [await family.handle() for _ in range(tasks)]
        for handle in handles:
            await handle.acquire()
            await handle.release()
        barrier = spec.get("barrier")
        if barrier is not None:
            await _barrier(probe_, barrier["key"], int(barrier["parties"]))
        records: list[list[tuple[float, float, float]]] = [[] for _ in handles]
        stop = False

        async def work(index: int, handle: Handle) -> None:
            mine = records[index]
            while not stop:
                t0 = clock()
                await handle.acquire()
                t1 = clock()
                if hold:
                    await asyncio.sleep(hold)
                t2 = clock()
                await handle.release()
                mine.append((t0, t1, t2))

        before = await probe_.commandstats()
        sent = sends()
        cpu = time.process_time()
        window_start = clock()
        workers = [asyncio.ensure_future(work(i, h)) for i, h in enumerate(handles)]
        await asyncio.sleep(duration)
        window_end = clock()
        stop = True
        cpu = time.process_time() - cpu
        sent = sends() - sent
        delta = command_delta(before, await probe_.commandstats())
        _, pending = await asyncio.wait(workers, timeout=float(spec.get("drain_cap", 30.0)))
        for worker in pending:
            worker.cancel()
        undrained = len(pending)
    finally:
        await family.close()
        await probe_.close()
    return {
        "window": [window_start, window_end],
        "records": records,
        "cpu": cpu,
        "sends": sent,
        "undrained": undrained,
        **summarize_commands(delta),
    }


async def _barrier(probe_: Probe, key: str, parties: int) -> None:
    """Start the processes of one run together (within a few milliseconds)."""
    client = probe_.client
    if await client.incr(key) == parties:
        await client.set(f"{key}:go", repr(time.time() + 0.05))
    deadline = time.time() + 60
    go = None
    while go is None and time.time() < deadline:
        go = await client.get(f"{key}:go")
        if go is None:
            await asyncio.sleep(0.002)
    if go is None:
        raise RuntimeError("the other processes of this run never arrived")
    await asyncio.sleep(max(0.0, float(go) - time.time()))


# -- case 4: the cost of waiting -------------------------------------------------------


async def run_waiting(spec: dict[str, Any]) -> dict[str, Any]:
    waiters = int(spec["waiters"])
    hold = float(spec["hold"])
    holder_family = _family(spec, "bench-holder")
    family = _family(spec, "bench-waiters", waiters + 16)
    probe_ = Probe(spec["port"])
    await holder_family.start(1)
    await family.start(waiters)
    try:
        holder = await holder_family.handle()
        handles = [await family.handle() for _ in range(waiters)]
        await holder.acquire()
        records: list[tuple[float, float, float]] = []

        async def wait(handle: Handle) -> None:
            t0 = time.perf_counter()
            await handle.acquire()
            t1 = time.perf_counter()
            await handle.release()
            records.append((t0, t1, time.perf_counter()))

        held_at = time.perf_counter()
        tasks = [asyncio.ensure_future(wait(h)) for h in handles]
        await asyncio.sleep(min(0.5, hold / 4))
        before = await probe_.commandstats()
        sent = sends()
        cpu = time.process_time()
        measured_from = time.perf_counter()
        await asyncio.sleep(max(0.0, held_at + hold / 2 - time.perf_counter()))
        connections = await probe_.connections("bench-waiters")
        await asyncio.sleep(max(0.0, held_at + hold - 0.05 - time.perf_counter()))
        delta = command_delta(before, await probe_.commandstats())
        measured = time.perf_counter() - measured_from
        cpu = time.process_time() - cpu
        sent = sends() - sent
        waiting_now = sum(1 for t in tasks if not t.done())
        released_at = time.perf_counter()
        await holder.release()
        drain_cap = float(spec.get("drain_cap", 10.0))
        _, pending = await asyncio.wait(tasks, timeout=drain_cap)
        gave_up = time.perf_counter()
        for task in pending:
            task.cancel()
    finally:
        await family.close()
        await holder_family.close()
        await probe_.close()
    commands = summarize_commands(delta)
    return {
        "commands_per_s": commands["commands"] / measured,
        "scripts_per_s": commands["scripts"] / measured,
        "round_trips_per_s": sent / measured,
        "by_command_per_s": {k: v / measured for k, v in sorted(delta.items())},
        "cpu_per_s": cpu / measured,
        "connections": connections,
        "waiting": waiting_now,
        "drained": len(records),
        "undrained": len(pending),
        "drain_cap": drain_cap,
        # When some waiters never got through, both figures are the time given up after.
        "drain_last_acquire": (gave_up if pending else max(r[1] for r in records)) - released_at,
        "drain": (gave_up if pending else max(r[2] for r in records)) - released_at,
    }


# -- case 4b: many idle semaphores -------------------------------------------------------


async def run_idle(spec: dict[str, Any]) -> dict[str, Any]:
    """``semaphores`` semaphores on one client, a fifth used once, then left idle:
    server commands per second and connections while nothing happens."""
    from redsync import RedisSemaphore

    n, ttl, window = int(spec["semaphores"]), float(spec["idle_ttl"]), float(spec["window"])
    # 2.0.0 gets the pool it needs; ours runs on a default client.
    pool = n + 16 if spec["lib"] == "rs2" else 100
    client = async_client(spec["port"], "bench-idle", pool)
    probe_ = Probe(spec["port"])
    sems: list[Any] = []
    tasks_before = len(asyncio.all_tasks())
    try:
        for i in range(n):
            sems.append(
                await RedisSemaphore.create(client, f"{spec['name']}:{i}", count=2, lease_ttl=ttl)
            )
        for sem in sems[::5]:
            async with sem:
                pass
        await asyncio.sleep(ttl)  # past the first renewals of every instance
        before = await probe_.commandstats()
        started = time.perf_counter()
        await asyncio.sleep(window)
        delta = command_delta(before, await probe_.commandstats())
        measured = time.perf_counter() - started
        connections = await probe_.connections("bench-idle")
        tasks = len(asyncio.all_tasks()) - tasks_before
    finally:
        for sem in sems:
            await sem.close()
        await client.aclose()
        await probe_.close()
    commands = summarize_commands(delta)
    return {
        "commands_per_s": commands["commands"] / measured,
        "by_command_per_s": {k: v / measured for k, v in sorted(delta.items())},
        "connections": connections,
        "tasks": tasks,
    }


# -- case 4c: many instances, many semaphores ----------------------------------------------


async def _all_waiting(
    probe_: Probe, lib: str, names: list[str], expected: int, prefix: str = "redsync:semaphore"
) -> None:
    """Return once ``expected`` waiters wait in the server: blocked connections
    (2.0.0, and ours where it blocks) plus tickets queued in waiter queues (ours)."""
    queues: list[str] = []
    if lib == "ours":
        from redsync._core.keys import KeySpace

        queues = [KeySpace(prefix, name).key("waiters") for name in names]
    deadline = time.perf_counter() + 60
    while True:
        blocked = int((await probe_.client.info("clients"))["blocked_clients"])
        queued = 0
        for start in range(0, len(queues), 500):
            pipe = probe_.client.pipeline(transaction=False)
            for key in queues[start : start + 500]:
                pipe.zcard(key)
            queued += sum(await pipe.execute())
        if blocked + queued >= expected:
            return
        if time.perf_counter() > deadline:
            raise RuntimeError(f"only {blocked + queued} of {expected} waiters queued in 60 s")
        await asyncio.sleep(0.05)


async def _drain(
    spec: dict[str, Any], tasks: list[asyncio.Future[None]]
) -> tuple[Any, float, list[str]]:
    """Wait for ``tasks`` (at most the drain cap): the ones left, when the wait ended,
    and the errors of those that failed."""
    _, pending = await asyncio.wait(tasks, timeout=float(spec.get("drain_cap", 60.0)))
    ended = time.perf_counter()
    for task in pending:
        task.cancel()
    errors = [
        repr(t.exception()) for t in tasks if t.done() and not t.cancelled() and t.exception()
    ]
    return pending, ended, errors


def _drained(
    connections: int,
    waiting: int,
    instances: int,
    done: list[float],
    pending: Any,
    ended: float,
    started: float,
    errors: list[str],
) -> dict[str, Any]:
    """The result of a many-instances case."""
    if errors:
        raise RuntimeError(f"{len(errors)} waiters failed, first: {errors[0]}")
    return {
        "connections": connections,
        "waiting": waiting,
        "instances": instances,
        "drained": len(done),
        "undrained": len(pending),
        "drain": (ended if pending else max(done)) - started,
    }


async def run_instances(spec: dict[str, Any]) -> dict[str, Any]:
    """``semaphores`` semaphores, each with 1 holder and ``waiters`` waiter instances
    (one instance per waiting task, as 2.0.0 code is written), all in one process:
    connections while everyone waits, and the drain after every holder released."""
    from redsync import RedisSemaphore

    n, w = int(spec["semaphores"]), int(spec["waiters"])
    # 2.0.0 gets the pool it needs; ours runs on a default-sized client (100).
    pool = n * (w + 1) + 16 if spec["lib"] == "rs2" else 100
    client = async_client(spec["port"], "bench-instances", pool)
    holder_client = async_client(spec["port"], "bench-holders", n + 16)
    probe_ = Probe(spec["port"])
    names = [f"{spec['name']}:{i}" for i in range(n)]
    holders: list[Any] = []
    sems: list[Any] = []
    try:
        for name in names:
            holder = await RedisSemaphore.create(holder_client, name, count=1, lease_ttl=30.0)
            await holder.acquire()
            holders.append(holder)
        for name in names:
            for _ in range(w):
                sems.append(await RedisSemaphore.create(client, name, count=1, lease_ttl=30.0))
        done: list[float] = []

        async def wait(sem: Any) -> None:
            await sem.acquire()
            await sem.release()
            done.append(time.perf_counter())

        tasks = [asyncio.ensure_future(wait(s)) for s in sems]
        await _all_waiting(probe_, spec["lib"], names, len(sems))
        connections = await probe_.connections("bench-instances")
        waiting_now = sum(1 for t in tasks if not t.done())
        released_at = time.perf_counter()
        await asyncio.gather(*(h.release() for h in holders))
        pending, ended, errors = await _drain(spec, tasks)
    finally:
        for sem in sems + holders:
            try:
                await sem.close()
            except Exception:
                pass
        await client.aclose()
        await holder_client.aclose()
        await probe_.close()
    return _drained(connections, waiting_now, len(sems), done, pending, ended, released_at, errors)


async def run_event_instances(spec: dict[str, Any]) -> dict[str, Any]:
    """``events`` events, each with ``waiters`` waiting instances (one per waiting
    task) in one process: connections while everyone waits, and the drain once a
    setter (on its own client) has set each event once per waiter."""
    from redsync import RedisEvent

    n, w = int(spec["events"]), int(spec["waiters"])
    # 2.0.0 gets the pool it needs; ours runs on a default-sized client (100).
    pool = n * w + 16 if spec["lib"] == "rs2" else 100
    client = async_client(spec["port"], "bench-instances", pool)
    # The sets go out at once: 2.0.0 needs a connection for each.
    setter_client = async_client(spec["port"], "bench-holders", n * w + 16)
    probe_ = Probe(spec["port"])
    names = [f"{spec['name']}:{i}" for i in range(n)]
    events = [RedisEvent(client, name) for name in names for _ in range(w)]
    setters = [RedisEvent(setter_client, name) for name in names]
    done: list[float] = []

    async def wait(event: Any) -> None:
        await event.wait()
        done.append(time.perf_counter())

    tasks = [asyncio.ensure_future(wait(e)) for e in events]
    try:
        await _all_waiting(probe_, spec["lib"], names, len(events), prefix="redsync:event")
        connections = await probe_.connections("bench-instances")
        waiting_now = sum(1 for t in tasks if not t.done())
        set_at = time.perf_counter()
        await asyncio.gather(*(s.set() for s in setters for _ in range(w)))
        pending, ended, errors = await _drain(spec, tasks)
    finally:
        for event in events + setters:
            close = getattr(event, "close", None)  # 2.0.0's events have none
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass
        await client.aclose()
        await setter_client.aclose()
        await probe_.close()
    return _drained(connections, waiting_now, len(events), done, pending, ended, set_at, errors)


# -- case 4d: many permits in one instance ------------------------------------------------


async def run_permits(spec: dict[str, Any]) -> dict[str, Any]:
    """Take every permit of a ``permits``-permit semaphore, one after another: ours
    in one instance, 2.0.0 in one instance per permit (an instance of 2.0.0 holds
    one).  Time per quarter, to show whether a permit costs more the more are held."""
    from redsync import RedisSemaphore

    permits = int(spec["permits"])
    one = spec["lib"] == "ours"
    client = async_client(spec["port"], "bench-permits", 100 if one else permits + 16)
    sems: list[Any] = []
    quarters: list[float] = []
    try:
        first = await RedisSemaphore.create(client, spec["name"], count=permits, lease_ttl=30.0)
        sems.append(first)
        quarter = permits // 4
        started = mark = time.perf_counter()
        for i in range(permits):
            if one:
                sem = first
            else:
                sem = (
                    first
                    if i == 0
                    else await RedisSemaphore.create(
                        client, spec["name"], count=permits, lease_ttl=30.0
                    )
                )
                if i:
                    sems.append(sem)
            await sem.acquire(timeout=10)
            if (i + 1) % quarter == 0:
                now = time.perf_counter()
                quarters.append(now - mark)
                mark = now
        total = time.perf_counter() - started
        for sem in sems:
            for _ in range(permits if one else 1):
                await sem.release()
    finally:
        for sem in sems:
            try:
                await sem.close()
            except Exception:
                pass
        await client.aclose()
    return {
        "total": total,
        "quarters": quarters,
        "first_quarter": quarters[0],
        "last_quarter": quarters[-1],
        "growth": quarters[-1] / quarters[0],
    }


async def run_rwlock(spec: dict[str, Any]) -> dict[str, Any]:
    """The read-write lock: ``tasks`` tasks (one instance each) with a
    ``cs``-second critical section, all readers, then all writers, for
    ``duration`` s each (throughput); then a writer in another process
    (``benchmarks/rw_writer.py``) arriving ``writers`` times behind a steady
    stream of those readers (all of them taking their reads without
    queueing), timed from its ``acquire()`` until it is in."""
    from redsync import RedisReadWriteLock

    tasks, cs, duration = int(spec["tasks"]), float(spec["cs"]), float(spec["duration"])
    client = async_client(spec["port"], "bench-rwlock")
    locks = [RedisReadWriteLock(client, spec["name"], lease_ttl=30.0) for _ in range(tasks)]
    holds: list[tuple[float, float, float]] = []  # (asked, in, out) of streaming readers

    async def one(rw: RedisReadWriteLock, write: bool, until: float, log: bool = False) -> int:
        done = 0
        side: Any = rw.writer if write else rw.reader
        while time.monotonic() < until:
            asked = time.monotonic()
            async with side:
                began = time.monotonic()
                await asyncio.sleep(cs)
                if log:
                    holds.append((asked, began, time.monotonic()))
            done += 1
        return done

    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.rw_writer",
        str(spec["port"]),
        spec["name"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert writer.stdin is not None and writer.stdout is not None
    waits: list[float] = []
    overtaken = 0
    try:
        for rw in locks:  # first use creates the gate: not part of the figures
            async with rw.reader:
                pass
        rates = {}
        for write in (False, True):
            until = time.monotonic() + duration
            counts = await asyncio.gather(*(one(rw, write, until) for rw in locks))
            rates["writers" if write else "readers"] = sum(counts) / duration
        stop = time.monotonic() + 3600
        stream = [asyncio.ensure_future(one(rw, False, stop, True)) for rw in locks]
        try:
            for _ in range(int(spec["writers"])):
                # The stream again: the readers that queued behind the last
                # writer have passed the gate (one by one), and every reader
                # takes its read without queueing.
                while any(rw._gate._waiting for rw in locks):  # noqa: ASYNC110
                    await asyncio.sleep(cs)
                await asyncio.sleep(5 * cs)
                writer.stdin.write(b"go\n")
                await writer.stdin.drain()
                line = await asyncio.wait_for(writer.stdout.readline(), 30)
                asked, registered, got = map(float, line.split())
                waits.append(got - asked)
                # Reads that asked after the writer's entry was registered (so
                # after it in the server's order), yet got in before it.
                overtaken += sum(1 for a, began, _ in holds if registered < a and began < got)
        finally:
            for task in stream:
                task.cancel()
            await asyncio.gather(*stream, return_exceptions=True)
    finally:
        if writer.returncode is None:
            writer.stdin.write(b"stop\n")
            await writer.stdin.drain()
            try:
                await asyncio.wait_for(writer.wait(), 10)
            except asyncio.TimeoutError:
                writer.kill()
        for rw in locks:
            await rw.close()
        await client.aclose()
    waits.sort()
    spans = sorted(out - began for _, began, out in holds)
    return {
        "read_hold_p50": spans[len(spans) // 2],
        "reads_overtaking_writers": overtaken,
        "readers_throughput": rates["readers"],
        "writers_throughput": rates["writers"],
        "ratio": rates["readers"] / rates["writers"],
        "writer_wait_p50": waits[len(waits) // 2],
        "writer_wait_max": waits[-1],
        "cs": cs,
    }


# -- case 5: crash recovery (the harness kills the holder) --------------------------------


async def run_crash_holder(spec: dict[str, Any]) -> dict[str, Any]:
    family = _family(spec, "bench-crash-holder")
    await family.start(1)
    handle = await family.handle()
    await handle.acquire()
    print("ACQUIRED", flush=True)
    await asyncio.sleep(3600)
    return {}


async def run_crash_waiter(spec: dict[str, Any]) -> dict[str, Any]:
    family = _family(spec, "bench-crash-waiter")
    await family.start(1)
    handle = await family.handle()
    waiting = asyncio.ensure_future(handle.acquire())
    await asyncio.sleep(0.05)
    print("WAITING", flush=True)
    await waiting
    acquired_at = time.time()
    print(RESULT_MARK + json.dumps({"acquired_at": acquired_at}), flush=True)
    await handle.release()
    await family.close()
    return {"acquired_at": acquired_at}


MODES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "floor": run_floor,
    "uncontended": run_uncontended,
    "contended": run_contended,
    "waiting": run_waiting,
    "crash_holder": run_crash_holder,
    "crash_waiter": run_crash_waiter,
    "idle": run_idle,
    "instances": run_instances,
    "event_instances": run_event_instances,
    "permits": run_permits,
    "rwlock": run_rwlock,
}


async def run(specs: list[dict[str, Any]]) -> None:
    for spec in specs:
        mode = spec["mode"]
        if mode == "probe":
            result: dict[str, Any] = probe(spec["lib"])
        else:
            try:
                result = await MODES[mode](spec)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
            if mode == "crash_waiter" and "error" not in result:
                continue  # printed as soon as the permit arrived
        print(RESULT_MARK + json.dumps(result), flush=True)
        await _settle_leftovers()
    sys.stdout.flush()
    # Leave without asyncio.run()'s clean-up: tasks a library does not let go of
    # when cancelled, and threads of a synchronous one in a blocking read, would
    # keep the process alive.
    os._exit(0)


async def _settle_leftovers() -> None:
    """Cancel what a case left running, so that it cannot disturb the next case."""
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        await asyncio.wait(leftovers, timeout=1.0)


def main() -> None:
    raw = json.loads(sys.argv[1])
    specs = raw if isinstance(raw, list) else [raw]
    _install_send_counter()
    asyncio.run(run(specs))


if __name__ == "__main__":
    main()
