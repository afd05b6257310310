"""Profile one library in one case: where its client spends CPU time.

``python -m benchmarks.profiling CASE [--lib ours] [--tasks N] [--seconds S]``
runs the case's worker under py-spy (sampling, ``--function`` granularity)
against a private redis-server, then prints the share of samples per function:
self time (the function was on top of the stack) and total time (it was
anywhere on the stack), plus self time per package.  ``--tool pyinstrument``
prints pyinstrument's call tree instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from .runner import RESULT_MARK, ROOT, _env, analyse_contended, ensure_rs2_python
from .server import RedisServer

CASES = ("uncontended", "contended", "semaphore", "waiting")


def build_spec(args: argparse.Namespace, port: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "lib": args.lib,
        "port": port,
        "name": f"profile:{uuid.uuid4().hex[:8]}",
        "lease_ttl": args.lease_ttl,
        "count": 1,
    }
    if args.case == "uncontended":
        spec.update(mode="uncontended", cycles=args.cycles, monitor_cycles=0)
    elif args.case == "contended":
        spec.update(mode="contended", tasks=args.tasks, duration=args.seconds)
    elif args.case == "semaphore":
        spec.update(
            mode="contended", tasks=args.tasks, duration=args.seconds, count=4, cs=args.cs_ms / 1e3
        )
    else:
        spec.update(mode="waiting", waiters=args.waiters, hold=args.seconds)
    return spec


def area(frame: str) -> str:
    path = frame[frame.rfind("(") + 1 :]
    if "/redsync/" in path:
        return "redsync"
    if "/redis/" in path:
        return "redis-py"
    if "/asyncio/" in path:
        return "asyncio"
    if "/benchmarks/" in path:
        return "harness"
    return "other"


def short(frame: str) -> str:
    name, _, path = frame.partition(" (")
    path = path.rstrip(")")
    for marker in ("/redsync/", "/redis/", "/asyncio/", "/benchmarks/", "/site-packages/"):
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name
    return f"{name} ({path})"


def summarize(raw: str, top: int) -> str:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f.strip()]
        if not frames or any("importlib" in f for f in frames):
            continue  # start-up (imports), not the case itself
        samples += count
        leaf = frames[-1]
        self_time[short(leaf)] += count
        by_area[area(leaf)] += count
        for frame in {short(f) for f in frames}:
            total_time[frame] += count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples (imports left out)", "", "self time by package:"]
    lines += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in by_area.most_common()]
    lines += ["", f"top {top} functions by self time:"]
    lines += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in self_time.most_common(top)]
    lines += ["", f"top {top} redsync functions by total time (self + callees):"]
    ours = [
        (name, n) for name, n in total_time.most_common() if name.split(" (")[1][:8] == "redsync/"
    ]
    lines += [f"  {100 * n / samples:5.1f} %  {name}" for name, n in ours[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--lib", default="ours")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--cs-ms", type=float, default=0.0)
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--lease-ttl", type=float, default=300.0)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tool", choices=("py-spy", "pyinstrument"), default="py-spy")
    parser.add_argument("--rs2-venv", type=Path, default=Path("/tmp/rs2"))
    args = parser.parse_args(argv)

    python = sys.executable
    if args.lib == "rs2":
        found, problem = ensure_rs2_python(args.rs2_venv)
        if found is None:
            parser.error(problem)
        python = found
    with RedisServer() as server, tempfile.TemporaryDirectory() as tmp:
        spec = json.dumps(build_spec(args, server.port))
        worker = ["-m", "benchmarks.worker", spec]
        if args.tool == "pyinstrument":
            command = [python, "-m", "pyinstrument", "--renderer", "text", *worker]
            done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
            print(done.stdout[-20000:] or done.stderr[-5000:])
            return done.returncode
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out = Path(tmp) / "profile.txt"
        command = [
            spy,
            "record",
            "--format",
            "raw",
            "--function",
            "--full-filenames",
            "--rate",
            str(args.rate),
            "--output",
            str(out),
            "--",
            python,
            *worker,
        ]
        done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True)
        if not out.exists():
            print(done.stderr[-5000:], file=sys.stderr)
            return 1
        for line in done.stdout.splitlines():
            if not line.startswith(RESULT_MARK):
                continue
            try:
                shown = json.loads(line[len(RESULT_MARK) :])
            except ValueError:
                break  # mixed with the profiler's own output
            if "records" in shown:
                shown = analyse_contended([shown], int(build_spec(args, 0)["count"]))
            print("worker result:", json.dumps(shown)[:800])
        print(summarize(out.read_text(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
