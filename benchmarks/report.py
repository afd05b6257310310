"""Targets, the markdown report, console ratios and plots, from the collected results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .contenders import LIBS
from .stats import finite, ratio

OTHERS = ("redis_py_lock", "pottery", "redis_lock")
NA = "-"


def fmt_time(seconds: object) -> str:
    if not finite(seconds):
        return NA
    value = float(seconds)  # type: ignore[arg-type]
    if abs(value) < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if abs(value) < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def fmt_num(value: object, digits: int = 0) -> str:
    if not finite(value):
        return NA
    return f"{float(value):,.{digits}f}"  # type: ignore[arg-type]


def fmt_ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}x"


def _metric(summary: dict[str, Any], key: str, lib: str, metric: str) -> float | None:
    value = summary.get(key, {}).get(lib, {}).get(metric)
    return float(value) if finite(value) else None


def _keys(summary: dict[str, Any], case: str) -> list[str]:
    def order(key: str) -> tuple[int, float]:
        _, *params = key.split("/")
        kind = 1 if any(p.startswith("procs=") for p in params) else 0
        number = float(params[-1].split("=")[1]) if params else 0.0
        return kind, number

    return sorted((k for k in summary if k.split("/")[0] == case), key=order)


def _label(key: str) -> str:
    _, *params = key.split("/")
    return ", ".join(params) if params else NA


def _present(summary: dict[str, Any], key: str) -> list[str]:
    return [lib for lib in LIBS if lib in summary.get(key, {})]


def _instance_table(summary: dict[str, Any], case: str, title: str, text: str) -> list[str]:
    """The rows of a many-instances case (semaphores or events), with its heading."""
    rows = []
    for key in _keys(summary, case):
        for lib in _present(summary, key):
            e = summary[key][lib]
            rows.append(
                _error(e, 6)
                or [
                    _label(key),
                    LIBS[lib],
                    fmt_num(e.get("instances")),
                    fmt_num(e.get("connections")),
                    fmt_time(e.get("drain")),
                    fmt_num(e.get("undrained")),
                ]
            )
    if not rows:
        return []
    header = ["case", "library", "instances", "connections", "drain", "left"]
    return [title, "", text, "", *_table(header, rows)]


# -- targets ---------------------------------------------------------------------------------


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    summary: dict[str, Any] = data["summary"]
    floor: dict[str, Any] = data.get("floor") or {}
    rows: list[dict[str, Any]] = []

    def add(
        target: str,
        ours: float | None,
        reference: float | None,
        reference_name: str,
        *,
        limit: float,
        at_most: bool = True,
        absolute: bool = False,
        unit: str = "time",
    ) -> None:
        shown = fmt_time if unit == "time" else (lambda v: fmt_num(v, 2))
        if absolute:
            value = ours
            measure = None
        else:
            value = ratio(ours, reference)
            measure = value
        met = None if value is None else (value <= limit if at_most else value >= limit)
        rows.append(
            {
                "target": target,
                "ours": shown(ours),
                "reference": f"{shown(reference)} ({reference_name})" if reference_name else "",
                "ratio": measure,
                "met": met,
            }
        )

    def drain_target(key: str, label: str) -> None:
        """Issue 9: draining waiters takes at most 1.5x as long as 2.0.0."""
        add(
            f"{label}: drain ≤ 1.5x 2.0.0",
            _metric(summary, key, "ours", "drain"),
            _metric(summary, key, "rs2", "drain"),
            "2.0.0",
            limit=1.5,
        )

    def best_other(key: str) -> tuple[float | None, str]:
        """The highest throughput of the other libraries (not redsync's) in ``key``."""
        others = [
            (_metric(summary, key, lib, "throughput"), lib) for lib in OTHERS if lib in summary[key]
        ]
        return max(((v, lib) for v, lib in others if v is not None), default=(None, ""))

    p50 = _metric(summary, "uncontended", "ours", "p50")
    add(
        "uncontended p50 ≤ 1.0x redsync 2.0.0",
        p50,
        _metric(summary, "uncontended", "rs2", "p50"),
        "2.0.0",
        limit=1.0,
    )
    ping = floor.get("ping_p50")
    add(
        "uncontended p50 ≤ 1.1x two PING round trips",
        p50,
        2 * ping if isinstance(ping, (int, float)) and finite(ping) else None,
        "2x PING p50",
        limit=1.1,
    )
    contended = _keys(summary, "contended")
    for key in contended:
        label = _label(key)
        ours = _metric(summary, key, "ours", "throughput")
        add(
            f"contended throughput ({label}) ≥ 1.0x 2.0.0",
            ours,
            _metric(summary, key, "rs2", "throughput"),
            "2.0.0",
            limit=1.0,
            at_most=False,
            unit="num",
        )
        best = best_other(key)
        add(
            f"contended throughput ({label}) ≥ 1.5x others",
            ours,
            best[0],
            f"best other: {LIBS[best[1]]}" if best[1] else "",
            limit=1.5,
            at_most=False,
            unit="num",
        )
    for key in contended:
        add(
            f"handoff p50 ({_label(key)}) ≤ 1.0x 2.0.0",
            _metric(summary, key, "ours", "handoff_p50"),
            _metric(summary, key, "rs2", "handoff_p50"),
            "2.0.0",
            limit=1.0,
        )
    # Issue 10: the lock against redis-py's Lock, our semaphore and the others.
    add(
        "lock: uncontended p50 ≤ 1.0x redis-py Lock",
        _metric(summary, "uncontended", "lock", "p50"),
        _metric(summary, "uncontended", "redis_py_lock", "p50"),
        "redis-py Lock",
        limit=1.0,
    )
    for key in contended:
        label = _label(key)
        lock = _metric(summary, key, "lock", "throughput")
        add(
            f"lock: contended throughput ({label}) ≥ 1.0x our semaphore (count 1)",
            lock,
            _metric(summary, key, "ours", "throughput"),
            "our semaphore",
            limit=1.0,
            at_most=False,
            unit="num",
        )
        best = best_other(key)
        add(
            f"lock: contended throughput ({label}) ≥ 1.5x others",
            lock,
            best[0],
            f"best other: {LIBS[best[1]]}" if best[1] else "",
            limit=1.5,
            at_most=False,
            unit="num",
        )
    add(
        "round trips per acquisition ≤ 2.1 (uncontended cycle)",
        _metric(summary, "uncontended", "ours", "round_trips"),
        None,
        "",
        limit=2.1,
        absolute=True,
        unit="num",
    )
    for key in contended:
        add(
            f"round trips per acquisition ≤ 2.1 ({_label(key)})",
            _metric(summary, key, "ours", "round_trips"),
            None,
            "",
            limit=2.1,
            absolute=True,
            unit="num",
        )
    waiting = _keys(summary, "waiting")
    if waiting:
        key = waiting[-1]
        label = _label(key)
        add(
            f"{label}: 0 commands/s while waiting",
            _metric(summary, key, "ours", "commands_per_s"),
            None,
            "",
            limit=0.0,
            absolute=True,
            unit="num",
        )
        add(
            f"{label}: ≤ 8 connections",
            _metric(summary, key, "ours", "connections"),
            None,
            "",
            limit=8,
            absolute=True,
            unit="num",
        )
        drain_target(key, label)
    for key in _keys(summary, "instances"):
        label = _label(key)
        semaphores = int(key.split("semaphores=")[1].split("/")[0])
        # One holder and its waiters per semaphore: 8 connections for one, 16 for many.
        limit = 8 if semaphores == 1 else 16
        add(
            f"{label}: ≤ {limit} connections (default client)",
            _metric(summary, key, "ours", "connections"),
            None,
            "",
            limit=limit,
            absolute=True,
            unit="num",
        )
        drain_target(key, label)
    for key in _keys(summary, "event_instances"):
        label = "events: " + _label(key)
        add(
            f"{label}: ≤ 8 connections (default client)",
            _metric(summary, key, "ours", "connections"),
            None,
            "",
            limit=8,
            absolute=True,
            unit="num",
        )
        drain_target(key, label)
    for key in _keys(summary, "permits"):
        label = _label(key)
        add(
            f"{label} in one instance: last quarter ≤ 1.5x first",
            _metric(summary, key, "ours", "last_quarter"),
            _metric(summary, key, "ours", "first_quarter"),
            "first quarter",
            limit=1.5,
        )
        add(
            f"{label} in one instance: all within 10 s",
            _metric(summary, key, "ours", "total"),
            None,
            "",
            limit=10.0,
            absolute=True,
        )
    for key in _keys(summary, "rwlock"):
        label = "read-write lock: " + _label(key)
        add(
            f"{label}: readers ≥ 10x the same tasks as writers",
            _metric(summary, key, "ours", "readers_throughput"),
            _metric(summary, key, "ours", "writers_throughput"),
            "writers",
            limit=10.0,
            at_most=False,
            unit="num",
        )
        add(
            f"{label}: a writer behind streaming readers is in within one critical "
            "section (p50, against the readers' observed hold p50)",
            _metric(summary, key, "ours", "writer_wait_p50"),
            _metric(summary, key, "ours", "read_hold_p50"),
            "read hold p50",
            limit=1.0,
        )
        add(
            f"{label}: no read that began after a writer asked gets in before it",
            _metric(summary, key, "ours", "reads_overtaking_writers"),
            None,
            "",
            limit=0.0,
            absolute=True,
            unit="num",
        )
    for key in _keys(summary, "idle"):
        label = _label(key)
        add(
            f"{label}, lease_ttl 3 s: ≤ 3,000 server commands/s",
            _metric(summary, key, "ours", "commands_per_s"),
            None,
            "",
            limit=3000.0,
            absolute=True,
            unit="num",
        )
        add(
            f"{label}: ≤ 4 connections",
            _metric(summary, key, "ours", "connections"),
            None,
            "",
            limit=4,
            absolute=True,
            unit="num",
        )
    for key in _keys(summary, "crash"):
        ttl = float(key.split("=")[1])
        bound = ttl + ttl / 3
        entry = summary[key].get("ours", {})
        recovery = entry.get("recovery")
        rows.append(
            {
                "target": f"crash recovery (lease_ttl {ttl:g} s) ≤ {bound:.2f} s",
                "ours": _crash_text(entry),
                "reference": f"{_crash_text(summary[key].get('rs2', {}))} (2.0.0)",
                "ratio": ratio(recovery, bound) if finite(recovery) else None,
                "met": (recovery <= bound) if finite(recovery) else (False if entry else None),
            }
        )
    return rows


def _drain(entry: dict[str, Any], metric: str) -> str:
    if entry.get("undrained"):
        return f"> {fmt_time(entry.get('drain_cap'))} ({fmt_num(entry['undrained'])} left)"
    return fmt_time(entry.get(metric))


def _crash_text(entry: dict[str, Any]) -> str:
    if not entry:
        return NA
    if "error" in entry:
        return f"error: {entry['error']}"
    if entry.get("recovery") is not None:
        text = fmt_time(entry["recovery"])
        if entry.get("never"):
            text += f" ({entry['never']}/{entry['repeats']} never)"
        return text
    return f"never (timeout {entry.get('timeout')} s)"


# -- markdown -----------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _error(entry: dict[str, Any], width: int) -> list[str] | None:
    if "error" in entry:
        return [f"error: {entry['error']}", *([NA] * (width - 1))]
    return None


def markdown(data: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    summary: dict[str, Any] = data["summary"]
    floor: dict[str, Any] = data.get("floor") or {}
    env = data["environment"]
    out: list[str] = ["# redsync benchmark results", ""]
    out.append(
        f"Python {env['python']}, redis-server {env['redis_server']}, {env['cpus']} CPUs, "
        f"{data['repeats']} repeat(s) (medians shown), lease_ttl {data['plan']['lease_ttl']:g} s "
        f"outside the crash case, total {data['seconds']:.0f} s."
    )
    source = env.get("source") or {}
    if source.get("commit"):
        dirty = " plus uncommitted changes in src/" if source.get("src_changes") else ""
        out.append(f"Measured this repository at commit {source['commit'][:12]}{dirty}.")
    out.append("")
    versions = []
    for lib, info in env["contenders"].items():
        state = f"skipped: {info['error']}" if "error" in info else info.get("version", "?")
        versions.append([LIBS[lib], state, str(info.get("redis_py", NA))])
    out += _table(["library", "version", "redis-py"], versions)

    out += ["## Targets", ""]
    out += _table(
        ["target", "ours", "reference", "ratio", "met"],
        [
            [
                r["target"],
                r["ours"],
                r["reference"] or NA,
                fmt_ratio(r["ratio"]),
                {True: "met", False: "**missed**", None: "n/a"}[r["met"]],
            ]
            for r in rows
        ],
    )

    out += ["## Floor (one redis.asyncio client, sequential)", ""]
    floor_rows = []
    if floor:
        ping_ops = fmt_num(floor.get("ping_ops"))
        list_ops = fmt_num(floor.get("list_ops"))
        floor_rows += [
            ["PING", fmt_time(floor.get("ping_p50")), fmt_time(floor.get("ping_p99")), ping_ops],
            [
                "RPUSH / LPOP (per op)",
                fmt_time(floor.get("list_p50")),
                fmt_time(floor.get("list_p99")),
                list_ops,
            ],
            [
                "RPUSH + LPOP (pair)",
                fmt_time(floor.get("pair_p50")),
                fmt_time(floor.get("pair_p99")),
                NA,
            ],
        ]
        for test, figures in (floor.get("redis_benchmark") or {}).items():
            if isinstance(figures, dict):
                floor_rows.append(
                    [
                        f"redis-benchmark {test} (50 clients)",
                        fmt_time(figures.get("p50")),
                        NA,
                        fmt_num(figures.get("rps")),
                    ]
                )
    out += _table(["operation", "p50", "p99", "ops/s"], floor_rows)

    ping = floor.get("ping_p50")
    out += ["## 1. Uncontended acquire + release", ""]
    out.append(
        "Round trips are requests written by the client (a pipeline is one); top-level and "
        "inner commands come from MONITOR (a separate pass); all commands from "
        "INFO commandstats, which counts commands run inside scripts under their own names."
    )
    out.append("")
    uncontended = []
    for lib in _present(summary, "uncontended"):
        e = summary["uncontended"][lib]
        uncontended.append(
            _error(e, 11)
            or [
                LIBS[lib],
                fmt_time(e.get("p50")),
                fmt_time(e.get("p99")),
                fmt_num(e.get("cycles_per_s")),
                fmt_num(e.get("round_trips"), 2),
                fmt_num(e.get("top_level"), 2),
                fmt_num(e.get("scripts"), 2),
                fmt_num(e.get("inner"), 2),
                fmt_num(e.get("commands"), 2),
                fmt_time(e.get("cpu")),
                fmt_ratio(ratio(e.get("p50"), ping) if finite(ping) else None),
            ]
        )
    out += _table(
        [
            "library",
            "p50",
            "p99",
            "cycles/s",
            "round trips",
            "top-level cmds",
            "EVALSHA/EVAL",
            "inner cmds",
            "all cmds",
            "client CPU",
            "p50 / PING p50",
        ],
        uncontended,
    )

    out += ["## 2. Contended mutex (count=1, 0 ms critical section)", ""]
    out.append(
        "Hand-off: from the holder calling release() to the next holder's acquire() "
        "returning (perf_counter in one process, time.time across processes). Jain index "
        "over per-worker acquisition counts. Per-acquisition costs are client-side "
        "(round trips, CPU) and server-side (commands, EVALSHA/EVAL)."
    )
    out.append("")
    contended_rows = []
    for key in _keys(summary, "contended"):
        for lib in _present(summary, key):
            e = summary[key][lib]
            contended_rows.append(
                _error(e, 11)
                or [
                    _label(key),
                    LIBS[lib],
                    fmt_num(e.get("throughput")),
                    fmt_time(e.get("handoff_p50")),
                    fmt_time(e.get("handoff_p99")),
                    fmt_time(e.get("worst_wait")),
                    fmt_num(e.get("jain"), 3),
                    fmt_time(e.get("cpu_per_acq")),
                    fmt_num(e.get("round_trips"), 2),
                    fmt_num(e.get("commands"), 2),
                    fmt_num(e.get("scripts"), 2),
                ]
            )
    out += _table(
        [
            "workers",
            "library",
            "acq/s",
            "handoff p50",
            "handoff p99",
            "worst wait",
            "Jain",
            "CPU/acq",
            "round trips/acq",
            "cmds/acq",
            "scripts/acq",
        ],
        contended_rows,
    )

    out += ["## 3. Semaphore (count=4, 32 workers in one process)", ""]
    semaphore_rows = []
    for key in _keys(summary, "semaphore"):
        for lib in _present(summary, key):
            e = summary[key][lib]
            semaphore_rows.append(
                _error(e, 9)
                or [
                    key.rsplit("=", 1)[1] + " ms",
                    LIBS[lib],
                    fmt_num(e.get("throughput")),
                    fmt_time(e.get("wait_p50")),
                    fmt_time(e.get("wait_p99")),
                    fmt_time(e.get("worst_wait")),
                    fmt_num(e.get("jain"), 3),
                    fmt_time(e.get("cpu_per_acq")),
                    fmt_num(e.get("round_trips"), 2),
                ]
            )
    out += _table(
        [
            "critical section",
            "library",
            "acq/s",
            "wait p50",
            "wait p99",
            "worst wait",
            "Jain",
            "CPU/acq",
            "round trips/acq",
        ],
        semaphore_rows,
    )

    out += [f"## 4. Cost while waiting (one holder holds {data['plan']['hold']:g} s)", ""]
    out.append(
        "Commands/s: all server commands (INFO commandstats) between 0.5 s after the "
        "waiters started and the release. Connections: CLIENT LIST entries of the waiters' "
        "client. Drain: from the holder's release until every waiter has acquired and released."
    )
    out.append("")
    waiting_rows = []
    for key in _keys(summary, "waiting"):
        for lib in _present(summary, key):
            e = summary[key][lib]
            waiting_rows.append(
                _error(e, 8)
                or [
                    key.rsplit("=", 1)[1],
                    LIBS[lib],
                    fmt_num(e.get("commands_per_s"), 1),
                    fmt_num(e.get("round_trips_per_s"), 1),
                    fmt_num(e.get("connections")),
                    _drain(e, "drain_last_acquire"),
                    _drain(e, "drain"),
                    f"{fmt_num(100 * e['cpu_per_s'], 1)} %" if finite(e.get("cpu_per_s")) else NA,
                ]
            )
    out += _table(
        [
            "waiters",
            "library",
            "commands/s",
            "round trips/s",
            "connections",
            "last acquire",
            "drain",
            "client CPU",
        ],
        waiting_rows,
    )
    idle_rows = []
    for key in _keys(summary, "idle"):
        for lib in _present(summary, key):
            e = summary[key][lib]
            idle_rows.append(
                _error(e, 5)
                or [
                    key.rsplit("=", 1)[1],
                    LIBS[lib],
                    fmt_num(e.get("commands_per_s")),
                    fmt_num(e.get("connections")),
                    fmt_num(e.get("tasks")),
                ]
            )
    if idle_rows:
        out += [
            "### Idle semaphores",
            "",
            "Semaphores on one client with lease_ttl 3 s, a fifth of them used once, then "
            "idle. Commands/s: every server command (script calls included); tasks: "
            "background tasks the library keeps.",
            "",
        ]
        out += _table(["semaphores", "library", "commands/s", "connections", "tasks"], idle_rows)

    out += _instance_table(
        summary,
        "instances",
        "### Many instances and semaphores",
        "Each semaphore (count=1) has one holder (on its own client) and the given "
        "number of waiter instances, one per waiting task, all on one client: ours on a "
        "default-sized pool (100), 2.0.0 on the pool it needs. Connections: CLIENT LIST "
        "entries of the waiters' client once every waiter is queued. Drain: from the "
        "holders' release until every waiter has acquired and released.",
    )
    out += _instance_table(
        summary,
        "event_instances",
        "### Many waiting event instances",
        "Each event has the given number of waiting instances, one per waiting task, "
        "all on one client: ours on a default-sized pool (100), 2.0.0 on the pool it "
        "needs. Connections: CLIENT LIST entries of the waiters' client once every "
        "waiter is queued. Drain: from the first of the setter's set() calls (one per "
        "waiter, from another client) until every waiter has returned.",
    )

    permit_rows = []
    for key in _keys(summary, "permits"):
        for lib in _present(summary, key):
            e = summary[key][lib]
            quarters = ", ".join(fmt_time(q) for q in e.get("quarters") or [])
            permit_rows.append(
                _error(e, 5)
                or [
                    _label(key),
                    LIBS[lib],
                    quarters or NA,
                    fmt_num(e.get("growth"), 2),
                    fmt_time(e.get("total")),
                ]
            )
    if permit_rows:
        out += [
            "### Many permits",
            "",
            "Every permit of one semaphore taken one after another: ours in one instance, "
            "2.0.0 in one instance per permit (an instance of 2.0.0 holds one).",
            "",
        ]
        out += _table(["case", "library", "time per quarter", "last / first", "total"], permit_rows)

    out += ["## 5. Crash recovery (holder SIGKILLed)", ""]
    crash_rows = []
    for key in _keys(summary, "crash"):
        ttl = float(key.split("=")[1])
        for lib in _present(summary, key):
            e = summary[key][lib]
            values = ", ".join(f"{v:.2f}" for v in e.get("recoveries", []))
            crash_rows.append(
                [f"{ttl:g} s", LIBS[lib], _crash_text(e), values or NA, f"{ttl + ttl / 3:.2f} s"]
            )
    out += _table(["lease_ttl", "library", "recovery", "runs (s)", "target"], crash_rows)

    out += ["## 6. Client CPU per acquisition (contended)", ""]
    keys = _keys(summary, "contended") + _keys(summary, "semaphore")
    libs = [lib for lib in LIBS if any(lib in summary[k] for k in keys)]
    cpu_rows = [
        [_label(k)] + [fmt_time(_metric(summary, k, lib, "cpu_per_acq")) for lib in libs]
        for k in keys
    ]
    out += _table(["case"] + [LIBS[lib] for lib in libs], cpu_rows)
    return "\n".join(out)


# -- console ------------------------------------------------------------------------------------


def console(data: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    summary: dict[str, Any] = data["summary"]
    floor: dict[str, Any] = data.get("floor") or {}
    ping = float(floor["ping_p50"]) if finite(floor.get("ping_p50")) else math.nan
    lines = ["", "Ratios of ours vs the floor and vs redsync 2.0.0:"]
    p50 = _metric(summary, "uncontended", "ours", "p50")
    if p50 is not None and finite(ping):
        lines.append(
            f"  uncontended p50 {fmt_time(p50)} = {p50 / ping:.2f} PING round trips, "
            f"{fmt_ratio(ratio(p50, _metric(summary, 'uncontended', 'rs2', 'p50')))} 2.0.0"
        )
    for key in _keys(summary, "contended"):
        hand = _metric(summary, key, "ours", "handoff_p50")
        thr = _metric(summary, key, "ours", "throughput")
        rs2_thr = _metric(summary, key, "rs2", "throughput")
        rs2_hand = _metric(summary, key, "rs2", "handoff_p50")
        pings = f"{hand / ping:.2f} PING RTTs, " if hand is not None and finite(ping) else ""
        lines.append(
            f"  {_label(key)}: throughput {fmt_ratio(ratio(thr, rs2_thr))} 2.0.0; "
            f"handoff p50 {fmt_time(hand)} = {pings}{fmt_ratio(ratio(hand, rs2_hand))} 2.0.0"
        )
    lines += ["", "Targets:"]
    for r in rows:
        mark = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        lines.append(f"  [{mark:>6}] {r['target']}: {r['ours']} ({fmt_ratio(r['ratio'])})")
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------


STYLE: dict[str, dict[str, Any]] = {
    "ours": {
        "marker": "o",
        "markersize": 10,
        "markerfacecolor": "none",
        "linewidth": 2.2,
        "zorder": 5,
    },
    "lock": {"marker": "P", "markersize": 8, "zorder": 4},
    "rs2": {"marker": "s", "markersize": 5, "zorder": 4},
    "redis_py_lock": {"marker": "^", "markersize": 6},
    "pottery": {"marker": "D", "markersize": 5},
    "redis_lock": {"marker": "v", "markersize": 6},
}


def plots(data: dict[str, Any], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    summary: dict[str, Any] = data["summary"]
    written: list[Path] = []

    in_process = [k for k in _keys(summary, "contended") if "tasks=" in k]
    if in_process:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lib in LIBS:
            points = [
                (int(k.split("=")[1]) - 1, _metric(summary, k, lib, "handoff_p50"))
                for k in in_process
            ]
            points = [(x, y * 1e3) for x, y in points if y is not None]
            if points:
                line = ax.plot(*zip(*points), label=LIBS[lib], **STYLE[lib])[0]
                p99 = [
                    (int(k.split("=")[1]) - 1, _metric(summary, k, lib, "handoff_p99"))
                    for k in in_process
                ]
                p99 = [(x, y * 1e3) for x, y in p99 if y is not None]
                if p99:
                    ax.plot(*zip(*p99), linestyle="--", color=line.get_color(), alpha=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("waiting tasks (tasks in one process - 1)")
        ax.set_ylabel("hand-off latency, ms (solid p50, dashed p99)")
        ax.set_title("Mutex hand-off latency vs number of waiters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "handoff_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    waiting = _keys(summary, "waiting")
    if waiting:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for lib in LIBS:
            points = [
                (int(k.split("=")[1]), _metric(summary, k, lib, "commands_per_s")) for k in waiting
            ]
            points = [(x, y) for x, y in points if y is not None and not math.isnan(y)]
            if points:
                ax.plot(*zip(*points), label=LIBS[lib], **STYLE[lib])
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=-0.1)
        ax.set_xlabel("waiting tasks in one process")
        ax.set_ylabel("Redis commands/s while waiting")
        ax.set_title(f"Cost of waiting (one holder holds {data['plan']['hold']:g} s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "waiting_commands.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
