"""Judging a chaos run from the ledgers alone, independently of the library.

Holds.  Each ``ENTER``/``EXIT`` pair of one worker task is a hold interval.
``ENTER`` is written after ``acquire()`` returned and ``EXIT`` before
``release()`` was called, so a recorded interval lies inside the time the
permit was really held; overlapping recorded intervals therefore overlap in
reality too.  An interval left open by a killed worker ends when the runner
reaped the process (``KILL`` / ``GONE`` in the runner's ledger): the dead
process did nothing after that, and its permit could only be handed out
again after its lease ran out, later still.  A sweep over all intervals
gives the largest number of simultaneous holders; every stretch of time with
more than ``count`` holders is one over-admission episode.

The lock.  ``LENTER <fence>`` / ``LEXIT`` pairs are the lock's hold
intervals, swept the same way with a count of 1 (its episodes are marked
``"primitive": "lock"``).  Fences must rise in hold order: a hold that
begins after another has ended must carry a greater fence (overlapping holds
are over-admissions and reported as such).

Recovery times.

* Killed holder: from the reaping of a worker that held a permit until its
  semaphore instance has no registration left in the ``holders`` sorted set,
  i.e. until a survivor's reclaim has put its permits back into the pool
  (polled by the runner every 100 ms, ``RECOV`` records).  The library
  promises at most ``lease_ttl`` plus one renewal period (``1.4 x
  lease_ttl``).  Kills followed by a restart/failover before the reclaim are
  reported apart: the big fault wipes or moves the registration.
* Restart / failover: from the start of the fault until the first ``ENTER``
  recorded after the fault finished.

Event.  ``SO`` counts sets that returned, ``SB`` all sets begun (a set that
raised, was cancelled or whose process died may or may not have happened).
Delivered signals are ``WO`` records plus the signals drained after the run;
``set OK <= delivered <= sets begun`` must hold.  Signals sitting in the inbox
list of a killed worker are counted separately (a signal moved into a dying
process's inbox, or delivered without its ``WO`` being written).
"""

from __future__ import annotations

import bisect
import heapq
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ledger import Record, read_ledger

__all__ = ["Interval", "Observation", "observe", "percentile"]

TINY_MAX = 0.05
RUNNER_LEDGER = "runner.log"


@dataclass
class Interval:
    worker: str
    task: str
    enter: int
    exit: int
    closed_by: str  # "EXIT", "KILL" or "GONE"
    #: The lock's fence of this hold (0 for the semaphore's).
    fence: int = 0
    #: For the read-write lock: "read" or "write".
    side: str = ""


@dataclass
class Observation:
    counters: Counter[str] = field(default_factory=Counter)
    cancels: Counter[str] = field(default_factory=Counter)
    #: Hand-off notices dropped or delayed on purpose, by what was done.
    notices: Counter[str] = field(default_factory=Counter)
    timeouts: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    intervals: int = 0
    max_holders: int = 0
    over_admissions: int = 0
    episodes: list[dict[str, Any]] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    kill_recoveries: list[float] = field(default_factory=list)
    kill_recoveries_confounded: int = 0
    #: kills of a worker that held permits: a task between ENTER and EXIT, or
    #: tokens in the dead instance's slots right after the kill
    kills_of_holders: int = 0
    kills_of_ledger_holders: int = 0
    tokens_of_killed: int = 0
    kill_not_recovered: list[str] = field(default_factory=list)
    big_recoveries: list[float] = field(default_factory=list)
    big_not_recovered: list[str] = field(default_factory=list)
    #: event instance ids of workers that were killed / that exited
    event_instances_killed: set[str] = field(default_factory=set)
    event_instances_known: bool = True
    storm_start: int = 0
    first_error_samples: list[str] = field(default_factory=list)
    lock_intervals: int = 0
    lock_max_holders: int = 0
    #: Holds of the lock whose fence was not above that of a hold that ended before.
    fence_violations: list[str] = field(default_factory=list)
    rw_reads: int = 0
    rw_writes: int = 0
    rw_max_writers: int = 0
    #: Episodes with a read beside a writer, or two writers.
    rw_overlaps: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _classify_timeout(arg: str) -> str:
    try:
        value = float(arg)
    except ValueError:
        return "none"
    if value <= 0:
        return "zero"
    if value <= TINY_MAX:
        return "tiny"
    return "moderate"


def observe(ledger_dir: str | os.PathLike[str], count: int, lease_ttl: float) -> Observation:
    base = Path(ledger_dir)
    obs = Observation()
    runner = read_ledger(base / RUNNER_LEDGER)
    ends: dict[str, tuple[int, str]] = {}  # worker -> (time, "KILL"/"GONE")
    kills: list[Record] = []
    recov: dict[str, Record] = {}
    dead_tokens: dict[str, int] = {}
    faults: list[Record] = []
    big: list[tuple[Record, Record | None]] = []
    workers_stopped: int | None = None
    open_big: dict[str, Record] = {}
    for rec in runner:
        if rec.kind in ("KILL", "GONE") and rec.task not in ends:
            ends[rec.task] = (rec.t, rec.kind)
        if rec.kind == "KILL" and rec.arg == "fault":
            kills.append(rec)
        elif rec.kind in ("RECOV", "NORECOV"):
            recov[rec.task] = rec
        elif rec.kind == "DEADTOKENS" and rec.arg.isdigit():
            dead_tokens[rec.task] = int(rec.arg)
        elif rec.kind == "FAULT":
            faults.append(rec)
            if rec.task in ("restart", "failover"):
                open_big[rec.task] = rec
        elif rec.kind == "FAULT-END" and rec.task in open_big:
            big.append((open_big.pop(rec.task), rec))
        elif rec.kind == "PHASE" and rec.task == "storm-start":
            obs.storm_start = rec.t
        elif rec.kind == "PHASE" and rec.task == "workers-stopped":
            workers_stopped = rec.t
    for unfinished in open_big.values():
        big.append((unfinished, None))

    intervals: list[Interval] = []
    lock_intervals: list[Interval] = []
    #: The read-write lock's holds: "Q" reads, "X" writes.
    rw_intervals: list[Interval] = []
    enters: list[int] = []
    lost_times: list[tuple[int, str]] = []
    for path in sorted(base.glob("w*.log")):
        worker = path.stem
        records = read_ledger(path)
        opened: dict[str, int] = {}
        locked: dict[str, tuple[int, int]] = {}
        rw_open: dict[str, tuple[int, int, str]] = {}
        end = ends.get(worker)
        event_instance: str | None = None
        for rec in records:
            kind = rec.kind
            obs.counters[kind] += 1
            if kind == "ENTER":
                if rec.task in opened:
                    obs.anomalies.append(f"{worker} {rec.task}: ENTER while already holding")
                opened[rec.task] = rec.t
                enters.append(rec.t)
            elif kind == "EXIT":
                entered = opened.pop(rec.task, None)
                if entered is None:
                    obs.anomalies.append(f"{worker} {rec.task}: EXIT without ENTER")
                else:
                    intervals.append(Interval(worker, rec.task, entered, rec.t, "EXIT"))
            elif kind == "LENTER":
                if rec.task in locked:
                    obs.anomalies.append(f"{worker} {rec.task}: LENTER while already holding")
                locked[rec.task] = (rec.t, int(rec.arg) if rec.arg.isdigit() else 0)
                enters.append(rec.t)
            elif kind == "LEXIT":
                began = locked.pop(rec.task, None)
                if began is None:
                    obs.anomalies.append(f"{worker} {rec.task}: LEXIT without LENTER")
                else:
                    lock_intervals.append(
                        Interval(worker, rec.task, began[0], rec.t, "EXIT", began[1])
                    )
            elif kind in ("QENTER", "XENTER"):
                if rec.task in rw_open:
                    obs.anomalies.append(f"{worker} {rec.task}: {kind} while already holding")
                side = "read" if kind == "QENTER" else "write"
                fence = int(rec.arg) if rec.arg.isdigit() else 0
                rw_open[rec.task] = (rec.t, fence, side)
                enters.append(rec.t)
            elif kind in ("QEXIT", "XEXIT"):
                began_rw = rw_open.pop(rec.task, None)
                if began_rw is None:
                    obs.anomalies.append(f"{worker} {rec.task}: {kind} without its ENTER")
                else:
                    t0, fence, side = began_rw
                    rw_intervals.append(Interval(worker, rec.task, t0, rec.t, "EXIT", fence, side))
            elif kind == "A":
                obs.attempts[_classify_timeout(rec.arg)] += 1
            elif kind == "T":
                obs.timeouts[_classify_timeout(rec.arg)] += 1
            elif kind == "C":
                obs.cancels[rec.arg or "?"] += 1
            elif kind == "NOTICE":
                obs.notices[rec.arg.split(" ", 1)[0]] += 1
            elif kind == "L":
                lost_times.append((rec.t, f"{worker} holding {rec.arg}"))
            elif kind == "EVQ":
                event_instance = rec.arg
            elif kind in ("E", "WE", "SE"):
                what = rec.arg.split(" ", 1)
                key = what[1].split("(", 1)[0] if len(what) > 1 else what[0]
                obs.errors[f"{kind} {key}"] += 1
                if len(obs.first_error_samples) < 12:
                    obs.first_error_samples.append(f"{worker} {rec.task} {kind} {rec.arg}")
            elif kind == "RN":
                obs.anomalies.append(f"{worker} {rec.task}: release() said not acquired")
        if end is None:
            last = records[-1].t if records else 0
            if opened:
                obs.anomalies.append(f"{worker}: no exit recorded; open holds end at last record")
            end = (last, "GONE")
        for task, entered in opened.items():
            intervals.append(Interval(worker, task, entered, max(entered, end[0]), end[1]))
        for task, (entered, fence) in locked.items():
            lock_intervals.append(
                Interval(worker, task, entered, max(entered, end[0]), end[1], fence)
            )
        for task, (entered, fence, side) in rw_open.items():
            rw_intervals.append(
                Interval(worker, task, entered, max(entered, end[0]), end[1], fence, side)
            )
        if event_instance is None:
            if any(r.kind == "SEM" for r in records):
                obs.event_instances_known = False
        elif end[1] == "KILL":
            obs.event_instances_killed.add(event_instance)

    obs.intervals = len(intervals)
    _sweep(obs, intervals, count, faults, lost_times, lease_ttl)
    _observe_lock(obs, lock_intervals, faults, lost_times, lease_ttl)
    _observe_rwlock(obs, rw_intervals, faults, lost_times, lease_ttl)

    # -- recovery after killed holders --
    by_worker: dict[str, list[Interval]] = defaultdict(list)
    for iv in intervals:
        by_worker[iv.worker].append(iv)
    big_times = [(b.t, e.t if e else b.t) for b, e in big]
    for kill in kills:
        held = [iv for iv in by_worker.get(kill.task, []) if iv.closed_by == "KILL"]
        tokens = dead_tokens.get(kill.task, 0)
        obs.tokens_of_killed += tokens
        if held:
            obs.kills_of_ledger_holders += 1
        if not held and not tokens:
            continue
        obs.kills_of_holders += 1
        seen = recov.get(kill.task)
        if seen is None or seen.kind == "NORECOV":
            # A big fault in between wipes or moves the registration.
            if any(kill.t <= b <= kill.t + lease_ttl * 3e9 for b, _ in big_times):
                obs.kill_recoveries_confounded += 1
            else:
                obs.kill_not_recovered.append(f"{kill.task} ({seen.arg if seen else 'no poll'})")
            continue
        if any(kill.t <= b <= seen.t for b, _ in big_times):
            obs.kill_recoveries_confounded += 1
            continue
        obs.kill_recoveries.append((seen.t - kill.t) / 1e9)

    # -- recovery after restarts / failovers --
    enters.sort()
    for fault, fault_end in big:
        if fault_end is None:
            obs.big_not_recovered.append(f"{fault.task} at {fault.t} never finished")
            continue
        i = bisect.bisect_right(enters, fault_end.t)
        if i >= len(enters):
            # Only a violation when the workers had ample time (2 x lease_ttl) to recover.
            if workers_stopped is None or workers_stopped - fault_end.t > lease_ttl * 2e9:
                obs.big_not_recovered.append(f"{fault.task}: no ENTER after it")
        else:
            obs.big_recoveries.append((enters[i] - fault.t) / 1e9)
    return obs


def _observe_lock(
    obs: Observation,
    intervals: list[Interval],
    faults: list[Record],
    lost_times: list[tuple[int, str]],
    lease_ttl: float,
) -> None:
    """The lock's holds: at most one at a time, and fences rising in hold order."""
    obs.lock_intervals = len(intervals)
    lock = Observation(storm_start=obs.storm_start)
    _sweep(lock, intervals, 1, faults, lost_times, lease_ttl)
    obs.lock_max_holders = lock.max_holders
    obs.over_admissions += lock.over_admissions
    for episode in lock.episodes:
        episode["primitive"] = "lock"
    obs.episodes.extend(lock.episodes)
    obs.anomalies.extend(lock.anomalies)
    _fence_order(obs, intervals, "lock")


def _fence_order(obs: Observation, intervals: list[Interval], what: str) -> None:
    """Every hold must carry a fence above those of all holds that ended before it."""
    ended: list[tuple[int, int]] = []  # (exit, fence), a heap by exit
    highest = 0
    for iv in sorted(intervals, key=lambda iv: iv.enter):
        while ended and ended[0][0] <= iv.enter:
            highest = max(highest, heapq.heappop(ended)[1])
        if iv.fence <= highest:
            obs.fence_violations.append(
                f"{what}: {iv.worker} {iv.task}: fence {iv.fence} after a hold with fence {highest}"
            )
        heapq.heappush(ended, (iv.exit, iv.fence))


def _observe_rwlock(
    obs: Observation,
    intervals: list[Interval],
    faults: list[Record],
    lost_times: list[tuple[int, str]],
    lease_ttl: float,
) -> None:
    """The read-write lock's holds: one writer at a time, no read beside a
    writer, and writer fences rising in hold order."""
    writes = [iv for iv in intervals if iv.side == "write"]
    obs.rw_reads = len(intervals) - len(writes)
    obs.rw_writes = len(writes)
    rw = Observation(storm_start=obs.storm_start)

    def crowded(live: set[int]) -> bool:
        writers = sum(1 for idx in live if intervals[idx].side == "write")
        return writers > 1 or (writers == 1 and len(live) > 1)

    _sweep(rw, intervals, 1, faults, lost_times, lease_ttl, crowded)
    obs.rw_max_writers = _max_overlap(writes)
    obs.rw_overlaps = rw.over_admissions
    obs.over_admissions += rw.over_admissions
    for episode in rw.episodes:
        episode["primitive"] = "rwlock"
    obs.episodes.extend(rw.episodes)
    obs.anomalies.extend(rw.anomalies)
    _fence_order(obs, writes, "rwlock writer")


def _max_overlap(intervals: list[Interval]) -> int:
    events = sorted(
        [(iv.enter, 1) for iv in intervals] + [(iv.exit, -1) for iv in intervals],
        key=lambda e: (e[0], e[1]),
    )
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def _sweep(
    obs: Observation,
    intervals: list[Interval],
    count: int,
    faults: list[Record],
    lost_times: list[tuple[int, str]],
    lease_ttl: float,
    crowded: Callable[[set[int]], bool] | None = None,
) -> None:
    """Sweep the holds in time order; an episode lasts while more than ``count``
    are held at once (or while ``crowded(live)`` says the holds clash)."""
    events: list[tuple[int, int, int]] = []
    for idx, iv in enumerate(intervals):
        events.append((iv.enter, 1, idx))
        events.append((iv.exit, -1, idx))
    # Exits before entries at the same instant: never report a touch as an overlap.
    events.sort(key=lambda e: (e[0], e[1]))
    live: set[int] = set()
    episode: dict[str, Any] | None = None
    involved: set[int] = set()
    t0 = obs.storm_start
    for t, delta, idx in events:
        if delta > 0:
            live.add(idx)
        else:
            live.discard(idx)
        n = len(live)
        obs.max_holders = max(obs.max_holders, n)
        if (n > count) if crowded is None else crowded(live):
            if episode is None:
                episode = {"start_ns": t, "peak": n}
                involved = set(live)
            episode["peak"] = max(episode["peak"], n)
            involved |= live
        elif episode is not None:
            episode["end_ns"] = t
            _describe_episode(obs, episode, involved, intervals, faults, lost_times, lease_ttl, t0)
            episode = None
    if episode is not None:
        episode["end_ns"] = episode["start_ns"]
        _describe_episode(obs, episode, involved, intervals, faults, lost_times, lease_ttl, t0)


def _describe_episode(
    obs: Observation,
    episode: dict[str, Any],
    involved: set[int],
    intervals: list[Interval],
    faults: list[Record],
    lost_times: list[tuple[int, str]],
    lease_ttl: float,
    t0: int,
) -> None:
    obs.over_admissions += 1
    start, end = episode["start_ns"], episode["end_ns"]

    def rel(t: int) -> float:
        return round((t - t0) / 1e9, 4)

    window = int(lease_ttl * 2e9)
    episode["start_s"] = rel(start)
    episode["duration_ms"] = round((end - start) / 1e6, 3)
    episode["holds"] = [
        {
            "worker": intervals[i].worker,
            "task": intervals[i].task,
            "enter_s": rel(intervals[i].enter),
            "exit_s": rel(intervals[i].exit),
            "closed_by": intervals[i].closed_by,
        }
        for i in sorted(involved, key=lambda i: intervals[i].enter)
    ]
    episode["faults_before"] = [
        f"{rel(f.t)}s {f.task} {f.arg}" for f in faults if start - window <= f.t <= end
    ][-12:]
    episode["leases_lost_near"] = [
        f"{rel(t)}s {what}" for t, what in lost_times if start - window <= t <= end + window
    ]
    if len(obs.episodes) < 50:
        obs.episodes.append(episode)
    else:
        obs.anomalies.append(f"over-admission at {episode['start_s']}s (details omitted)")


def summarize_recoveries(values: list[float]) -> dict[str, float | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }
