"""Append-only ledgers: one line per record, written so that a SIGKILL loses nothing.

Each process owns one file.  Every record is one ``os.write`` on an
``O_APPEND`` descriptor (no user-space buffer), so a record written before a
``SIGKILL`` is in the file.  Timestamps are ``time.monotonic_ns()``:
``CLOCK_MONOTONIC`` is system-wide on Linux, so times from different
processes compare directly.

Line format (space separated, the last field free text without newlines)::

    <monotonic ns> <kind> <task> <arg>

Record kinds written by workers:

=========  ==========================================================
``START``  process started (arg: pid)
``SEM``    semaphore attached (arg: instance id)
``EVQ``    the event's inbox key prefix, when it can be found (arg)
``A``      acquire begins (arg: timeout, ``None`` or seconds)
``ENTER``  acquire returned: the task holds a permit
``EXIT``   the task stops using the permit (written before release)
``R``      release returned
``RL``     release raised RedisSemaphoreLeaseLostError
``RN``     release raised RedisSemaphoreNotAcquiredError
``T``      acquire timed out (arg: the timeout)
``E``      another error (arg: phase and exception)
``C``      the canceller cancelled a task (arg: the phase it was in)
``CS``     a task cancelled at shutdown (arg: phase)
``L``      a lease-lost callback ran (arg: tasks holding at that moment)
``NOTICE`` a hand-off notice was dropped or delayed on purpose (arg)
``SB``     event.set() begins (arg: set id)
``SO``     event.set() returned (arg: set id)
``SE``     event.set() raised (arg: set id and exception)
``WB``     event.wait() begins (arg: timeout)
``WO``     event.wait() returned: one signal delivered
``WT``     event.wait() timed out
``WE``     event.wait() raised another error
``STOP``   clean exit
=========  ==========================================================

The runner writes its own ledger with ``SPAWN``, ``KILL``, ``GONE``
(a worker exited or was reaped: arg ``worker rc``) and ``FAULT`` /
``FAULT-END`` records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Ledger", "Record", "Tail", "read_ledger"]


class Ledger:
    """One process's append-only ledger file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def rec(self, kind: str, task: str = "-", arg: object = "") -> int:
        """Write one record now; return its timestamp (ns)."""
        now = time.monotonic_ns()
        text = str(arg).replace("\n", " ").replace("\r", " ")
        os.write(self._fd, f"{now} {kind} {task} {text}\n".encode())
        return now

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class Record:
    t: int
    kind: str
    task: str
    arg: str


def _parse(line: str) -> Record | None:
    parts = line.rstrip("\n").split(" ", 3)
    if len(parts) < 3:
        return None
    try:
        t = int(parts[0])
    except ValueError:
        return None
    return Record(t, parts[1], parts[2], parts[3] if len(parts) > 3 else "")


def read_ledger(path: str | os.PathLike[str]) -> list[Record]:
    """Every complete record of a ledger (a torn last line is skipped)."""
    out: list[Record] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            rec = _parse(line)
            if rec is not None:
                out.append(rec)
    return out


class Tail:
    """Reads the records appended to a ledger since the last call."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._partial = b""

    def new_records(self) -> Iterator[Record]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            rec = _parse(raw.decode("utf-8", errors="replace"))
            if rec is not None:
                yield rec
