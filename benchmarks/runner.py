"""Runs every case for every library against a private redis-server and collects results."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from .contenders import LIBS, supports
from .server import RedisServer, redis_benchmark
from .stats import jain, median, percentile

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH-RESULT "  # kept equal to worker.RESULT_MARK (the worker is not imported here)


@dataclass(frozen=True)
class Plan:
    uncontended_cycles: int = 2000
    monitor_cycles: int = 100
    tasks: tuple[int, ...] = (2, 8, 32)
    procs: int = 4
    duration: float = 1.5
    sem_count: int = 4
    sem_workers: int = 32
    sem_cs_ms: tuple[float, ...] = (0.0, 1.0)
    waiters: tuple[int, ...] = (10, 100, 1000)
    hold: float = 2.0
    crash_ttls: tuple[float, ...] = (1.0, 2.0, 4.0)
    #: Idle semaphores on one client (lease_ttl idle_ttl), measured for idle_window s.
    idle_semaphores: int = 1000
    idle_ttl: float = 3.0
    idle_window: float = 6.0
    #: (semaphores, waiter instances each): every waiting task its own instance.
    instances: tuple[tuple[int, int], ...] = ((1, 1000), (500, 4))
    #: (events, waiting instances each): every waiting task its own instance.
    event_instances: tuple[tuple[int, int], ...] = ((1, 1000),)
    #: Permits of the semaphore one instance takes entirely (0: skip the case).
    permits: int = 4096
    #: Read-write lock: tasks, critical section (ms), and writers timed behind
    #: a stream of readers (0 tasks: skip the case).
    rw_tasks: int = 32
    rw_cs_ms: float = 1.0
    rw_writers: int = 20
    floor_ops: int = 5000
    rb_requests: int = 20000
    #: Lease (or lock expiry) for every case but crash recovery: the libraries' default.
    lease_ttl: float = 300.0
    #: Libraries for the cases beyond uncontended and in-process contended (None: all).
    extra_libs: tuple[str, ...] | None = None
    #: Run the single-process cases of one library in one worker process.
    batch: bool = False
    #: A waiter that has no permit 1.5 * lease_ttl + crash_slack s after the kill never gets one.
    crash_slack: float = 1.0

    def crash_timeout(self, lease_ttl: float) -> float:
        """How long to wait for a recovery before reporting "never"."""
        return round(1.5 * lease_ttl + self.crash_slack, 1)


FULL = Plan()
SMOKE = Plan(
    uncontended_cycles=200,
    monitor_cycles=20,
    tasks=(8,),
    procs=2,
    duration=0.3,
    sem_cs_ms=(1.0,),
    waiters=(10,),
    hold=0.5,
    crash_ttls=(1.0,),
    idle_semaphores=100,
    idle_window=1.6,
    instances=((1, 50), (20, 4)),
    event_instances=((1, 50),),
    permits=256,
    rw_writers=5,
    floor_ops=300,
    rb_requests=1000,
    extra_libs=("ours", "rs2"),
    batch=True,
    crash_slack=0.0,
)


@dataclass
class Contender:
    lib: str
    python: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return LIBS[self.lib]


@dataclass
class Job:
    case: str
    params: dict[str, Any]
    lib: str
    kind: str  # "single", "multi" or "crash"
    spec: dict[str, Any]

    @property
    def key(self) -> str:
        return case_key(self.case, self.params)


def case_key(case: str, params: dict[str, Any]) -> str:
    return "/".join([case, *(f"{k}={v}" for k, v in params.items())])


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- environments -------------------------------------------------------------------


def ensure_rs2_python(venv: Path) -> tuple[str | None, str]:
    """The interpreter of a venv with redsync 2.0.0, created on first use."""
    python = venv / "bin" / "python"
    if python.exists():
        return str(python), ""
    log(f"creating {venv} with redsync 2.0.0 ...")
    packages = ["redsync==2.0.0", f"redis=={importlib.metadata.version('redis')}"]
    if importlib.util.find_spec("hiredis") is not None:
        packages.append(f"hiredis=={importlib.metadata.version('hiredis')}")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"could not install redsync 2.0.0 into {venv}: {detail.strip()[-300:]}"
    return str(python), ""


def _worker_command(python: str, specs: object) -> list[str]:
    return [python, "-m", "benchmarks.worker", json.dumps(specs)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _results(stdout: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len(RESULT_MARK) :])
        for line in stdout.splitlines()
        if line.startswith(RESULT_MARK)
    ]


def run_worker(python: str, specs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(
            _worker_command(python, specs),
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        results = _results(stdout)
        return results + [{"error": f"worker timed out after {timeout} s"}] * (
            len(specs) - len(results)
        )
    results = _results(done.stdout)
    if len(results) < len(specs):
        tail = done.stderr.strip().splitlines()[-5:]
        error = {"error": f"worker exited {done.returncode}: {' | '.join(tail)}"}
        results += [error] * (len(specs) - len(results))
    return results


def probe_contenders(rs2_python: str | None, rs2_problem: str) -> list[Contender]:
    pythons = {lib: rs2_python if lib == "rs2" else sys.executable for lib in LIBS}
    infos: dict[str, dict[str, Any]] = {}
    for python in {p for p in pythons.values() if p is not None}:
        libs = [lib for lib, p in pythons.items() if p == python]
        for lib, info in zip(
            libs, run_worker(python, [{"mode": "probe", "lib": lib} for lib in libs], 120)
        ):
            infos[lib] = info
    found: list[Contender] = []
    for lib, interpreter in pythons.items():
        info = infos.get(lib, {"lib": lib, "error": rs2_problem})
        if "error" in info:
            log(f"skipping {LIBS[lib]}: {info['error']}")
        found.append(Contender(lib, interpreter or "", info))
    return found


# -- planning ---------------------------------------------------------------------------


def rotated(items: Sequence[str], shift: int) -> list[str]:
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def plan_jobs(plan: Plan, libs: Sequence[str], port: int, repeat: int) -> list[Job]:
    extra = [lib for lib in libs if plan.extra_libs is None or lib in plan.extra_libs]

    def spec(mode: str, lib: str, **fields: Any) -> dict[str, Any]:
        name = f"bench:{repeat}:{mode}:{lib}:{uuid.uuid4().hex[:8]}"
        return {
            "mode": mode,
            "lib": lib,
            "port": port,
            "name": name,
            "lease_ttl": plan.lease_ttl,
            **fields,
        }

    groups: list[list[Job]] = []
    groups.append(
        [
            Job(
                "uncontended",
                {},
                lib,
                "single",
                spec(
                    "uncontended",
                    lib,
                    cycles=plan.uncontended_cycles,
                    monitor_cycles=plan.monitor_cycles,
                ),
            )
            for lib in libs
        ]
    )
    for tasks in plan.tasks:
        groups.append(
            [
                Job(
                    "contended",
                    {"tasks": tasks},
                    lib,
                    "single",
                    spec("contended", lib, tasks=tasks, duration=plan.duration, count=1),
                )
                for lib in libs
            ]
        )
    if plan.procs:
        groups.append(
            [
                Job(
                    "contended",
                    {"procs": plan.procs},
                    lib,
                    "multi",
                    spec("contended", lib, tasks=1, duration=plan.duration, count=1, clock="wall"),
                )
                for lib in extra
            ]
        )
    for cs in plan.sem_cs_ms:
        groups.append(
            [
                Job(
                    "semaphore",
                    {"count": plan.sem_count, "workers": plan.sem_workers, "cs_ms": cs},
                    lib,
                    "single",
                    spec(
                        "contended",
                        lib,
                        tasks=plan.sem_workers,
                        duration=plan.duration,
                        count=plan.sem_count,
                        cs=cs / 1000,
                    ),
                )
                for lib in extra
                if supports(lib, plan.sem_count)
            ]
        )
    for waiters in plan.waiters:
        groups.append(
            [
                Job(
                    "waiting",
                    {"waiters": waiters},
                    lib,
                    "single",
                    spec("waiting", lib, waiters=waiters, hold=plan.hold, count=1),
                )
                for lib in extra
            ]
        )
    if plan.idle_semaphores:
        groups.append(
            [
                Job(
                    "idle",
                    {"semaphores": plan.idle_semaphores},
                    lib,
                    "single",
                    spec(
                        "idle",
                        lib,
                        semaphores=plan.idle_semaphores,
                        idle_ttl=plan.idle_ttl,
                        window=plan.idle_window,
                    ),
                )
                for lib in extra
                if lib in ("ours", "rs2")
            ]
        )
    for semaphores, waiters in plan.instances:
        groups.append(
            [
                Job(
                    "instances",
                    {"semaphores": semaphores, "waiters": waiters},
                    lib,
                    "single",
                    spec("instances", lib, semaphores=semaphores, waiters=waiters),
                )
                for lib in extra
                if lib in ("ours", "rs2")
            ]
        )
    for events, waiters in plan.event_instances:
        groups.append(
            [
                Job(
                    "event_instances",
                    {"events": events, "waiters": waiters},
                    lib,
                    "single",
                    spec("event_instances", lib, events=events, waiters=waiters),
                )
                for lib in extra
                if lib in ("ours", "rs2")
            ]
        )
    if plan.permits:
        groups.append(
            [
                Job(
                    "permits",
                    {"permits": plan.permits},
                    lib,
                    "single",
                    spec("permits", lib, permits=plan.permits),
                )
                for lib in extra
                if lib in ("ours", "rs2")
            ]
        )
    if plan.rw_tasks and "ours" in libs:
        groups.append(
            [
                Job(
                    "rwlock",
                    {"tasks": plan.rw_tasks, "cs_ms": plan.rw_cs_ms},
                    "ours",
                    "single",
                    spec(
                        "rwlock",
                        "ours",
                        tasks=plan.rw_tasks,
                        cs=plan.rw_cs_ms / 1000,
                        duration=plan.duration,
                        writers=plan.rw_writers,
                    ),
                )
            ]
        )
    for ttl in plan.crash_ttls:
        groups.append(
            [
                Job(
                    "crash",
                    {"lease_ttl": ttl},
                    lib,
                    "crash",
                    {**spec("crash", lib, count=1), "lease_ttl": ttl},
                )
                for lib in extra
                if lib in ("ours", "rs2")
            ]
        )
    if plan.batch:
        # Library-major order, so that one worker process runs a library's cases.
        order = {lib: i for i, lib in enumerate(libs)}
        singles = sorted(
            (job for group in groups for job in group if job.kind == "single"),
            key=lambda job: order[job.lib],
        )
        others = [job for group in groups for job in group if job.kind != "single"]
        return singles + others
    return [job for group in groups for job in group]


# -- running ------------------------------------------------------------------------------


def run_multi(contender: Contender, job: Job, procs: int, timeout: float) -> list[dict[str, Any]]:
    barrier = {"key": f"{job.spec['name']}:barrier", "parties": procs}
    processes = [
        subprocess.Popen(
            _worker_command(contender.python, [{**job.spec, "barrier": barrier}]),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    parts: list[dict[str, Any]] = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        results = _results(stdout)
        if results:
            parts.append(results[0])
        else:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            parts.append({"error": f"worker exited {process.returncode}: {tail}"})
    return parts


def _line_reader(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_line(lines: queue.Queue[str | None], prefix: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith(prefix):
            return line


def _end(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def run_crash(contender: Contender, job: Job, timeout: float) -> dict[str, Any]:
    """SIGKILL a holder process and time how long a waiting process takes to get the permit."""

    def start(mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            _worker_command(contender.python, [{**job.spec, "mode": mode}]),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    holder = start("crash_holder")
    waiter: subprocess.Popen[str] | None = None
    try:
        if _wait_line(_line_reader(holder), "ACQUIRED", 30) is None:
            return {"error": "the holder never acquired"}
        waiter = start("crash_waiter")
        lines = _line_reader(waiter)
        if _wait_line(lines, "WAITING", 30) is None:
            return {"error": "the waiter never started waiting"}
        time.sleep(0.3)
        killed_at = time.time()
        os.kill(holder.pid, signal.SIGKILL)
        line = _wait_line(lines, RESULT_MARK, timeout)
        if line is None:
            _end(waiter)
            return {"recovered": False, "timeout": timeout}
        result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
        if "error" in result:
            return result
        return {"recovered": True, "recovery": result["acquired_at"] - killed_at}
    finally:
        _end(holder)
        if waiter is not None:
            try:
                waiter.wait(3)
            except subprocess.TimeoutExpired:
                _end(waiter)


def analyse_contended(parts: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """Throughput, hand-off, waits, fairness and costs from the per-acquisition records.

    Each record is (acquire called, acquire returned, release called).  With
    count=1 the records sorted by "acquire returned" follow the holders in
    order, so a hand-off is the next holder's return minus the previous
    holder's release call.  Only acquisitions that returned inside the
    measured window count; waits include those that began in it.
    """
    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return {"error": errors[0]}
    start, end = parts[0]["window"]
    per_worker: list[int] = []
    records: list[tuple[float, float, float]] = []
    for part in parts:
        for worker in part["records"]:
            rows = [(float(r[0]), float(r[1]), float(r[2])) for r in worker]
            records += rows
            per_worker.append(sum(1 for r in rows if start <= r[1] <= end))
    acquisitions = sum(per_worker)
    elapsed = end - start
    waits = [r[1] - r[0] for r in records if start <= r[0] <= end]
    result: dict[str, Any] = {
        "acquisitions": acquisitions,
        "throughput": acquisitions / elapsed if elapsed > 0 else None,
        "wait_p50": percentile(waits, 50),
        "wait_p99": percentile(waits, 99),
        "worst_wait": max(waits, default=float("nan")),
        "jain": jain(per_worker),
        "cpu_per_acq": sum(p["cpu"] for p in parts) / acquisitions if acquisitions else None,
        "round_trips": sum(p["sends"] for p in parts) / acquisitions if acquisitions else None,
        "commands": parts[0]["commands"] / acquisitions if acquisitions else None,
        "scripts": parts[0]["scripts"] / acquisitions if acquisitions else None,
        "undrained": sum(p.get("undrained", 0) for p in parts),
    }
    if count == 1:
        ordered = sorted(records, key=lambda r: r[1])
        handoffs = [
            cur[1] - prev[2]
            for prev, cur in itertools.pairwise(ordered)
            if start <= prev[1] and cur[1] <= end
        ]
        result["handoff_p50"] = percentile(handoffs, 50)
        result["handoff_p99"] = percentile(handoffs, 99)
        result["overlaps"] = sum(1 for prev, cur in itertools.pairwise(ordered) if cur[1] < prev[2])
    return result


def execute(
    jobs: list[Job], contenders: dict[str, Contender], plan: Plan, server: RedisServer
) -> list[tuple[Job, dict[str, Any], float]]:
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    done: list[tuple[Job, dict[str, Any], float]] = []
    index = 0
    try:
        while index < len(jobs):
            job = jobs[index]
            contender = contenders[job.lib]
            admin.flushall()
            started = time.perf_counter()
            if job.kind == "single":
                batch = [job]
                while (
                    plan.batch
                    and index + len(batch) < len(jobs)
                    and jobs[index + len(batch)].kind == "single"
                    and jobs[index + len(batch)].lib == job.lib
                ):
                    batch.append(jobs[index + len(batch)])
                results = run_worker(contender.python, [j.spec for j in batch], 600)
                elapsed = (time.perf_counter() - started) / len(batch)
                for j, raw in zip(batch, results):
                    result = raw
                    if j.spec["mode"] == "contended" and "error" not in raw:
                        result = analyse_contended([raw], int(j.spec["count"]))
                    done.append((j, result, elapsed))
                    _progress(j, result, elapsed)
                index += len(batch)
                continue
            if job.kind == "multi":
                parts = run_multi(contender, job, plan.procs, 300)
                result = analyse_contended(parts, int(job.spec["count"]))
            else:
                result = run_crash(contender, job, plan.crash_timeout(job.params["lease_ttl"]))
            elapsed = time.perf_counter() - started
            done.append((job, result, elapsed))
            _progress(job, result, elapsed)
            index += 1
    finally:
        admin.close()
    return done


def _progress(job: Job, result: dict[str, Any], elapsed: float) -> None:
    if "error" in result:
        summary = f"error: {result['error']}"
    elif job.case == "uncontended":
        summary = f"p50 {result['p50'] * 1e6:.0f} us, {result['round_trips']:.2f} round trips"
    elif job.case in ("contended", "semaphore"):
        summary = f"{result['throughput']:.0f} acq/s"
        if "handoff_p50" in result:
            summary += f", handoff p50 {result['handoff_p50'] * 1e6:.0f} us"
    elif job.case == "waiting":
        summary = (
            f"{result['commands_per_s']:.1f} cmd/s, {result['connections']} conns, "
            f"drain {result['drain']:.3f} s"
        )
    elif job.case == "idle":
        summary = (
            f"{result['commands_per_s']:.0f} cmd/s, {result['connections']} conns, "
            f"{result['tasks']} tasks"
        )
    elif job.case in ("instances", "event_instances"):
        summary = (
            f"{result['instances']} instances, {result['connections']} conns, "
            f"drain {result['drain']:.3f} s"
        )
    elif job.case == "permits":
        summary = f"total {result['total']:.2f} s, last/first quarter {result['growth']:.2f}"
    elif job.case == "rwlock":
        summary = (
            f"readers {result['readers_throughput']:.0f}/s, writers "
            f"{result['writers_throughput']:.0f}/s (x{result['ratio']:.1f}), writer in after "
            f"p50 {result['writer_wait_p50'] * 1e3:.2f} ms, "
            f"max {result['writer_wait_max'] * 1e3:.2f} ms"
        )
    elif job.case == "crash":
        summary = (
            f"recovered in {result['recovery']:.2f} s"
            if result.get("recovered")
            else f"never (timeout {result['timeout']} s)"
        )
    else:
        summary = ""
    log(f"  {job.key:<40} {LIBS[job.lib]:<28} {summary}  [{elapsed:.1f} s]")


# -- the whole run ----------------------------------------------------------------------------


def aggregate(values: list[Any]) -> Any:
    """Median of numbers, key by key for dicts; the first value for anything else."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, dict):
        keys: list[str] = []
        for value in present:
            keys += [k for k in value if k not in keys]
        return {k: aggregate([v.get(k) for v in present if isinstance(v, dict)]) for k in keys}
    if isinstance(first, bool):
        return first
    if isinstance(first, (int, float)):
        return median(present)
    return first


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        grouped.setdefault(run["key"], {}).setdefault(run["lib"], []).append(run["result"])
    summary: dict[str, dict[str, Any]] = {}
    for key, by_lib in grouped.items():
        summary[key] = {}
        for lib, results in by_lib.items():
            ok = [r for r in results if "error" not in r]
            if not ok:
                summary[key][lib] = {"error": results[0]["error"], "repeats": 0}
                continue
            if key.startswith("crash/"):
                recoveries = [r["recovery"] for r in ok if r.get("recovered")]
                summary[key][lib] = {
                    "recovered": len(recoveries),
                    "never": len(ok) - len(recoveries),
                    "recovery": median(recoveries) if len(recoveries) * 2 > len(ok) else None,
                    "recoveries": recoveries,
                    "timeout": max((r.get("timeout", 0) for r in ok), default=None),
                    "repeats": len(ok),
                }
                continue
            merged = aggregate(ok)
            merged["repeats"] = len(ok)
            summary[key][lib] = merged
    return summary


def source_state() -> dict[str, Any]:
    """The commit measured as "ours", and whether src/ had uncommitted changes."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        except OSError:
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_changes": git("status", "--porcelain", "src")}


def run_all(
    plan: Plan,
    repeats: int,
    out: Path,
    rs2_venv: Path,
    only: Iterable[str] | None = None,
) -> dict[str, Any]:
    wall = time.perf_counter()
    rs2_python, rs2_problem = ensure_rs2_python(rs2_venv)
    contenders = probe_contenders(rs2_python, rs2_problem)
    wanted = set(only) if only else set(LIBS)
    usable = [c.lib for c in contenders if "error" not in c.info and c.lib in wanted]
    by_lib = {c.lib: c for c in contenders}
    runs: list[dict[str, Any]] = []
    floor_runs: list[dict[str, Any]] = []
    with RedisServer() as server:
        log(f"redis-server {server.version()} on 127.0.0.1:{server.port} (pid {server.pid})")
        for repeat in range(repeats):
            order = rotated(usable, repeat)
            log(f"repeat {repeat + 1}/{repeats}: order {', '.join(order)}")
            (floor,) = run_worker(
                sys.executable,
                [
                    {
                        "mode": "floor",
                        "lib": "floor",
                        "port": server.port,
                        "name": f"bench:{repeat}:floor",
                        "ops": plan.floor_ops,
                    }
                ],
                300,
            )
            floor["redis_benchmark"] = redis_benchmark(server.port, plan.rb_requests)
            floor_runs.append({"repeat": repeat, "result": floor})
            if "error" in floor:
                log(f"  floor: error {floor['error']}")
            else:
                log(
                    f"  floor: PING p50 {floor['ping_p50'] * 1e6:.0f} us, "
                    f"RPUSH/LPOP p50 {floor['list_p50'] * 1e6:.0f} us"
                )
            for job, result, elapsed in execute(
                plan_jobs(plan, order, server.port, repeat), by_lib, plan, server
            ):
                runs.append(
                    {
                        "repeat": repeat,
                        "key": job.key,
                        "case": job.case,
                        "params": job.params,
                        "lib": job.lib,
                        "seconds": elapsed,
                        "result": result,
                    }
                )
        server_version = server.version()
    data: dict[str, Any] = {
        "plan": asdict(plan),
        "repeats": repeats,
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "redis_server": server_version,
            "source": source_state(),
            "contenders": {c.lib: {"python": c.python, **c.info} for c in contenders},
        },
        "floor_runs": floor_runs,
        "floor": aggregate([r["result"] for r in floor_runs if "error" not in r["result"]]),
        "runs": runs,
        "summary": summarize(runs),
        "seconds": time.perf_counter() - wall,
    }
    out.mkdir(parents=True, exist_ok=True)
    return data
