"""The chaos observer's lock and read-write lock checks (``devtools.chaos.observer``),
on made-up holds."""

from __future__ import annotations

from devtools.chaos.observer import Interval, Observation, _observe_lock, _observe_rwlock


def _holds(*spans: tuple[int, int, int]) -> list[Interval]:
    return [Interval("w1", f"l{i}", a, b, "EXIT", fence) for i, (a, b, fence) in enumerate(spans)]


def test_rising_fences_in_hold_order_pass() -> None:
    obs = Observation()
    _observe_lock(obs, _holds((0, 10, 5), (11, 20, 7), (21, 30, 9)), [], [], 1.0)
    assert obs.fence_violations == []
    assert (obs.lock_intervals, obs.lock_max_holders, obs.over_admissions) == (3, 1, 0)


def test_a_fence_not_above_an_earlier_holds_is_a_violation() -> None:
    obs = Observation()
    _observe_lock(obs, _holds((0, 10, 5), (11, 20, 9), (21, 30, 9), (31, 40, 8)), [], [], 1.0)
    assert len(obs.fence_violations) == 2, obs.fence_violations
    assert "fence 9 after a hold with fence 9" in obs.fence_violations[0]


def test_overlapping_lock_holds_are_over_admissions_of_the_lock() -> None:
    obs = Observation()
    _observe_lock(obs, _holds((0, 10, 5), (5, 15, 6)), [], [], 1.0)
    assert obs.lock_max_holders == 2 and obs.over_admissions == 1
    assert obs.episodes[0]["primitive"] == "lock"
    # Overlapping holds are not compared for fence order: the over-admission says it.
    assert obs.fence_violations == []


def _rw(*spans: tuple[int, int, str, int]) -> list[Interval]:
    return [
        Interval("w1", f"r{i}", a, b, "EXIT", fence, side)
        for i, (a, b, side, fence) in enumerate(spans)
    ]


def test_readers_together_and_writers_alone_pass() -> None:
    obs = Observation()
    holds = _rw(
        (0, 10, "read", 0), (2, 12, "read", 0), (13, 20, "write", 5), (21, 30, "read", 0),
        (31, 40, "write", 8),
    )  # fmt: skip
    _observe_rwlock(obs, holds, [], [], 1.0)
    assert (obs.rw_reads, obs.rw_writes, obs.rw_max_writers, obs.rw_overlaps) == (3, 2, 1, 0)
    assert obs.fence_violations == [] and obs.over_admissions == 0


def test_a_read_beside_a_writer_and_two_writers_are_clashes() -> None:
    obs = Observation()
    _observe_rwlock(obs, _rw((0, 10, "write", 5), (5, 8, "read", 0)), [], [], 1.0)
    assert obs.rw_overlaps == 1 and obs.episodes[0]["primitive"] == "rwlock"
    obs = Observation()
    _observe_rwlock(obs, _rw((0, 10, "write", 5), (9, 20, "write", 6)), [], [], 1.0)
    assert obs.rw_overlaps == 1 and obs.rw_max_writers == 2


def test_writer_fences_must_rise() -> None:
    obs = Observation()
    _observe_rwlock(obs, _rw((0, 10, "write", 5), (11, 20, "write", 4)), [], [], 1.0)
    assert len(obs.fence_violations) == 1 and "rwlock writer" in obs.fence_violations[0]
