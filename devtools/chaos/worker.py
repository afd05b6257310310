"""A chaos worker process: many tasks hammering one RedisSemaphore and one RedisEvent.

Started by the runner as ``python -m devtools.chaos.worker SPEC_JSON`` from the
repository root.  Every observable step goes to the worker's own ledger (see
:mod:`devtools.chaos.ledger`) before or after the library call it describes, so
that the observer can check the library from the outside:

* ``ENTER`` is written right after ``acquire()`` returns and ``EXIT`` right
  before ``release()`` is called (or ``async with`` exits), so a recorded
  hold lies inside the time the permit is really held.
* ``SO`` follows a ``set()`` that returned; ``WO`` a ``wait()`` that returned.
* ``LENTER <fence>`` / ``LEXIT`` are the same for the ``RedisLock`` (named
  like the semaphore, so its keys share the semaphore's slot and node);
  ``QENTER`` / ``QEXIT`` for a read of the ``RedisReadWriteLock`` of that
  name, ``XENTER <fence>`` / ``XEXIT`` for its writer.

Tasks: ``sem_tasks`` semaphore loops (random timeouts: none, tiny, zero,
moderate; ``async with`` or explicit acquire/release; holds of 0 to
``hold_max`` seconds), ``lock_tasks`` lock loops alike, ``rw_tasks``
read-write lock loops (every third one a writer), ``setters`` and
``waiters`` for the event, and one
canceller that cancels random tasks at random moments (recording the phase
each was in) and lets their supervisor start a fresh one.

Notices: with ``notice_faults`` (the default), one in twenty hand-off
notices the semaphore receives is dropped and one in ten delayed by up to
half a second (``NOTICE`` ledger lines; the others are recorded as delivered,
with the port of the server the listener reads), so permits must also arrive
through the renewal that reports them, and late notices must do no harm.

SIGTERM: stop looping, give tasks ``stop_grace`` seconds to finish their
current step, cancel the rest, close the primitives and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import REPO_ROOT as _REPO_ROOT  # noqa: F401
from .conn import close_client, make_client, replica_kwargs
from .ledger import Ledger

TINY_MAX = 0.05


@dataclass
class TaskState:
    name: str
    role: str  # "sem", "lock", "wait" or "set"
    phase: str = "idle"
    holding: bool = False


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL us when the runner dies; exit if it already has."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(3)


def _event_instance(event: Any) -> str | None:
    """Best effort: the instance id in this event's per-lane key names (internal detail).

    Lets the audit tell the lists of killed workers from those of clean ones.
    """
    try:
        key = str(event._dispatcher.lanes[0].key)  # "<prefix>:inbox:<instance>.0"
    except Exception:
        return None
    tail = key.rsplit(":", 1)[-1]
    return tail.rsplit(".", 1)[0] if "." in tail else None


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.id: str = spec["worker"]
        self.ledger = Ledger(spec["ledger"])
        self.rng = random.Random(spec["seed"])
        self.stopping = False
        self.current: dict[str, tuple[TaskState, asyncio.Task[None]]] = {}
        self.sem: Any = None
        self.lock: Any = None
        self.rw: Any = None
        self.event: Any = None
        self.set_seq = 0

    def rec(self, kind: str, task: str = "-", arg: object = "") -> None:
        self.ledger.rec(kind, task, arg)

    def _disturb_notices(self, sem: Any, hook: str = "_pushed") -> None:
        """Lose or delay some hand-off notices (through a primitive's private
        notice hook, looked up when its subscription is made): the
        semaphore's, the lock's and the read-write lock's gate's, and the
        read-write lock's "the last read left"."""
        deliver = getattr(sem, hook, None)
        if deliver is None:
            return
        loop = asyncio.get_running_loop()

        def disturbed(data: str) -> None:
            roll = self.rng.random()
            if roll < 0.05:
                self.rec("NOTICE", "-", f"drop {data}")
            elif roll < 0.15:
                delay = self.rng.uniform(0, 0.5)
                self.rec("NOTICE", "-", f"delay {delay:.3f} {data}")
                loop.call_later(delay, deliver, data)
            else:
                # Which server the listener reads (internal detail): a notice
                # taken from a node that no longer serves the slot is a lead.
                listener = getattr(getattr(sem, "_sub", None), "_listener", None)
                port = getattr(getattr(listener, "_conn", None), "port", None)
                self.rec("NOTICE", "-", f"ok {port} {data}")
                deliver(data)

        setattr(sem, hook, disturbed)

    # -- main ----------------------------------------------------------------

    async def run(self) -> None:
        from redsync import RedisEvent, RedisLock, RedisReadWriteLock, RedisSemaphore

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        watch = asyncio.ensure_future(self._watch_parent(int(self.spec["parent"])))
        self.rec("START", "-", os.getpid())
        spec = self.spec
        client = make_client(
            spec["conn"], name=f"chaos-{self.id}", socket_timeout=spec["socket_timeout"]
        )
        replicas = spec.get("wait_replicas")

        async def attach() -> Any:
            while True:
                try:
                    return await RedisSemaphore.attach(
                        client,
                        spec["sem_name"],
                        timeout=5.0,
                        lease_ttl=spec["lease_ttl"],
                        **replica_kwargs(RedisSemaphore.attach, replicas),
                    )
                except Exception as exc:
                    self.rec("E", "-", f"attach {exc!r}")
                    await asyncio.sleep(0.2)

        attaching = asyncio.ensure_future(attach())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([attaching, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not attaching.done():
            attaching.cancel()
            await asyncio.wait([attaching], timeout=2)
            self.rec("STOP", "-", "before attach")
            os._exit(0)
        self.sem = attaching.result()
        self.rec("SEM", "-", self.sem.instance_id)
        self.sem.add_lease_lost_callback(self._lease_lost)
        self.event = RedisEvent(
            client, spec["event_name"], **replica_kwargs(RedisEvent.__init__, replicas)
        )
        self.lock = RedisLock(
            client,
            spec["sem_name"],
            lease_ttl=spec["lease_ttl"],
            **replica_kwargs(RedisLock.__init__, replicas),
        )
        self.lock.add_lease_lost_callback(self._lock_lost)
        self.rw = RedisReadWriteLock(
            client,
            spec["sem_name"],
            lease_ttl=spec["lease_ttl"],
            **replica_kwargs(RedisReadWriteLock.__init__, replicas),
        )
        self.rw.add_lease_lost_callback(self._rw_lost)
        if spec.get("notice_faults", True):
            self._disturb_notices(self.sem)
            for own in (self.lock, self.rw._gate):
                try:  # made now, so that their notices can be disturbed too
                    self._disturb_notices(await own._semaphore())
                except Exception as exc:
                    self.rec("E", "-", f"lock setup {exc!r}")
            self._disturb_notices(self.rw, "_notice")
        event_instance = _event_instance(self.event)
        if event_instance is not None:
            self.rec("EVQ", "-", event_instance)

        supervisors = [
            *(
                asyncio.ensure_future(self._supervise(f"s{i}", "sem", self._sem_loop))
                for i in range(spec["sem_tasks"])
            ),
            *(
                asyncio.ensure_future(self._supervise(f"l{i}", "lock", self._lock_loop))
                for i in range(spec.get("lock_tasks", 0))
            ),
            *(
                # One writer loop for every two reader loops.
                asyncio.ensure_future(
                    self._supervise(
                        f"r{i}", "rw", self._writer_loop if i % 3 == 0 else self._reader_loop
                    )
                )
                for i in range(spec.get("rw_tasks", 0))
            ),
            *(
                asyncio.ensure_future(self._supervise(f"w{i}", "wait", self._wait_loop))
                for i in range(spec["waiters"])
            ),
            *(
                asyncio.ensure_future(self._supervise(f"p{i}", "set", self._set_loop))
                for i in range(spec["setters"])
            ),
        ]
        canceller = asyncio.ensure_future(self._canceller())
        await stop.wait()

        # -- shutdown --
        self.stopping = True
        canceller.cancel()
        _, pending = await asyncio.wait(supervisors, timeout=spec["stop_grace"])
        if pending:
            for state, task in list(self.current.values()):
                if not task.done():
                    self.rec("CS", state.name, state.phase)
                    task.cancel()
            await asyncio.wait(pending, timeout=3.0)
        self.rec("STOP", "-", "")
        for closing in (
            self.sem.close(),
            self.lock.close(),
            self.rw.close(),
            self.event.close(),
            close_client(client),
        ):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, 3.0)
        watch.cancel()

    async def _watch_parent(self, parent: int) -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    def _lease_lost(self) -> None:
        holding = [s.name for s, _ in self.current.values() if s.holding and s.role == "sem"]
        self.rec("L", "-", ",".join(holding) or "none")

    def _lock_lost(self) -> None:
        holding = [s.name for s, _ in self.current.values() if s.holding and s.role == "lock"]
        self.rec("L", "-", "lock " + (",".join(holding) or "none"))

    def _rw_lost(self) -> None:
        holding = [s.name for s, _ in self.current.values() if s.holding and s.role == "rw"]
        self.rec("L", "-", "rwlock " + (",".join(holding) or "none"))

    async def _supervise(
        self, key: str, role: str, body: Callable[[TaskState], Awaitable[None]]
    ) -> None:
        gen = 0
        while not self.stopping:
            state = TaskState(f"{key}.{gen}", role)
            task = asyncio.ensure_future(body(state))
            self.current[key] = (state, task)
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                self.rec("E", state.name, f"{state.phase} crashed {task.exception()!r}")
            gen += 1

    async def _canceller(self) -> None:
        lo, hi = self.spec["cancel_interval"]
        while True:
            await asyncio.sleep(self.rng.uniform(lo, hi))
            roll = self.rng.random()
            role = (
                "sem" if roll < 0.5 else "lock" if roll < 0.65 else "rw" if roll < 0.8 else "wait"
            )
            role = role if roll < 0.93 else "set"
            choices = [(s, t) for s, t in self.current.values() if s.role == role]
            if not choices:
                continue
            state, task = self.rng.choice(choices)
            if not task.done():
                self.rec("C", state.name, state.phase)
                task.cancel()

    # -- semaphore -------------------------------------------------------------

    def _timeout(self) -> float | None:
        roll = self.rng.random()
        if roll < 0.15:
            return None
        if roll < 0.55:
            return self.rng.uniform(0.001, TINY_MAX)
        if roll < 0.65:
            return 0.0
        return self.rng.uniform(0.2, 2.0)

    async def _sem_loop(self, st: TaskState) -> None:
        from redsync import (
            RedisSemaphoreLeaseLostError,
            RedisSemaphoreNotAcquiredError,
            RedisSemaphoreTimeoutError,
        )

        errors = (RedisSemaphoreTimeoutError, RedisSemaphoreLeaseLostError)
        await self._holder_loop(
            st, self.sem, "", errors, RedisSemaphoreNotAcquiredError, lambda _: self._held_token()
        )

    async def _lock_loop(self, st: TaskState) -> None:
        from redsync import (
            RedisLockLeaseLostError,
            RedisLockNotAcquiredError,
            RedisLockTimeoutError,
        )

        errors = (RedisLockTimeoutError, RedisLockLeaseLostError)
        await self._holder_loop(st, self.lock, "L", errors, RedisLockNotAcquiredError, str)

    async def _reader_loop(self, st: TaskState) -> None:
        from redsync import (
            RedisLockLeaseLostError,
            RedisLockNotAcquiredError,
            RedisLockTimeoutError,
        )

        errors = (RedisLockTimeoutError, RedisLockLeaseLostError)
        await self._holder_loop(
            st, self.rw.reader, "Q", errors, RedisLockNotAcquiredError, lambda _: ""
        )

    async def _writer_loop(self, st: TaskState) -> None:
        from redsync import (
            RedisLockLeaseLostError,
            RedisLockNotAcquiredError,
            RedisLockTimeoutError,
        )

        errors = (RedisLockTimeoutError, RedisLockLeaseLostError)
        await self._holder_loop(st, self.rw.writer, "X", errors, RedisLockNotAcquiredError, str)

    async def _holder_loop(
        self,
        st: TaskState,
        primitive: Any,
        prefix: str,
        errors: tuple[type[Exception], type[Exception]],
        not_acquired: type[Exception],
        enter_arg: Callable[[Any], str],
    ) -> None:
        """Acquire, hold, release ``primitive`` in a loop; ``prefix`` starts every
        record kind ("" for the semaphore, "L" for the lock, "Q" for a read and
        "X" for the writer of the read-write lock); ``enter_arg`` makes
        the ENTER argument of what ``acquire()`` returned."""
        timeout_error, lost_error = errors
        hold_max = self.spec["hold_max"]
        while not self.stopping:
            st.phase = "idle"
            await asyncio.sleep(self.rng.uniform(0, 0.005))
            hold = self.rng.uniform(0, hold_max)
            use_with = self.rng.random() < 0.35
            timeout = None if use_with else self._timeout()
            st.phase = "acquire"
            self.rec(prefix + "A", st.name, timeout)
            try:
                if use_with:
                    async with primitive as got:
                        await self._hold(st, hold, prefix, enter_arg(got))
                        st.phase = "release"
                else:
                    got = await primitive.acquire(timeout=timeout)
                    try:
                        await self._hold(st, hold, prefix, enter_arg(got))
                    finally:
                        st.phase = "release"
                        await primitive.release()
                self.rec(prefix + "R", st.name)
            except timeout_error:
                self.rec(prefix + "T", st.name, timeout)
            except lost_error:
                self.rec(prefix + "RL", st.name)
            except not_acquired as exc:
                self.rec("RN", st.name, repr(exc))
            except Exception as exc:
                self.rec("E", st.name, f"{st.phase} {exc!r}")
                st.phase = "idle"
                await asyncio.sleep(0.05)

    async def _hold(self, st: TaskState, hold: float, prefix: str, what: str) -> None:
        self.rec(prefix + "ENTER", st.name, what)
        st.holding = True
        st.phase = "hold"
        try:
            await asyncio.sleep(hold)
        finally:
            st.holding = False
            self.rec(prefix + "EXIT", st.name)
            st.phase = "release"

    def _held_token(self) -> str:
        """Best effort: "<token> <member>" of the permit this task holds (internal
        detail), so that a doubled permit can be traced in the ledgers."""
        me = asyncio.current_task()
        try:
            for holding in self.sem._held.values():
                if holding.owner is me:
                    return f"{holding.token} {holding.slot.member}"
        except Exception:
            pass
        return ""

    # -- event -------------------------------------------------------------------

    async def _wait_loop(self, st: TaskState) -> None:
        from redsync import RedisEventTimeoutError

        while not self.stopping:
            roll = self.rng.random()
            if roll < 0.3:
                timeout = self.rng.uniform(0.001, TINY_MAX)
            elif roll < 0.4:
                timeout = 0.0
            else:
                timeout = self.rng.uniform(0.1, 2.0)
            st.phase = "wait"
            self.rec("WB", st.name, timeout)
            try:
                await self.event.wait(timeout=timeout)
                self.rec("WO", st.name)
            except RedisEventTimeoutError:
                self.rec("WT", st.name, timeout)
            except Exception as exc:
                self.rec("WE", st.name, repr(exc))
                st.phase = "idle"
                await asyncio.sleep(0.05)

    async def _set_loop(self, st: TaskState) -> None:
        gap = self.spec["set_gap"]
        while not self.stopping:
            st.phase = "idle"
            await asyncio.sleep(self.rng.uniform(0, gap))
            self.set_seq += 1
            sid = f"{self.id}/{self.set_seq}"
            st.phase = "set"
            self.rec("SB", st.name, sid)
            try:
                await self.event.set()
                self.rec("SO", st.name, sid)
            except Exception as exc:
                self.rec("SE", st.name, f"{sid} {exc!r}")
                st.phase = "idle"
                await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m devtools.chaos.worker SPEC_JSON", file=sys.stderr)
        return 2
    spec = json.loads(args[0])
    _die_with_parent(int(spec["parent"]))
    asyncio.run(Worker(spec).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
