"""The chaos runner: a storm of faults against many worker processes, then an independent audit.

For each topology:

1. Start it (standalone: a private ``redis-server`` that workers reach through
   a :class:`FaultProxy` running in this process's event loop).
2. Create the semaphore (``count`` permits) with a "keeper" instance that
   stays alive all run (it never acquires; its renewals reclaim the permits
   of dead holders and re-establish lost keys), and pick an event name.
3. Start ``workers`` processes (:mod:`devtools.chaos.worker`); each attaches to
   the semaphore and runs semaphore loops, event setters and waiters, and a
   canceller, writing everything to its own ledger.
4. Inject faults for ``duration`` seconds (:mod:`devtools.chaos.faults`).
5. Stop the faults, SIGTERM the workers (SIGKILL after a deadline), and poll
   Redis until every permit is back in the pool (at most ~2 x lease_ttl).
6. Audit with fresh clients: the tokens in Redis (exactly ``count`` unique
   tokens of the current generation), ``attach()`` + ``count`` acquisitions +
   one that must time out, the event's pending signals drained and counted;
   and the ledgers (:mod:`devtools.chaos.observer`): simultaneous holders,
   over-admissions, signals lost or duplicated, recovery times.

The whole run has a hard deadline; every child process is killed by pid on
every way out (including Ctrl-C and SIGTERM), and private servers are stopped.
Exit status: 0 when no invariant was violated, 1 otherwise, 2 on a usage or
set-up error, 3 when the hard deadline fired.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .conn import close_client, make_client, replica_kwargs
from .faults import SMALL_WEIGHTS, Injector, plan, stall_bounds
from .ledger import Ledger, Tail
from .observer import RUNNER_LEDGER, observe, percentile
from .redis_state import (
    EventLists,
    Keys,
    event_lists,
    holder_members,
    instance_tokens,
    pending_signals,
    token_picture,
)
from .topology import (
    TOPOLOGIES,
    Topology,
    admin,
    make_topology,
    topologies_available,
)

__all__ = ["Options", "main", "parse_args", "run"]

#: Every child process started by any run in this interpreter (for emergency kills).
_CHILDREN: set[subprocess.Popen[bytes]] = set()
_CHILDREN_LOCK = threading.Lock()


# --------------------------------------------------------------------------- options


@dataclass
class Options:
    topologies: list[str]
    duration: float = 60.0
    seed: int = 1
    workers: int = 4
    count: int = 3
    lease_ttl: float = 6.0
    socket_timeout: float | None = None
    sem_tasks: int = 4
    lock_tasks: int = 2
    rw_tasks: int = 3
    waiters: int = 2
    setters: int = 1
    hold_max: float = 0.02
    keep_notices: bool = False
    fault_interval: float = 0.5
    big_faults: int | None = None
    failover: str = "mixed"
    wait_replicas: int | None = None
    faults: list[str] | None = None
    json_path: str | None = None
    ledger_dir: str | None = None
    keep_ledgers: bool = False
    strict: bool = False
    quiet: bool = False
    deadline: float | None = None

    @property
    def effective_socket_timeout(self) -> float:
        if self.socket_timeout is not None:
            return self.socket_timeout
        return round(min(1.0, self.lease_ttl / 6), 3)

    @property
    def effective_big_faults(self) -> int:
        if self.big_faults is not None:
            return self.big_faults
        return max(1, round(self.duration / 20))


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m devtools.chaos",
        description=(
            "Chaos runner for redsync: worker processes hammer one RedisSemaphore and one "
            "RedisEvent while faults are injected; then the ledgers and Redis are audited. "
            "Exit status 1 on any invariant violation."
        ),
    )
    p.add_argument("--topology", default="standalone", choices=[*TOPOLOGIES, "all"])
    p.add_argument("--duration", type=float, default=60.0, help="storm length, seconds")
    p.add_argument("--seed", type=int, default=1, help="fault schedule seed")
    p.add_argument("--workers", type=int, default=4, help="worker processes")
    p.add_argument("--count", type=int, default=3, help="semaphore permits")
    p.add_argument("--lease-ttl", type=float, default=6.0, help="semaphore lease_ttl, seconds")
    p.add_argument(
        "--socket-timeout",
        type=float,
        default=None,
        help="workers' client socket_timeout (default: min(1, lease_ttl/6))",
    )
    p.add_argument("--sem-tasks", type=int, default=4, help="semaphore tasks per worker")
    p.add_argument("--lock-tasks", type=int, default=2, help="lock tasks per worker")
    p.add_argument(
        "--rw-tasks", type=int, default=3, help="read-write lock tasks per worker (1 in 3 writes)"
    )
    p.add_argument("--waiters", type=int, default=2, help="event waiter tasks per worker")
    p.add_argument("--setters", type=int, default=1, help="event setter tasks per worker")
    p.add_argument("--hold-max", type=float, default=0.02, help="longest hold, seconds")
    p.add_argument(
        "--fault-interval", type=float, default=0.5, help="mean gap between small faults, s"
    )
    p.add_argument(
        "--big-faults",
        type=int,
        default=None,
        help="restarts/failovers per topology (default: one per 20 s, at least one)",
    )
    p.add_argument("--failover", default="mixed", choices=["graceful", "kill", "mixed"])
    p.add_argument(
        "--wait-replicas",
        type=int,
        default=None,
        help="passed to the library as wait_replicas= where it accepts it",
    )
    p.add_argument(
        "--faults",
        default=None,
        help=f"comma-separated small fault kinds to inject (default all: {','.join(SMALL_WEIGHTS)}"
        ", or 'none')",
    )
    p.add_argument(
        "--keep-notices",
        action="store_true",
        help="deliver every hand-off notice (by default workers drop or delay some)",
    )
    p.add_argument("--json", dest="json_path", default=None, help="write results as JSON here")
    p.add_argument("--ledger-dir", default=None, help="where ledgers go (default: a temp dir)")
    p.add_argument(
        "--keep-ledgers",
        action="store_true",
        help="keep ledgers even when the run is clean (always kept on a violation)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="count over-admissions / lost signals that follow a lossy failover "
        "(documented limit of asynchronous replication) as violations too",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="hard limit on the whole run, seconds: then every child is killed and the "
        "runner exits with status 3 (default: generous, from the other options)",
    )
    a = p.parse_args(argv)
    if a.workers < 1 or a.count < 1 or a.duration <= 0 or a.lease_ttl <= 0:
        p.error("--workers, --count, --duration and --lease-ttl must be positive")
    faults: list[str] | None = None
    if a.faults is not None:
        faults = [] if a.faults == "none" else [f for f in a.faults.split(",") if f]
        unknown = set(faults) - set(SMALL_WEIGHTS)
        if unknown:
            p.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    return Options(
        topologies=list(TOPOLOGIES) if a.topology == "all" else [a.topology],
        duration=a.duration,
        seed=a.seed,
        workers=a.workers,
        count=a.count,
        lease_ttl=a.lease_ttl,
        socket_timeout=a.socket_timeout,
        sem_tasks=a.sem_tasks,
        lock_tasks=a.lock_tasks,
        rw_tasks=a.rw_tasks,
        waiters=a.waiters,
        setters=a.setters,
        hold_max=a.hold_max,
        keep_notices=a.keep_notices,
        fault_interval=a.fault_interval,
        big_faults=a.big_faults,
        failover=a.failover,
        wait_replicas=a.wait_replicas,
        faults=faults,
        json_path=a.json_path,
        ledger_dir=a.ledger_dir,
        keep_ledgers=a.keep_ledgers,
        strict=a.strict,
        quiet=a.quiet,
        deadline=a.deadline,
    )


def _budget(opts: Options) -> float:
    """Upper bound on one topology's wall time, for the hard deadline."""
    ttl = opts.lease_ttl
    return (
        90.0  # start-up (a cluster takes a few seconds, a slow machine more)
        + 30.0  # workers attaching
        + opts.duration
        + 120.0  # a failover in progress when the storm ends
        + 20.0  # stopping workers
        + 2 * ttl
        + 15.0  # quiescence
        + 60.0  # audit
        + 40.0  # teardown
    )


# --------------------------------------------------------------------------- workers


@dataclass(eq=False)
class WorkerHandle:
    slot: int
    inc: int
    id: str
    proc: subprocess.Popen[bytes]
    ledger: Path
    tail: Tail
    holding: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)
    instance: str | None = None
    ended: bool = False
    #: set before the runner kills it, so that the exit is not taken for a crash
    killing: bool = False


class WorkerPool:
    def __init__(
        self,
        opts: Options,
        ledger_dir: Path,
        ledger: Ledger,
        spec: dict[str, Any],
        log: Any,
    ) -> None:
        self.opts = opts
        self.dir = ledger_dir
        self.ledger = ledger
        self.spec = spec
        self.log = log
        self.handles: list[WorkerHandle] = []
        self.incarnations: Counter[int] = Counter()
        self.stopping = False
        self.crashes = 0
        self.spawned = 0
        self._respawns: set[asyncio.Task[None]] = set()
        self.on_kill: Any = None
        #: monotonic ns of the latest ENTER seen in any ledger
        self.last_enter = 0

    def live(self) -> list[WorkerHandle]:
        return [h for h in self.handles if not h.ended]

    def spawn(self, slot: int) -> WorkerHandle:
        inc = self.incarnations[slot]
        self.incarnations[slot] += 1
        wid = f"w{slot}.{inc}"
        ledger = self.dir / f"{wid}.log"
        spec = {
            **self.spec,
            "worker": wid,
            "ledger": str(ledger),
            "seed": hash((self.opts.seed, slot, inc)) & 0xFFFFFFFF,
            "parent": os.getpid(),
        }
        out = open(self.dir / f"{wid}.out", "wb")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "devtools.chaos.worker", json.dumps(spec)],
                cwd=str(REPO_ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc)
        handle = WorkerHandle(slot, inc, wid, proc, ledger, Tail(ledger))
        self.handles.append(handle)
        self.spawned += 1
        self.ledger.rec("SPAWN", wid, proc.pid)
        return handle

    def refresh(self) -> None:
        for h in self.handles:
            if not h.ended:
                self._read(h)

    def _read(self, h: WorkerHandle) -> None:
        for rec in h.tail.new_records():
            kind, task = rec.kind, rec.task
            if kind == "A":
                h.waiting.add(task)
            elif kind == "ENTER":
                h.waiting.discard(task)
                h.holding.add(task)
                self.last_enter = max(self.last_enter, rec.t)
            elif kind == "EXIT":
                h.holding.discard(task)
            elif kind in ("T", "E", "R", "RL", "RN", "C", "CS"):
                h.waiting.discard(task)
            elif kind == "SEM":
                h.instance = rec.arg

    def holders_now(self) -> int:
        return sum(len(h.holding) for h in self.live())

    async def pick_victim(self, rng: random.Random) -> WorkerHandle | None:
        """Mostly a worker holding a permit right now (waiting up to 0.3 s for one),
        else one waiting for a permit, else any."""
        loop = asyncio.get_running_loop()
        roll = rng.random()
        deadline = loop.time() + (0.3 if roll < 0.7 else 0.0)
        while True:
            self.refresh()
            live = [h for h in self.live() if h.proc.poll() is None]
            if not live:
                return None
            holders = [h for h in live if h.holding]
            if holders and roll < 0.7:
                return rng.choice(holders)
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.005)
        waiters = [h for h in live if h.waiting and not h.holding]
        if waiters and roll < 0.9:
            return rng.choice(waiters)
        return rng.choice(live)

    async def kill(self, h: WorkerHandle, reason: str) -> None:
        h.killing = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(h.proc.pid, signal.SIGKILL)
        await self._reap(h, 5.0)
        h.ended = True
        self.ledger.rec("KILL", h.id, reason)
        self._read(h)
        if self.on_kill is not None and reason == "fault":
            await self.on_kill(h)

    async def _reap(self, h: WorkerHandle, timeout: float) -> int | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            rc = h.proc.poll()
            if rc is not None:
                with _CHILDREN_LOCK:
                    _CHILDREN.discard(h.proc)
                return rc
            await asyncio.sleep(0.002)
        return None

    def respawn_later(self, h: WorkerHandle, delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            if not self.stopping:
                self.spawn(h.slot)

        task = asyncio.ensure_future(later())
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    def reap(self) -> None:
        """Notice workers that exited on their own; record and replace them."""
        for h in self.live():
            if h.killing:
                continue
            rc = h.proc.poll()
            if rc is None:
                continue
            with _CHILDREN_LOCK:
                _CHILDREN.discard(h.proc)
            h.ended = True
            self.ledger.rec("GONE", h.id, rc)
            self._read(h)
            if not self.stopping:
                self.crashes += 1
                self.log(f"worker {h.id} exited by itself (rc={rc}); see {h.id}.out")
                self.respawn_later(h, 0.2)

    async def stop_all(self, grace: float) -> tuple[int, int]:
        """SIGTERM every worker, SIGKILL what is left after ``grace`` s: (clean, killed)."""
        self.stopping = True
        for task in list(self._respawns):
            task.cancel()
        live = self.live()
        for h in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        clean = killed = 0
        # Polling: a child's exit is not an awaitable event here.
        while loop.time() < deadline and any(h.proc.poll() is None for h in live):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for h in live:
            if h.ended:
                continue
            rc = h.proc.poll()
            if rc is None:
                await self.kill(h, "shutdown")
                killed += 1
            else:
                with _CHILDREN_LOCK:
                    _CHILDREN.discard(h.proc)
                h.ended = True
                self.ledger.rec("GONE", h.id, rc)
                self._read(h)
                clean += 1
        return clean, killed

    def kill_all_now(self) -> None:
        self.stopping = True
        for task in list(self._respawns):
            task.cancel()
        for h in self.handles:
            if h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h.proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    h.proc.wait(5)
                if not h.ended:
                    self.ledger.rec("KILL", h.id, "cleanup")
                    h.ended = True
            with _CHILDREN_LOCK:
                _CHILDREN.discard(h.proc)


def _kill_children() -> None:
    with _CHILDREN_LOCK:
        procs = list(_CHILDREN)
        _CHILDREN.clear()
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.wait(5)


# --------------------------------------------------------------------------- recovery watch


class RecoveryWatch:
    """Polls the holders set after each kill: when is the dead instance's registration gone?"""

    def __init__(self, client: Any, keys: Keys, ledger: Ledger, lease_ttl: float) -> None:
        self.client = client
        self.keys = keys
        self.ledger = ledger
        self.limit_ns = int(lease_ttl * 4e9)
        self.pending: dict[str, tuple[str, int]] = {}

    async def killed(self, h: WorkerHandle) -> None:
        """Right after a SIGKILL: how many permits does the dead instance hold in Redis?

        Nothing can change them before its lease runs out, so this is exact
        (it includes permits moved to the process but not yet handed to a task,
        and permits on their way back).
        """
        if h.instance is None:
            return
        killed_at = time.monotonic_ns()
        try:
            tokens = await asyncio.wait_for(instance_tokens(self.client, self.keys, h.instance), 3)
        except Exception as exc:
            self.ledger.rec("DEADTOKENS", h.id, f"? {exc!r}")
        else:
            self.ledger.rec("DEADTOKENS", h.id, tokens)
        self.pending[h.id] = (h.instance, killed_at)

    async def poll_once(self) -> None:
        if not self.pending:
            return
        try:
            members = await asyncio.wait_for(holder_members(self.client, self.keys), 2.0)
        except Exception:
            return
        now = time.monotonic_ns()
        instances = {m.rsplit(".", 1)[0] for m in members}
        for wid, (instance, killed_at) in list(self.pending.items()):
            if instance not in instances:
                self.ledger.rec("RECOV", wid, f"{(now - killed_at) / 1e9:.3f}")
                del self.pending[wid]
            elif now - killed_at > self.limit_ns:
                self.ledger.rec("NORECOV", wid, "still registered after 4 x lease_ttl")
                del self.pending[wid]

    def give_up(self) -> None:
        for wid in list(self.pending):
            self.ledger.rec("NORECOV", wid, "run ended first")
        self.pending.clear()


# --------------------------------------------------------------------------- snapshots


class Snapshots:
    """Where every permit is, read atomically, checked, and kept in ``snapshots.jsonl``.

    Taken every second during the storm (kept only when something is wrong),
    while nothing is being acquired for a while, and every second after a
    restart/failover for 2 x lease_ttl: the material for explaining a stall or
    a violation afterwards (``instances`` maps semaphore instance ids to workers).
    Each one is checked: a token of the current generation in two places, or
    more than ``count`` of them, breaks the library's first invariant.
    """

    def __init__(
        self, path: Path, client: Any, keys: Keys, pool: WorkerPool, count: int, ledger: Ledger
    ) -> None:
        self.path = path
        self.client = client
        self.keys = keys
        self.pool = pool
        self.count = count
        self.ledger = ledger
        self.taken = 0
        self.checked = 0
        #: snapshots that showed a duplicated or surplus token
        self.bad: list[str] = []
        #: when each of them was taken (monotonic ns)
        self.bad_at: list[int] = []
        #: storm start (monotonic ns), for relative times
        self.t0 = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self, why: str, *, keep: bool = True) -> None:
        t = time.monotonic_ns()
        rel = round((t - self.t0) / 1e9, 3) if self.t0 else None
        try:
            picture = await asyncio.wait_for(token_picture(self.client, self.keys), 3)
        except Exception as exc:
            data: dict[str, Any] = {"error": repr(exc)}
        else:
            data = picture.as_dict()
            self.checked += 1
            verdict = picture.judge(self.count)
            if picture.meta and (verdict["duplicated"] or verdict["bad_markers"]):
                keep = True
                text = (
                    f"at {rel}s Redis held {verdict['tokens']} tokens for {self.count} permits "
                    f"({verdict['duplicated']} duplicated, {verdict['bad_markers']} bad slot(s))"
                )
                self.bad.append(text)
                self.bad_at.append(t)
                self.ledger.rec("SNAP-BAD", "-", text)
        if not keep:
            return
        data["instances"] = {h.instance: h.id for h in self.pool.handles if h.instance}
        self._append(json.dumps({"t": t, "t_s": rel, "why": why, **data}))
        self.taken += 1

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def series(self, why: str, seconds: float, every: float = 1.0) -> None:
        async def run() -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                await self.take(why)
                await asyncio.sleep(every)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


# --------------------------------------------------------------------------- one topology


class Run:
    """One topology's run."""

    def __init__(self, opts: Options, name: str, base_dir: Path) -> None:
        self.opts = opts
        self.name = name
        self.dir = base_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.dir / RUNNER_LEDGER)
        self.topology: Topology | None = None
        self.pool: WorkerPool | None = None
        self.result: dict[str, Any] = {"topology": name, "ledger_dir": str(self.dir)}
        suffix = uuid.uuid4().hex[:10]
        self.sem_name = f"chaos-sem-{suffix}"
        self.event_name = f"chaos-ev-{suffix}"
        self.keys = Keys(self.sem_name, self.event_name)
        self.wiped_signals_max = 0
        self.clients: list[Any] = []
        self.background: list[asyncio.Future[None]] = []
        self.keeper: Any = None
        self.snapshots: Snapshots | None = None

    def log(self, text: str) -> None:
        if not self.opts.quiet:
            print(f"[chaos {self.name}] {text}", file=sys.stderr, flush=True)

    async def _client(self, name: str, timeout: float = 5.0) -> Any:
        assert self.topology is not None
        client = make_client(self.topology.direct_conn(), name=name, socket_timeout=timeout)
        self.clients.append(client)
        return client

    async def freeze_and_count(self) -> str:
        """Before a restart of the non-persistent server: freeze writes, count what is wiped.

        With writes paused (``CLIENT PAUSE WRITE`` also holds BLMOVE, scripts
        and transactions), the pending signals and the per-lane lists are
        exactly what the restart destroys (an upper bound on the signals it
        loses: an acknowledgement record also keeps a signal already
        delivered); the server is stopped right after.
        """
        assert self.topology is not None
        node = self.topology.data_nodes()[0]
        async with admin(node, timeout=3.0) as r:
            await r.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
            pending = int(await r.llen(self.keys.event("signals")))
            lists = await event_lists(r, self.keys)
        in_lanes = (
            sum(len(v) for v in lists.inboxes.values())
            + sum(len(v) for v in lists.acked.values())
            + len(lists.handed)
            + len(lists.delivered)
        )
        self.wiped_signals_max += pending + in_lanes
        return f"(writes frozen first: {pending} pending + {in_lanes} in lanes wiped)"

    async def execute(self) -> dict[str, Any]:
        opts = self.opts
        res = self.result
        started = time.monotonic()
        from redis import __version__ as redis_version

        import redsync
        from redsync import RedisSemaphore

        res["redis_py"] = redis_version
        res["redsync"] = getattr(redsync, "__version__", "?")
        # Failure detectors slower than the longest stall: a stall must not become an
        # unplanned (and unrecorded) failover.
        _, stall_max = stall_bounds(opts.effective_socket_timeout, opts.lease_ttl)
        self.topology = topo = make_topology(
            self.name, detector_ms=max(1000, round((stall_max + 1.0) * 1000))
        )
        self.log(f"starting {topo.describe()}")
        await asyncio.wait_for(topo.start(), 120)
        res["setup_s"] = round(time.monotonic() - started, 2)

        from redsync import RedisEvent

        # A standalone server has no replica to wait for: WAIT would only time out.
        wait_replicas = None if self.name == "standalone" else opts.wait_replicas
        create_kw = replica_kwargs(RedisSemaphore.create, wait_replicas)
        attach_kw = replica_kwargs(RedisSemaphore.attach, wait_replicas)
        event_kw = replica_kwargs(RedisEvent.__init__, wait_replicas)
        res["wait_replicas"] = {
            "requested": wait_replicas,
            "supported": bool(create_kw) and bool(attach_kw),
            "semaphore_option": next(iter(create_kw), None),
            "event_supported": bool(event_kw),
        }
        if wait_replicas is not None and not res["wait_replicas"]["supported"]:
            self.log("--wait-replicas: this redsync has no wait_replicas option; ignored")
        wait_effective = {
            "semaphore": bool(res["wait_replicas"]["supported"]) and bool(wait_replicas),
            "event": bool(event_kw) and bool(wait_replicas),
        }

        keeper_client = await self._client("chaos-keeper")
        self.keeper = keeper = await RedisSemaphore.create(
            keeper_client, self.sem_name, count=opts.count, lease_ttl=opts.lease_ttl, **create_kw
        )
        inspect_client = await self._client("chaos-admin")

        # Can we stall the server with DEBUG SLEEP?
        kinds = list(opts.faults if opts.faults is not None else SMALL_WEIGHTS)
        if topo.proxy is None:
            kinds = [k for k in kinds if k not in ("cut", "swallow")]
        if "sleep" in kinds:
            try:
                node = await topo.node_for_key(self.keys.sem("meta"))
                async with admin(node) as r:
                    await r.execute_command("DEBUG", "SLEEP", "0")
            except Exception as exc:
                self.log(f"DEBUG SLEEP unavailable ({exc!r}); no sleep faults")
                kinds.remove("sleep")
        socket_timeout = opts.effective_socket_timeout
        small, big = plan(
            opts.seed,
            duration=opts.duration,
            lease_ttl=opts.lease_ttl,
            socket_timeout=socket_timeout,
            kinds=kinds,
            big_faults=opts.effective_big_faults,
            failover=opts.failover,
            interval=opts.fault_interval,
        )
        res["plan"] = {
            "small_faults": len(small),
            "big_faults": [(round(b.at, 2), b.mode) for b in big],
            "kinds": kinds,
        }

        spec = {
            "conn": topo.worker_conn(),
            "sem_name": self.sem_name,
            "event_name": self.event_name,
            "lease_ttl": opts.lease_ttl,
            "socket_timeout": socket_timeout,
            "sem_tasks": opts.sem_tasks,
            "lock_tasks": opts.lock_tasks,
            "rw_tasks": opts.rw_tasks,
            "waiters": opts.waiters,
            "setters": opts.setters,
            "hold_max": opts.hold_max,
            "notice_faults": not opts.keep_notices,
            "set_gap": 0.06,
            "cancel_interval": [0.02, 0.25],
            "stop_grace": 2.0,
            "wait_replicas": wait_replicas,
        }
        self.pool = pool = WorkerPool(opts, self.dir, self.ledger, spec, self.log)
        watch = RecoveryWatch(inspect_client, self.keys, self.ledger, opts.lease_ttl)
        pool.on_kill = watch.killed
        for slot in range(opts.workers):
            pool.spawn(slot)

        # Wait until every worker has attached (bounded), so the storm starts on a busy system.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            pool.refresh()
            pool.reap()
            if all(h.instance for h in pool.live()):
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("workers did not attach within 30 s; see the *.out files")

        snaps = Snapshots(
            self.dir / "snapshots.jsonl", inspect_client, self.keys, pool, opts.count, self.ledger
        )
        self.snapshots = snaps
        injector = Injector(
            topo,
            pool,
            self.ledger,
            seed=opts.seed,
            key=self.keys.sem("meta"),
            before_big=self.freeze_and_count if self.name == "standalone" else None,
            after_big=lambda: snaps.series(f"after {topo.big_fault_kind}", 2 * opts.lease_ttl),
        )
        self.log(
            f"storm: {opts.duration:g} s, {len(small)} small faults ({', '.join(kinds)}), "
            f"{len(big)} {topo.big_fault_kind}(s)"
        )

        async def monitor() -> None:
            # Runs until the audit: replaces crashed workers during the storm, times
            # every killed holder's reclaim, and snapshots Redis while nobody acquires.
            last_snap = 0.0
            while True:
                if not pool.stopping:
                    pool.refresh()
                    pool.reap()
                    if loop.time() - last_snap >= 1.0:
                        last_snap = loop.time()
                        idle = (time.monotonic_ns() - pool.last_enter) / 1e9
                        if pool.last_enter and idle > 2.0:
                            await snaps.take(f"no ENTER for {idle:.1f} s")
                        else:
                            await snaps.take("periodic", keep=False)
                await watch.poll_once()
                await asyncio.sleep(0.1)

        monitoring = asyncio.ensure_future(monitor())
        self.background.append(monitoring)
        t0 = loop.time()
        snaps.t0 = self.ledger.rec("PHASE", "storm-start")
        small_task = asyncio.ensure_future(injector.run(small, t0))
        big_task = asyncio.ensure_future(injector.run_big(big, t0))
        self.background += [small_task, big_task]
        last_note = t0
        while loop.time() < t0 + opts.duration:
            await asyncio.sleep(min(0.5, max(0.0, t0 + opts.duration - loop.time())))
            if loop.time() - last_note >= 10:
                last_note = loop.time()
                self.log(
                    f"t={last_note - t0:.0f}s faults={dict(injector.counts)} spawned={pool.spawned}"
                )
        injector.stopping = True
        self.ledger.rec("PHASE", "storm-end")
        storm = loop.time() - t0
        small_task.cancel()
        await asyncio.wait([small_task], timeout=15)
        if not big_task.done():
            self.log("waiting for a big fault in progress to finish")
            await asyncio.wait([big_task], timeout=max(1.0, t0 + opts.duration + 120 - loop.time()))
            big_task.cancel()
        await injector.calm()
        res["storm_s"] = round(storm, 2)

        # -- stop workers --
        clean, killed = await pool.stop_all(grace=8.0)
        pool.refresh()
        self.ledger.rec("PHASE", "workers-stopped", f"clean={clean} killed={killed}")
        res["worker_stop"] = {"clean": clean, "sigkilled": killed}
        self.log(f"workers stopped ({clean} clean, {killed} SIGKILLed); waiting for quiescence")

        # -- quiescence: every permit back in the pool --
        q_began = loop.time()
        q_deadline = q_began + 2 * opts.lease_ttl + 10
        picture = None
        quiet = False
        # Quiet: every permit in the pool, and every killed instance reclaimed (the
        # monitor stops watching an instance once its registration is gone).
        while loop.time() < q_deadline:
            try:
                picture = await asyncio.wait_for(token_picture(inspect_client, self.keys), 5)
            except Exception:
                picture = None
            quiet = picture is not None and not picture.held and len(picture.pool) >= opts.count
            if quiet and not watch.pending:
                break
            await asyncio.sleep(0.2)
        res["quiescence_s"] = round(loop.time() - q_began, 2)
        res["quiescent"] = quiet
        monitoring.cancel()
        snaps.cancel()
        await asyncio.wait([monitoring], timeout=5)
        await watch.poll_once()
        watch.give_up()
        self.ledger.rec("PHASE", "quiescent" if quiet else "not-quiescent")

        # -- audit Redis --
        audit: dict[str, Any] = {}
        picture = await asyncio.wait_for(token_picture(inspect_client, self.keys), 10)
        audit["permits"] = picture.judge(opts.count)
        audit["tokens"] = picture.as_dict()
        audit["pending_signals_before_drain"] = await pending_signals(inspect_client, self.keys)
        audit["functional"] = await asyncio.wait_for(self._functional_check(), 60)
        audit["lock"] = await asyncio.wait_for(self._lock_check(), 60)
        audit["rwlock"] = await asyncio.wait_for(self._rwlock_check(), 60)
        audit["drained"] = await asyncio.wait_for(self._drain(), 60)
        # After the drain: what is left in the lanes' lists is not in the drained count.
        lanes = await asyncio.wait_for(event_lists(inspect_client, self.keys), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(keeper.close(), 5)
        res["audit"] = audit

        # -- ledgers --
        obs = observe(self.dir, opts.count, opts.lease_ttl)
        self._judge(obs, audit, lanes, injector, pool, wait_effective)
        res["elapsed_s"] = round(time.monotonic() - started, 2)
        return res

    async def _functional_check(self) -> dict[str, Any]:
        """attach() with a fresh client; count acquisitions must succeed, one more must not."""
        from redsync import RedisSemaphore, RedisSemaphoreTimeoutError

        opts = self.opts
        client = await self._client("chaos-verify")
        out: dict[str, Any] = {"acquired": 0, "extra_acquired": False, "error": None}
        sem = None
        try:
            sem = await RedisSemaphore.attach(
                client, self.sem_name, timeout=10, lease_ttl=opts.lease_ttl
            )
            for _ in range(opts.count):
                try:
                    await sem.acquire(timeout=5)
                except RedisSemaphoreTimeoutError:
                    break
                out["acquired"] += 1
            try:
                await sem.acquire(timeout=1.0)
                out["extra_acquired"] = True
                out["acquired"] += 1
            except RedisSemaphoreTimeoutError:
                pass
            for _ in range(out["acquired"]):
                await sem.release()
        except Exception as exc:
            out["error"] = repr(exc)
        finally:
            if sem is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sem.close(), 5)
        return out

    async def _lock_check(self) -> dict[str, Any]:
        """A fresh instance takes the lock (once a dead holder's lease ran out)."""
        from redsync import RedisLock

        client = await self._client("chaos-lock-verify")
        lock = RedisLock(client, self.sem_name, lease_ttl=self.opts.lease_ttl)
        out: dict[str, Any] = {"fence": None, "error": None}
        try:
            out["fence"] = await lock.acquire(timeout=2 * self.opts.lease_ttl + 5)
            await lock.release()
        except Exception as exc:
            out["error"] = repr(exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lock.close(), 5)
        return out

    async def _rwlock_check(self) -> dict[str, Any]:
        """A fresh instance takes the writer (once dead holders' leases ran out)
        and then a read: nothing of the run is left held."""
        from redsync import RedisReadWriteLock

        client = await self._client("chaos-rwlock-verify")
        rw = RedisReadWriteLock(client, self.sem_name, lease_ttl=self.opts.lease_ttl)
        out: dict[str, Any] = {"fence": None, "error": None}
        try:
            out["fence"] = await rw.writer.acquire(timeout=2 * self.opts.lease_ttl + 5)
            await rw.writer.release()
            await rw.reader.acquire(timeout=5)
            await rw.reader.release()
        except Exception as exc:
            out["error"] = repr(exc)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(rw.close(), 5)
        return out

    async def _drain(self) -> int:
        from redsync import RedisEvent, RedisEventTimeoutError

        client = await self._client("chaos-drain")
        event = RedisEvent(client, self.event_name)
        drained = 0
        try:
            while drained < 10_000_000:
                try:
                    await event.wait(timeout=0)
                except RedisEventTimeoutError:
                    break
                drained += 1
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(event.close(), 5)
        return drained

    def _replica_shortfalls(self) -> int:
        """Writes the workers' WAIT found short of the replicas asked for (the
        library warns once per link, so this counts links that had any)."""
        found = 0
        for path in self.dir.glob("*.out"):
            with contextlib.suppress(OSError):
                found += path.read_text("utf-8", "replace").count("replicas acknowledged")
        return found

    def _judge(
        self,
        obs: Any,
        audit: dict[str, Any],
        lanes: EventLists,
        injector: Injector,
        pool: WorkerPool,
        wait_effective: dict[str, bool],
    ) -> None:
        opts = self.opts
        res = self.result
        c = obs.counters
        cancels = dict(obs.cancels)
        fc = injector.counts
        big_kind = self.topology.big_fault_kind if self.topology else "restart"

        # Lossy big faults: asynchronous replication may drop acknowledged writes.
        # Cluster's CLUSTER FAILOVER is coordinated (the replica catches up first);
        # a killed master, or Sentinel's promotion while the old master still takes
        # writes, can lose the last ones.
        lossy_all: list[tuple[int, int]] = []
        if self.name != "standalone":
            for began, ended, mode in injector.big_log:
                if mode == "kill" or self.name == "sentinel":
                    lossy_all.append((began, ended + int(2 * opts.lease_ttl * 1e9)))
        # replicas=N protects what N replicas acknowledged; a write WAIT
        # reported short of them is as exposed as without it (documented).
        shortfalls = self._replica_shortfalls()
        exposed = lossy_all if shortfalls else []
        lossy = exposed if wait_effective["semaphore"] else lossy_all
        lossy_event = exposed if wait_effective["event"] else lossy_all

        explained_eps, unexplained_eps = [], []
        for ep in obs.episodes:
            if any(b <= ep["start_ns"] <= e for b, e in lossy):
                ep["explained_by"] = "lossy failover (asynchronous replication)"
                explained_eps.append(ep)
            else:
                unexplained_eps.append(ep)
            ep.pop("start_ns", None)
            ep.pop("end_ns", None)
        omitted = max(0, obs.over_admissions - len(obs.episodes))

        # Signals.  A signal is delivered when wait() returned (WO) or drained after
        # the run.  Still in Redis and not yet delivered: a registered inbox of a dead
        # waiter (put back by a live waiter once its lease passes), or a signal
        # handed to a queued member.  Maybe delivered
        # without its WO: the acknowledgement record of a killed worker's lane.
        killed = obs.event_instances_killed
        recoverable = unregistered = killed_acks = 0
        for key, entries in lanes.inboxes.items():
            if key in lanes.registered:
                recoverable += len(entries)
            else:
                unregistered += len(entries)
        for key, entries in lanes.acked.items():
            if EventLists.instance_of(key) in killed or not obs.event_instances_known:
                killed_acks += len(entries)
        # The queue: a signal handed to a member and not yet delivered is
        # handed on when the member's lease runs out; a delivery record of a
        # killed worker's member may name a signal its wait() never returned.
        recoverable += len(lanes.handed)
        for member in lanes.delivered:
            if EventLists.instance_of(member) in killed or not obs.event_instances_known:
                killed_acks += 1
        sets_begun, sets_ok = c["SB"], c["SO"]
        delivered = c["WO"] + audit["drained"]
        upper = delivered + recoverable + unregistered + killed_acks + self.wiped_signals_max
        signals_lost = max(0, sets_ok - upper)
        signals_dup = max(0, delivered - sets_begun)
        unaccounted = max(0, sets_ok - delivered)
        signal_loss_explained = bool(lossy_event) and signals_lost > 0

        permits = audit["permits"]
        functional = audit["functional"]
        kill_rec = obs.kill_recoveries
        big_rec = obs.big_recoveries
        bound = 1.4 * opts.lease_ttl

        summary: dict[str, Any] = {
            "topology": self.name,
            "storm_s": res.get("storm_s"),
            "workers": opts.workers,
            "count": opts.count,
            "lease_ttl": opts.lease_ttl,
            "acquire_attempts": sum(obs.attempts.values()),
            "acquires": c["ENTER"],
            "releases": c["R"],
            "release_lease_lost": c["RL"],
            "release_not_acquired": c["RN"],
            "acquire_timeouts_tiny": obs.timeouts["tiny"],
            "acquire_timeouts_zero": obs.timeouts["zero"],
            "acquire_timeouts_moderate": obs.timeouts["moderate"],
            "tiny_timeout_attempts": obs.attempts["tiny"],
            "sets_begun": sets_begun,
            "sets_ok": sets_ok,
            "sets_err": c["SE"],
            "sets_unfinished": sets_begun - sets_ok - c["SE"],
            "waits_ok": c["WO"],
            "waits_timeout": c["WT"],
            "wait_errors": c["WE"],
            "errors": c["E"],
            "sigkills": fc["sigkill"],
            "sigkills_of_holders": obs.kills_of_holders,
            "sigkills_mid_hold": obs.kills_of_ledger_holders,
            "permits_held_by_killed": obs.tokens_of_killed,
            "cancellations": sum(cancels.values()),
            "cancellations_by_phase": cancels,
            "client_kill_faults": fc["client_kill"],
            "client_kill_connections": fc["client_kill_connections"],
            "push_kill_faults": fc["push_kill"],
            "push_kill_connections": fc["push_kill_connections"],
            "notices_dropped": obs.notices["drop"],
            "notices_delayed": obs.notices["delay"],
            "cut_faults": fc["cut"],
            "cut_connections": fc["cut_connections"],
            "swallow_armed": fc["swallow_armed"],
            "swallowed_replies": self.topology.proxy.swallowed
            if self.topology and self.topology.proxy
            else 0,
            "pauses": fc["pause"],
            "sleeps": fc["sleep"],
            "restarts": fc["restart"],
            "failovers": fc["failover"],
            "restart_modes": _modes(fc, "restart"),
            "failover_modes": _modes(fc, "failover"),
            "fault_errors": sum(v for k, v in fc.items() if k.endswith("_failed")),
            "worker_spawns": pool.spawned,
            "worker_crashes": pool.crashes,
            "hold_intervals": obs.intervals,
            "max_holders": obs.max_holders,
            "lock_holds": obs.lock_intervals,
            "lock_max_holders": obs.lock_max_holders,
            "rw_reads": obs.rw_reads,
            "rw_writes": obs.rw_writes,
            "rw_max_writers": obs.rw_max_writers,
            "rw_overlaps": obs.rw_overlaps,
            "fence_violations": len(obs.fence_violations),
            "over_admissions": obs.over_admissions,
            "over_admissions_explained": len(explained_eps),
            "permits_lost": permits["lost"],
            "permits_duplicated": permits["duplicated"],
            "permits_foreign": permits["foreign"],
            "functional_acquired": functional["acquired"],
            "functional_extra": functional["extra_acquired"],
            "signals_delivered": delivered,
            "signals_drained": audit["drained"],
            "signals_lost": signals_lost,
            "signals_duplicated": signals_dup,
            "signals_unaccounted": unaccounted,
            "signals_in_inboxes_recoverable": recoverable,
            "signals_in_inboxes_unregistered": unregistered,
            "signals_in_killed_ack_records": killed_acks,
            "signals_wiped_by_restarts_max": self.wiped_signals_max,
            "lease_lost_notifications": c["L"],
            "kill_recovery_samples": [round(v, 3) for v in kill_rec],
            "kill_recovery_p50": percentile(kill_rec, 0.5),
            "kill_recovery_max": max(kill_rec) if kill_rec else None,
            "kill_recovery_bound": bound,
            "kill_recovery_over_bound": sum(1 for v in kill_rec if v > bound + 0.5),
            "kill_recovery_confounded": obs.kill_recoveries_confounded,
            "big_recovery_samples": [round(v, 3) for v in big_rec],
            "big_recovery_p50": percentile(big_rec, 0.5),
            "big_recovery_max": max(big_rec) if big_rec else None,
            "quiescence_s": res.get("quiescence_s"),
            "redis_snapshots_checked": self.snapshots.checked if self.snapshots else 0,
            "redis_snapshots_bad": len(self.snapshots.bad) if self.snapshots else 0,
        }

        violations: list[str] = []
        explained: list[str] = []
        if unexplained_eps or omitted:
            violations.append(
                f"{len(unexplained_eps) + omitted} over-admission episode(s) "
                f"(max {obs.max_holders} holders for {opts.count} permits)"
            )

        def after_lossy_failover(text: str) -> None:
            # --strict holds replicas=N to what it promises: writes that N
            # replicas acknowledged; with shortfalls reported, some were not.
            if shortfalls and wait_effective["semaphore"]:
                explained.append(f"{text}, {shortfalls} replica shortfall(s)")
            else:
                (violations if opts.strict else explained).append(text)

        if explained_eps:
            after_lossy_failover(
                f"{len(explained_eps)} over-admission episode(s) after a lossy failover"
            )
        if not res.get("quiescent"):
            violations.append(
                f"permits not all back in the pool {res.get('quiescence_s')} s after the "
                "workers stopped"
            )
        if not permits["exists"]:
            violations.append("the semaphore's keys are gone after the run")
        if self.snapshots is not None and self.snapshots.bad:
            bad = self.snapshots.bad
            text = (
                f"{len(bad)} snapshot(s) of Redis during the run broke 'each "
                f"token in exactly one place': {'; '.join(bad[:3])}"
            )
            after_lossy = all(any(b <= t <= e for b, e in lossy) for t in self.snapshots.bad_at)
            if lossy and after_lossy:
                after_lossy_failover(f"{text}, all after a lossy failover")
            else:
                violations.append(text)
        if permits["lost"]:
            violations.append(f"{permits['lost']} permit(s) lost")
        if permits["duplicated"]:
            violations.append(f"{permits['duplicated']} permit(s) duplicated")
        if permits["foreign"]:
            violations.append(f"{permits['foreign']} token(s) of another generation")
        if permits["bad_markers"]:
            violations.append(f"{permits['bad_markers']} slot list(s) without their marker")
        if functional["error"]:
            violations.append(f"fresh attach/acquire failed: {functional['error']}")
        elif functional["acquired"] < opts.count:
            violations.append(
                f"a fresh instance could take only {functional['acquired']} of {opts.count} permits"
            )
        lock_check = audit["lock"]
        if lock_check["error"]:
            violations.append(f"a fresh instance could not take the lock: {lock_check['error']}")
        if obs.fence_violations:
            violations.append(
                f"{len(obs.fence_violations)} lock or writer hold(s) with a fence not above an "
                f"earlier hold's: {'; '.join(obs.fence_violations[:3])}"
            )
        if obs.lock_intervals == 0 and opts.lock_tasks:
            violations.append("no lock hold was recorded")
        rw_check = audit["rwlock"]
        if rw_check["error"]:
            violations.append(
                f"a fresh instance could not take the read-write lock: {rw_check['error']}"
            )
        if opts.rw_tasks and (obs.rw_reads == 0 or (obs.rw_writes == 0 and opts.rw_tasks > 0)):
            violations.append(
                f"too few read-write lock holds: {obs.rw_reads} reads, {obs.rw_writes} writes"
            )
        if functional["extra_acquired"]:
            violations.append(f"a fresh instance could take {opts.count + 1} permits")
        if signals_dup:
            violations.append(f"{signals_dup} signal(s) duplicated")
        if unregistered:
            violations.append(
                f"{unregistered} signal(s) in inboxes that are not registered for recovery"
            )
        if signals_lost:
            text = f"{signals_lost} signal(s) lost"
            if signal_loss_explained and not opts.strict:
                explained.append(text + " (a lossy failover happened)")
            else:
                violations.append(text)
        if obs.kill_not_recovered:
            violations.append(
                "permits of killed holders never reclaimed: " + ", ".join(obs.kill_not_recovered)
            )
        if obs.big_not_recovered:
            violations.append(
                f"no acquisition after a {big_kind}: " + ", ".join(obs.big_not_recovered)
            )
        if c["RN"]:
            violations.append(f"{c['RN']} release() said 'not acquired' after an acquire")
        for anomaly in obs.anomalies:
            if "not acquired" not in anomaly:
                violations.append(anomaly)

        warnings: list[str] = []
        if summary["kill_recovery_over_bound"]:
            warnings.append(
                f"{summary['kill_recovery_over_bound']} killed holder(s) took longer than "
                f"1.4 x lease_ttl (+0.5 s polling) to be reclaimed"
            )
        if c["L"]:
            warnings.append(f"{c['L']} lease-lost notification(s)")
        if pool.crashes:
            warnings.append(f"{pool.crashes} worker(s) exited by themselves")
        if summary["fault_errors"]:
            warnings.append(f"{summary['fault_errors']} fault injection(s) failed")

        res["summary"] = summary
        res["violations"] = violations
        res["explained"] = explained
        res["warnings"] = warnings
        res["episodes"] = unexplained_eps[:20] + explained_eps[:10]
        res["error_samples"] = obs.first_error_samples
        res["errors_by_kind"] = dict(obs.errors.most_common(20))
        res["fault_errors"] = injector.errors
        res["status"] = "violations" if violations else "ok"

    async def cleanup(self) -> None:
        if self.snapshots is not None:
            self.snapshots.cancel()
        for task in self.background:
            task.cancel()
        if self.background:
            await asyncio.wait(self.background, timeout=5)
        if self.pool is not None:
            self.pool.kill_all_now()
        if self.keeper is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.keeper.close(), 5)
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close_client(client), 3)
        if self.topology is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.topology.stop(), 60)
        self.ledger.close()


#: The topology run in progress, for the signal handler: (loop, main task).
_current: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
_signals_seen = 0


def _on_signal(signum: int, frame: object) -> None:
    """SIGTERM / SIGINT: cancel the running topology (it cleans up); a second one aborts."""
    global _signals_seen
    _signals_seen += 1
    current = _current
    if current is not None and _signals_seen == 1:
        loop, task = current
        loop.call_soon_threadsafe(task.cancel)
        return
    raise KeyboardInterrupt


async def _run_one(opts: Options, name: str, base_dir: Path) -> dict[str, Any]:
    global _current
    run = Run(opts, name, base_dir)
    task = asyncio.current_task()
    assert task is not None
    _current = (asyncio.get_running_loop(), task)
    try:
        return await run.execute()
    except asyncio.CancelledError:
        run.result["status"] = "interrupted"
        run.log("interrupted; cleaning up")
        return run.result
    except Exception as exc:
        run.result["status"] = "error"
        run.result["error"] = repr(exc)
        run.log(f"error: {exc!r}")
        return run.result
    finally:
        _current = None
        # Bounded; a second signal cuts it short, and then run() kills by pid.
        await run.cleanup()


# --------------------------------------------------------------------------- reporting


def _modes(counts: Counter[str], kind: str) -> dict[str, int]:
    """{"graceful": n, "kill": n, "failed": n} of one big-fault kind."""
    prefix = kind + "_"
    return {k[len(prefix) :]: v for k, v in counts.items() if k.startswith(prefix)}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


def format_table(s: dict[str, Any], title: str) -> str:
    cancels = s.get("cancellations_by_phase") or {}
    phases = ", ".join(f"{k} {v}" for k, v in sorted(cancels.items()))

    def modes(kind: str) -> str:
        found = s.get(f"{kind}_modes") or {}
        text = ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
        return f" ({text})" if text else ""

    rows: list[tuple[str, str]] = [
        ("storm duration", _fmt(s.get("storm_s"), " s")),
        ("workers / count / lease_ttl", f"{s['workers']} / {s['count']} / {s['lease_ttl']} s"),
        ("-- operations", ""),
        ("acquire attempts", _fmt(s["acquire_attempts"])),
        ("acquires (ENTER)", _fmt(s["acquires"])),
        ("releases", f"{s['releases']} (lease lost at release: {s['release_lease_lost']})"),
        (
            "acquire timeouts",
            f"tiny {s['acquire_timeouts_tiny']} / zero {s['acquire_timeouts_zero']} / "
            f"moderate {s['acquire_timeouts_moderate']}",
        ),
        (
            "event sets",
            f"{s['sets_begun']} begun, {s['sets_ok']} ok, {s['sets_err']} raised, "
            f"{s['sets_unfinished']} cut short",
        ),
        ("event waits", f"{s['waits_ok']} ok, {s['waits_timeout']} timed out"),
        ("other errors seen by workers", _fmt(s["errors"] + s["wait_errors"])),
        ("-- faults injected", ""),
        (
            "SIGKILL",
            f"{s['sigkills']}: {s['sigkills_of_holders']} held permits "
            f"({s['permits_held_by_killed']} in Redis, {s['sigkills_mid_hold']} mid-hold); "
            f"{s['worker_spawns']} spawns",
        ),
        ("cancellations", f"{s['cancellations']} ({phases})" if phases else "0"),
        (
            "tiny timeouts",
            f"{s['acquire_timeouts_tiny']} of {s['tiny_timeout_attempts']} tiny-timeout acquires",
        ),
        (
            "CLIENT KILL",
            f"{s['client_kill_faults']} faults, {s['client_kill_connections']} connections",
        ),
        (
            "listeners killed",
            f"{s['push_kill_faults']} faults, {s['push_kill_connections']} connections",
        ),
        (
            "notices disturbed",
            f"{s['notices_dropped']} dropped, {s['notices_delayed']} delayed",
        ),
        ("proxy cuts", f"{s['cut_faults']} faults, {s['cut_connections']} connections"),
        ("swallowed replies", f"{s['swallowed_replies']} (armed {s['swallow_armed']})"),
        ("CLIENT PAUSE WRITE", _fmt(s["pauses"])),
        ("DEBUG SLEEP", _fmt(s["sleeps"])),
        ("restarts", _fmt(s["restarts"]) + modes("restart")),
        ("failovers", _fmt(s["failovers"]) + modes("failover")),
        ("-- safety", ""),
        (
            "over-admissions",
            f"{s['over_admissions']} (explained by lossy failover: "
            f"{s['over_admissions_explained']})",
        ),
        ("max simultaneous holders", f"{s['max_holders']} (count {s['count']})"),
        (
            "lock holds / max holders / fence violations",
            f"{s['lock_holds']} / {s['lock_max_holders']} / {s['fence_violations']}",
        ),
        (
            "rwlock reads / writes / max writers / clashes",
            f"{s['rw_reads']} / {s['rw_writes']} / {s['rw_max_writers']} / {s['rw_overlaps']}",
        ),
        ("permits lost / duplicated", f"{s['permits_lost']} / {s['permits_duplicated']}"),
        ("signals lost / duplicated", f"{s['signals_lost']} / {s['signals_duplicated']}"),
        (
            "signals accounting",
            f"delivered {s['signals_delivered']} (drained after run {s['signals_drained']}), "
            f"not delivered {s['signals_unaccounted']} <= in dead waiters' inboxes "
            f"{s['signals_in_inboxes_recoverable']} + killed ack records "
            f"{s['signals_in_killed_ack_records']} + wiped by restarts "
            f"{s['signals_wiped_by_restarts_max']}",
        ),
        ("lease-lost notifications", _fmt(s["lease_lost_notifications"])),
        (
            "Redis snapshots (bad / checked)",
            f"{s['redis_snapshots_bad']} / {s['redis_snapshots_checked']}",
        ),
        ("-- recovery", ""),
        (
            "killed holder -> reclaimed",
            f"p50 {_fmt(s['kill_recovery_p50'], ' s')}, max {_fmt(s['kill_recovery_max'], ' s')}"
            f" (n={len(s['kill_recovery_samples'])}, bound {s['kill_recovery_bound']:.1f} s, "
            f"over {s['kill_recovery_over_bound']}, confounded {s['kill_recovery_confounded']})",
        ),
        (
            "restart/failover -> next ENTER",
            f"p50 {_fmt(s['big_recovery_p50'], ' s')}, max {_fmt(s['big_recovery_max'], ' s')}"
            f" (n={len(s['big_recovery_samples'])})",
        ),
    ]
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"== {title} ".ljust(width + 40, "=")]
    for key, value in rows:
        if key.startswith("--"):
            lines.append(key)
        else:
            lines.append(f"  {key.ljust(width)}{value}")
    return "\n".join(lines)


_SUM_KEYS_SKIP = {
    "topology",
    "workers",
    "count",
    "lease_ttl",
    "max_holders",
    "lock_max_holders",
    "rw_max_writers",
    "kill_recovery_bound",
    "kill_recovery_p50",
    "kill_recovery_max",
    "big_recovery_p50",
    "big_recovery_max",
    "quiescence_s",
}


def totals(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in summaries:
        for key, value in s.items():
            if key in _SUM_KEYS_SKIP:
                continue
            if isinstance(value, bool):
                out[key] = out.get(key, False) or value
            elif isinstance(value, (int, float)):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, list):
                out[key] = [*out.get(key, []), *value]
            elif isinstance(value, dict):
                merged = dict(out.get(key, {}))
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
                out[key] = merged
    out["topology"] = "+".join(s["topology"] for s in summaries)
    out["workers"] = summaries[0]["workers"]
    out["count"] = summaries[0]["count"]
    out["lease_ttl"] = summaries[0]["lease_ttl"]
    out["max_holders"] = max(s["max_holders"] for s in summaries)
    out["lock_max_holders"] = max(s.get("lock_max_holders", 0) for s in summaries)
    out["rw_max_writers"] = max(s.get("rw_max_writers", 0) for s in summaries)
    out["kill_recovery_bound"] = summaries[0]["kill_recovery_bound"]
    kr = out.get("kill_recovery_samples", [])
    br = out.get("big_recovery_samples", [])
    out["kill_recovery_p50"] = percentile(kr, 0.5)
    out["kill_recovery_max"] = max(kr) if kr else None
    out["big_recovery_p50"] = percentile(br, 0.5)
    out["big_recovery_max"] = max(br) if br else None
    return out


def _report(opts: Options, results: list[dict[str, Any]]) -> str:
    parts = []
    summaries = []
    for res in results:
        name = res["topology"]
        status = res.get("status")
        if "summary" not in res:
            reason = res.get("reason") or res.get("error") or status
            parts.append(f"== chaos: {name}: {status}: {reason}")
            if status != "skipped":
                parts.append(f"    ledgers: {res.get('ledger_dir')}")
            continue
        s = res["summary"]
        summaries.append(s)
        title = (
            f"chaos: {name} (seed {opts.seed}, redis-py {res.get('redis_py')}, "
            f"replicas={res['wait_replicas']['requested'] or 0})"
        )
        parts.append(format_table(s, title))
        verdict = "OK" if not res["violations"] else f"{len(res['violations'])} VIOLATION(S)"
        parts.append(f"  {'verdict'.ljust(33)}{verdict}")
        for v in res["violations"]:
            parts.append(f"    ! {v}")
        for e in res["explained"]:
            parts.append(f"    ~ {e} (documented limit; --strict counts it)")
        for w in res["warnings"]:
            parts.append(f"    ? {w}")
        if res["violations"]:
            parts.append(f"    ledgers: {res['ledger_dir']}")
    if len(summaries) > 1:
        parts.append(format_table(totals(summaries), "chaos: TOTALS"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- main


def _hard_deadline(seconds: float) -> threading.Timer:
    def fire() -> None:
        sys.stderr.write(f"\n[chaos] hard deadline ({seconds:.0f} s) reached; killing everything\n")
        sys.stderr.flush()
        _kill_children()
        with contextlib.suppress(Exception):
            from devtools.servers import kill_all_servers

            kill_all_servers()
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def run(opts: Options) -> tuple[int, list[dict[str, Any]]]:
    """Run every requested topology; return (exit status, results)."""
    if opts.ledger_dir:
        base = Path(opts.ledger_dir)
        base.mkdir(parents=True, exist_ok=True)
        temporary = False
    else:
        base = Path(tempfile.mkdtemp(prefix="redsync-chaos-"))
        temporary = True
    ok_topologies, why = topologies_available()
    budget = opts.deadline or sum(_budget(opts) for _ in opts.topologies) + 30
    timer = _hard_deadline(budget)
    # SIGTERM and Ctrl-C: the running topology is cancelled and cleans up after itself.
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    results: list[dict[str, Any]] = []
    interrupted = False
    try:
        for name in opts.topologies:
            if _signals_seen:
                break
            if name != "standalone" and not ok_topologies:
                results.append({"topology": name, "status": "skipped", "reason": why})
                continue
            results.append(asyncio.run(_run_one(opts, name, base)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
    finally:
        timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        interrupted = interrupted or _signals_seen > 0
        _kill_children()
        with contextlib.suppress(Exception):
            from devtools.servers import kill_all_servers

            kill_all_servers()
    bad = any(r.get("violations") for r in results)
    errors = any(r.get("status") in ("error", "interrupted") for r in results)
    if temporary and not bad and not errors and not opts.keep_ledgers:
        shutil.rmtree(base, ignore_errors=True)
    status = 1 if bad else 2 if (errors or interrupted) else 0
    return status, results


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    status, results = run(opts)
    print(_report(opts, results), flush=True)
    if opts.json_path:
        summaries = [r["summary"] for r in results if "summary" in r]
        doc = {
            "options": asdict(opts),
            "results": results,
            "totals": totals(summaries) if summaries else None,
            "violations": sum(len(r.get("violations", [])) for r in results),
            "exit_status": status,
        }
        Path(opts.json_path).write_text(json.dumps(doc, indent=2, default=str))
    return status
