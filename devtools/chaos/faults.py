"""The fault schedule and the injector that carries it out.

The schedule (which fault, when, how long a stall lasts, which restart mode)
is drawn up front from ``random.Random(seed)``, so a seed names the same
sequence of faults every time.  Targets (which worker to kill, which
connections to cut) depend on the live state and come from a second
generator seeded from the same seed.

Fault kinds:

``sigkill``      SIGKILL a worker (preferring one holding a permit, then one
                 waiting), reap it, and start a new one a moment later
``client_kill``  ``CLIENT KILL ID`` on 1-3 random worker connections (never
                 the runner's own, recognised by their CLIENT SETNAME)
``push_kill``    ``CLIENT KILL ID`` on a worker's notice listener (a
                 connection with sharded subscriptions), at a random moment,
                 so also in the middle of hand-offs
``cut``          the fault proxy aborts every proxied connection (standalone)
``swallow``      the fault proxy drops the next reply (after a request
                 containing a random command name, or any) and aborts that
                 connection (standalone)
``pause``        ``CLIENT PAUSE <ms> WRITE`` on the node serving the keys
``sleep``        ``DEBUG SLEEP <s>`` on that node (the whole server stalls)
``restart`` / ``failover``  the topology's big fault

Stalls last a little longer than the workers' socket timeout and well under
a third of the lease; two stalls are at least half a lease apart, and none
comes near a big fault.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .ledger import Ledger
from .topology import ADMIN_NAME, Topology, admin

__all__ = ["Injector", "Planned", "WorkerControl", "plan", "stall_bounds"]

WORKER_NAME_PREFIX = "chaos-w"
SWALLOW_AFTER: tuple[bytes | None, ...] = (
    None,
    b"EVALSHA",
    b"BLMOVE",
    b"LMOVE",
    b"MULTI",
    b"RPUSH",
    b"EXISTS",
    b"LRANGE",
)
SMALL_WEIGHTS: dict[str, float] = {
    "sigkill": 1.0,
    "client_kill": 2.0,
    "push_kill": 1.5,
    "cut": 1.5,
    "swallow": 2.5,
    "pause": 1.0,
    "sleep": 1.0,
}
STALLS = ("pause", "sleep")


def stall_bounds(socket_timeout: float, lease_ttl: float) -> tuple[float, float]:
    """Shortest and longest stall: a bit over the socket timeout, well under lease_ttl/3."""
    longest = min(socket_timeout + 0.6, 0.8 * lease_ttl / 3)
    return min(socket_timeout + 0.2, longest), longest


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the storm began
    kind: str
    duration: float = 0.0  # stalls
    mode: str = ""  # big faults: "graceful" or "kill"
    choice: int = 0  # swallow: index into SWALLOW_AFTER; client_kill: connections


def plan(
    seed: int,
    *,
    duration: float,
    lease_ttl: float,
    socket_timeout: float,
    kinds: list[str],
    big_faults: int,
    failover: str,
    interval: float,
) -> tuple[list[Planned], list[Planned]]:
    """(small faults, big faults), each sorted by time."""
    rng = random.Random(seed)
    big: list[Planned] = []
    if big_faults > 0:
        span = duration / big_faults
        for i in range(big_faults):
            at = span * (i + rng.uniform(0.3, 0.7))
            mode = failover if failover != "mixed" else rng.choice(("graceful", "kill"))
            big.append(Planned(at, "big", mode=mode))
    stall_min, stall_max = stall_bounds(socket_timeout, lease_ttl)
    weights = {k: SMALL_WEIGHTS[k] for k in kinds}
    small: list[Planned] = []
    next_stall = 0.0
    t = rng.uniform(0.1, interval)
    while t < duration and weights:
        kind = rng.choices(list(weights), list(weights.values()))[0]
        if kind in STALLS:
            near_big = any(b.at - 3.0 <= t <= b.at + lease_ttl + 3.0 for b in big)
            if t < next_stall or near_big:
                others = {k: w for k, w in weights.items() if k not in STALLS}
                if not others:
                    t += rng.expovariate(1 / interval)
                    continue
                kind = rng.choices(list(others), list(others.values()))[0]
        if kind in STALLS:
            d = round(rng.uniform(stall_min, stall_max), 3)
            small.append(Planned(t, kind, duration=d))
            next_stall = t + d + lease_ttl / 2
        elif kind == "swallow":
            small.append(Planned(t, kind, choice=rng.randrange(len(SWALLOW_AFTER))))
        elif kind == "client_kill":
            small.append(Planned(t, kind, choice=rng.randint(1, 3)))
        else:
            small.append(Planned(t, kind))
        t += rng.expovariate(1 / interval)
    return small, big


class WorkerControl(Protocol):
    """What the injector needs from the runner's worker pool."""

    async def pick_victim(self, rng: random.Random) -> Any: ...

    async def kill(self, handle: Any, reason: str) -> None: ...

    def respawn_later(self, handle: Any, delay: float) -> None: ...


class Injector:
    """Carries out a schedule; counts what it did; records every fault in the ledger."""

    def __init__(
        self,
        topology: Topology,
        workers: WorkerControl,
        ledger: Ledger,
        *,
        seed: int,
        key: str,
        before_big: Callable[[], Awaitable[str]] | None = None,
        after_big: Callable[[], object] | None = None,
    ) -> None:
        self.topology = topology
        self.workers = workers
        self.ledger = ledger
        self.rng = random.Random(seed * 7919 + 17)
        self.key = key
        self.before_big = before_big
        self.after_big = after_big
        self.counts: Counter[str] = Counter()
        self.stopping = False
        #: (begin ns, end ns, mode) of every big fault.
        self.big_log: list[tuple[int, int, str]] = []
        self.errors: list[str] = []

    def _note_error(self, kind: str, exc: BaseException) -> None:
        self.counts[f"{kind}_failed"] += 1
        self.ledger.rec("FAULT-ERR", kind, repr(exc))
        if len(self.errors) < 20:
            self.errors.append(f"{kind}: {exc!r}")

    async def run(self, schedule: list[Planned], t0: float) -> None:
        loop = asyncio.get_running_loop()
        for item in schedule:
            delay = t0 + item.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            try:
                await self._small(item)
            except Exception as exc:
                self._note_error(item.kind, exc)

    async def run_big(self, schedule: list[Planned], t0: float) -> None:
        loop = asyncio.get_running_loop()
        kind = self.topology.big_fault_kind
        for item in schedule:
            delay = t0 + item.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.stopping:
                return
            began = self.ledger.rec("FAULT", kind, f"{item.mode} begin")
            try:
                note = await self.before_big() if self.before_big is not None else ""
                desc = await self.topology.big_fault(item.mode, self.key)
            except Exception as exc:
                self._note_error(kind, exc)
                ended = self.ledger.rec("FAULT-END", kind, f"{item.mode} failed {exc!r}")
                self.big_log.append((began, ended, item.mode))
                continue
            ended = self.ledger.rec("FAULT-END", kind, f"{desc} {note}".strip())
            self.big_log.append((began, ended, item.mode))
            if self.after_big is not None:
                self.after_big()
            self.counts[kind] += 1
            self.counts[f"{kind}_{item.mode}"] += 1

    async def _small(self, item: Planned) -> None:
        kind = item.kind
        if kind == "sigkill":
            victim = await self.workers.pick_victim(self.rng)
            if victim is None:
                return
            self.ledger.rec("FAULT", kind, f"{victim.id} holding={len(victim.holding)}")
            await self.workers.kill(victim, "fault")
            self.workers.respawn_later(victim, self.rng.uniform(0.05, 0.5))
            self.counts[kind] += 1
            self.counts["sigkill_holders"] += 1 if victim.holding else 0
        elif kind == "client_kill":
            killed = await self._client_kill(item.choice)
            self.ledger.rec("FAULT", kind, f"{killed} connection(s)")
            self.counts[kind] += 1
            self.counts["client_kill_connections"] += killed
        elif kind == "push_kill":
            killed = await self._client_kill(1, listeners=True)
            self.ledger.rec("FAULT", kind, f"{killed} listener(s)")
            self.counts[kind] += 1
            self.counts["push_kill_connections"] += killed
        elif kind == "cut":
            proxy = self.topology.proxy
            if proxy is None:
                return
            n = proxy.cut_all()
            self.ledger.rec("FAULT", kind, f"{n} connection(s)")
            self.counts[kind] += 1
            self.counts["cut_connections"] += n
        elif kind == "swallow":
            proxy = self.topology.proxy
            if proxy is None:
                return
            after = SWALLOW_AFTER[item.choice]
            proxy.swallow_next_reply(after_request=after)
            self.ledger.rec("FAULT", kind, f"armed after={after!r}")
            self.counts["swallow_armed"] += 1
        elif kind == "pause":
            node = await self.topology.node_for_key(self.key)
            ms = round(item.duration * 1000)
            async with admin(node) as r:
                await r.execute_command("CLIENT", "PAUSE", ms, "WRITE")
            self.ledger.rec("FAULT", kind, f"{ms}ms WRITE on {node[1]}")
            self.counts[kind] += 1
        elif kind == "sleep":
            node = await self.topology.node_for_key(self.key)
            self.ledger.rec("FAULT", kind, f"{item.duration}s on {node[1]}")
            async with admin(node, timeout=item.duration + 10) as r:
                await r.execute_command("DEBUG", "SLEEP", f"{item.duration:.3f}")
            self.ledger.rec("FAULT-END", kind, "")
            self.counts[kind] += 1

    async def _client_kill(self, n: int, listeners: bool = False) -> int:
        found: list[tuple[tuple[str, int], str]] = []
        for node in self.topology.data_nodes():
            try:
                async with admin(node, timeout=3.0) as r:
                    clients = await r.client_list()
            except Exception:
                continue
            for c in clients:
                name = str(c.get("name", ""))
                if listeners and int(c.get("ssub", 0) or 0) == 0:
                    continue
                if name.startswith(WORKER_NAME_PREFIX) and name != ADMIN_NAME:
                    found.append((node, str(c["id"])))
        killed = 0
        for node, cid in self.rng.sample(found, min(n, len(found))):
            try:
                async with admin(node, timeout=3.0) as r:
                    killed += int(await r.execute_command("CLIENT", "KILL", "ID", cid))
            except Exception:
                continue
        return killed

    async def calm(self) -> None:
        """Undo lingering faults: resume the proxy, drop a pending swallow, unpause nodes."""
        proxy = self.topology.proxy
        if proxy is not None:
            proxy.cancel_swallow()
            proxy.resume()
        for node in self.topology.data_nodes():
            try:
                async with admin(node, timeout=3.0) as r:
                    await r.execute_command("CLIENT", "UNPAUSE")
            except Exception:
                continue
