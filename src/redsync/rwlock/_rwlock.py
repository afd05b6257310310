"""A distributed read-write lock with fencing tokens, for asyncio.

How it works, in short (ARCHITECTURE.md has the details and invariants):

* The *gate* is a :class:`~redsync.RedisLock` under the read-write lock's
  keys: one FIFO queue for readers and writers alike.  A writer holds the
  gate for as long as it writes; its fence is the gate's.
* A *read* is a member of the ``readers`` zset, scored by its lease
  deadline and renewed by the event loop's one renewal task.  A reader
  registers without passing the gate while the gate is free and nobody
  queues for it (one round trip); otherwise it queues in the gate, and once
  it has it, registers (only while the gate is still its own) and passes
  the gate on.  So once a writer waits, readers that come after it wait
  behind it (writer preference), and everyone is served in arrival order.
* A writer that has the gate *drains* the lock: it waits until no live read
  is left.  The last read to leave tells it with a notice on its channel;
  a read whose lease ran out (its holder died) is dropped when the writer
  looks again, at that read's deadline.
* ``downgrade()`` registers the writer's read while it still holds the
  gate, then passes the gate on: no writer can come between.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rex

from .._core import validate as _validate
from .._core.keys import KeySpace
from .._core.link import Client, Command, Script, now_ms, retrying, text
from .._core.push import PushUnavailable, Subscription
from .._core.renewal import Batch, Renewal, renewer
from ..exceptions import (
    RedisLockClosedError,
    RedisLockError,
    RedisLockLeaseLostError,
    RedisLockNotAcquiredError,
    RedisLockTimeoutError,
)
from ..lock import RedisLock

__all__ = ["ReadWriteLockStatistics", "RedisReadWriteLock"]

log = logging.getLogger("redsync")

SCRIPTS = {
    name: Script("redsync.rwlock", name)
    for name in ("enter", "join", "leave", "drain", "renew", "want")
}
#: A drain looks again at least this often when no notice can reach it
#: (the server or user cannot subscribe), as a share of ``lease_ttl``.
FALLBACK_SHARE = 0.1


@dataclass(frozen=True)
class ReadWriteLockStatistics:
    """A snapshot from :meth:`RedisReadWriteLock.statistics`."""

    name: str
    #: Live reads held anywhere (by every process).
    readers: int
    #: Somebody, anywhere, holds the gate: a writer writes or drains the
    #: lock, or a queued reader is passing through.
    gate_held: bool
    #: Reads held through this instance.
    readers_here: int
    #: This instance holds the writer (drained: it is writing).
    writer_here: bool
    #: The writer's fence, if this instance holds the writer.
    fence: int | None
    tasks_waiting: int
    leases_lost: int


@dataclass(eq=False)
class _Read:
    """One read hold through this instance."""

    member: str
    owner: object
    depth: int = 1
    lost: bool = False
    #: Local send time of the last renewal the server confirmed (or of the join).
    confirmed: float = 0.0
    #: Made by ``downgrade()``: the end of an ``async with rw.writer`` block releases it.
    downgraded: bool = False


@dataclass(eq=False)
class _Write:
    """A writer of this instance: registered in ``writers`` while it waits
    and while it holds the lock."""

    member: str
    owner: object
    fence: int = 0
    holding: bool = False
    lost: bool = False


class RedisReadWriteLock:
    """Any number of readers, or one writer, across every process.

    ::

        rw = RedisReadWriteLock(redis, "catalog")
        async with rw.reader:
            ...                      # shared with other readers
        async with rw.writer as fence:
            ...                      # alone; the fence rises with every writer

    Writers are preferred: once a writer waits, readers that arrive after it
    wait behind it, and everyone is served in arrival order, so neither side
    starves.  Holds are leases, as for :class:`~redsync.RedisLock`: a holder
    whose process dies is reclaimed within ``lease_ttl``.

    Ownership is the task.  A task that holds a read may take it again
    (counted; no traffic); a task that holds a read and asks for the writer
    gets :class:`RedisLockError` at once (that upgrade would wait for
    itself), as does a writer asking for the writer again or for a read
    (use :meth:`_Writer.downgrade`).  The constructor does no I/O.
    """

    def __init__(
        self,
        redis_client: Client,
        name: str,
        *,
        lease_ttl: float = 30.0,
        key_prefix: str = "redsync:rwlock",
        replicas: int = 0,
        replica_timeout: float = 0.5,
    ) -> None:
        self._gate = RedisLock(
            redis_client,
            name,
            lease_ttl=lease_ttl,
            key_prefix=key_prefix,
            replicas=replicas,
            replica_timeout=replica_timeout,
        )
        self.name = self._gate.name
        self.lease_ttl = self._gate.lease_ttl
        self._ttl_ms = max(1, round(self.lease_ttl * 1000))
        self._keys = KeySpace(self._gate._prefix, name)
        self._link = self._gate._link
        self._readers_key = self._keys.key("readers")
        self._writers_key = self._keys.key("writers")
        self._drain_key = self._keys.key("drain")
        self._instance = uuid.uuid4().hex[:16]
        self._numbers = itertools.count(1)
        self._reads: dict[str, _Read] = {}
        self._read_of: dict[object, _Read] = {}
        self._write: _Write | None = None
        #: Writers of this instance registered in ``writers`` (waiting or holding).
        self._wants: dict[str, _Write] = {}
        self._waiting = 0
        self._closed = False
        self._leases_lost = 0
        self._lost_event = asyncio.Event()
        self._lost_callbacks: list[Callable[[], object]] = []
        self._renewal: Renewal | None = None
        self._sub: Subscription | None = None
        self._drained = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gate.add_lease_lost_callback(self._gate_lost)
        self.reader = _Reader(self)
        self.writer = _Writer(self)

    # -- reading -------------------------------------------------------------

    async def _read(self, owner: object, timeout: float | None) -> None:
        wait = _validate.timeout(timeout)
        self._check_open()
        mine = self._read_of.get(owner)
        if mine is not None and not mine.lost:
            mine.depth += 1
            return
        if self._write is not None and self._write.owner is owner:
            raise RedisLockError(
                f"read-write lock {self.name!r}: this task holds the writer; "
                "call writer.downgrade() to keep reading"
            )
        sem = await self._gate._semaphore()  # keeps the gate's shared keys alive
        member = f"{self._instance}.{next(self._numbers)}"
        read = _Read(member, owner)
        self._waiting += 1
        try:
            if await self._enter(member, sem._keys.key("meta")):
                self._add_read(read)
                return
            loop = asyncio.get_running_loop()
            deadline = None if wait is None else loop.time() + wait
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await self._gate._acquire_for(owner, left)
                if await self._join_through_gate(read):
                    return
        except BaseException:
            # Cancelled or failed: nothing stays held, whatever step it
            # reached (a lost reply may have hidden a registration).
            self._undo_read(read)
            raise
        finally:
            self._waiting -= 1

    async def _enter(self, member: str, meta: str) -> bool:
        keys = [self._readers_key, self._writers_key, meta]
        reply = await retrying(
            lambda _: self._link.script(SCRIPTS["enter"], keys, [member, self._ttl_ms]),
            what="read-write lock enter",
        )
        return bool(int(reply))

    async def _join(self, member: str) -> bool:
        """Register ``member`` as a read while the gate is held through this
        instance; False if it no longer is (its lease ran out)."""
        hold = self._gate._hold
        if hold is None or hold.holding.lost:
            return False
        holding = hold.holding
        keys = [self._readers_key, holding.slot.key, self._gate._keys.key("handed")]
        args = [member, self._ttl_ms, holding.slot.member, holding.token]
        reply = await retrying(
            lambda _: self._link.script(SCRIPTS["join"], keys, args),
            what="read-write lock join",
        )
        return bool(int(reply))

    async def _join_through_gate(self, read: _Read) -> bool:
        """With the gate held: register ``read``, then pass the gate on."""
        try:
            joined = await self._join(read.member)
            if joined:
                self._add_read(read)
        except BaseException:
            self._gate._release_later()
            raise
        try:
            await self._gate.release()
        except RedisLockLeaseLostError:
            pass  # taken back meanwhile; the read (if joined) was checked against it
        return joined

    def _add_read(self, read: _Read) -> None:
        read.confirmed = asyncio.get_running_loop().time()
        self._reads[read.member] = read
        self._read_of[read.owner] = read
        self._keep_renewing()

    def _keep_renewing(self) -> None:
        if self._renewal is None or self._renewal.stopped:
            self._renewal = renewer().add(
                self, self.lease_ttl / 3, f"read-write lock {self.name!r} leases"
            )

    def _maybe_stop_renewing(self) -> None:
        if not self._reads and not self._wants and self._renewal is not None:
            renewal, self._renewal = self._renewal, None
            self._spawn(renewal.stop())

    def _undo_read(self, read: _Read) -> None:
        """Take back a read whose acquisition did not complete, without waiting."""
        if self._reads.get(read.member) is read:
            self._drop_read(read)
        self._spawn(self._forget(read.member))

    def _drop_read(self, read: _Read) -> None:
        self._reads.pop(read.member, None)
        if self._read_of.get(read.owner) is read:
            del self._read_of[read.owner]
        self._maybe_stop_renewing()

    async def _unread(self, owner: object) -> None:
        read = self._read_of.get(owner)
        if read is None:
            read = next(iter(self._reads.values()), None)
        if read is None:
            raise RedisLockNotAcquiredError(
                f"read-write lock {self.name!r}: reader.release() called, but no read is "
                "held through this instance; acquire it first (or use 'async with rw.reader')"
            )
        if read.depth > 1:
            read.depth -= 1
            return
        self._drop_read(read)
        if read.lost:
            raise self._lost_error("read")
        gone = await self._leave([read.member])
        if not gone:
            self._count_lost()
            raise self._lost_error("read")

    async def _leave(self, members: list[str]) -> int:
        keys = [self._readers_key, self._drain_key]

        async def leave(ambiguous: bool) -> int:
            gone = int(await self._link.script(SCRIPTS["leave"], keys, members))
            # After a lost reply the first attempt may have removed them.
            return len(members) if ambiguous else gone

        return await retrying(leave, what="read-write lock leave")

    async def _forget(self, member: str) -> None:
        await self._leave([member])

    # -- writing -------------------------------------------------------------

    async def _acquire_write(self, owner: object, timeout: float | None) -> int:
        wait = _validate.timeout(timeout)
        self._check_open()
        if self._write is not None and self._write.owner is owner:
            raise RedisLockError(
                f"read-write lock {self.name!r}: this task already holds the writer; "
                "release it first"
            )
        mine = self._read_of.get(owner)
        if mine is not None and not mine.lost:
            raise RedisLockError(
                f"read-write lock {self.name!r}: this task holds a read, and asking for the "
                "writer would wait for itself; release the read first"
            )
        await self._gate._semaphore()
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        write = _Write(f"{self._instance}.w{next(self._numbers)}", owner)
        self._waiting += 1
        try:
            # Registered first: from now on readers queue behind this writer.
            await self._want(write)
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                fence = await self._gate._acquire_for(owner, left)
                try:
                    if await self._drain(deadline):
                        write.fence, write.holding = fence, True
                        self._write = write
                        return fence
                except BaseException:
                    self._gate._release_later()
                    raise
                # The gate's lease ran out while draining: queue again.
        except BaseException:
            self._unwant(write)
            raise
        finally:
            self._waiting -= 1

    async def _want(self, write: _Write) -> None:
        self._wants[write.member] = write
        self._keep_renewing()
        await retrying(
            lambda _: self._link.script(
                SCRIPTS["want"], [self._writers_key], [write.member, self._ttl_ms]
            ),
            what="read-write lock want",
        )

    def _unwant(self, write: _Write) -> None:
        """Take back a writer's entry without waiting (it gave up, or is done)."""
        if self._wants.pop(write.member, None) is not None:
            self._maybe_stop_renewing()
        self._spawn(self._forget_writer(write.member))

    async def _forget_writer(self, member: str) -> None:
        await retrying(
            lambda _: self._link.pipeline([("ZREM", self._writers_key, member)]),
            what="read-write lock unwant",
        )

    async def _drain(self, deadline: float | None) -> bool:
        """Wait, holding the gate, until no live read is left.  True when
        drained; False when the gate was lost meanwhile; raises
        :class:`RedisLockTimeoutError` at ``deadline``."""
        loop = asyncio.get_running_loop()
        subscribed = await self._subscribe()
        channel = self._channel if subscribed else "-"
        drain_id = uuid.uuid4().hex[:12]
        keys = [self._readers_key, self._drain_key, self._gate._keys.key("meta")]
        args = [f"{channel} {drain_id}", self._ttl_ms]
        while True:
            self._check_open()
            if not self._gate_held():
                return False
            self._drained.clear()
            reply = await retrying(
                lambda _: self._link.script(SCRIPTS["drain"], keys, args),
                what="read-write lock drain",
            )
            live, wait_ms = int(reply[0]), int(reply[1])
            if live == 0 and wait_ms == 0:
                return True
            delay = wait_ms / 1000 + 0.005
            if not subscribed:
                delay = min(delay, self.lease_ttl * FALLBACK_SHARE)
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise RedisLockTimeoutError(
                        f"read-write lock {self.name!r}: readers did not leave in time"
                    )
                delay = min(delay, left)
            try:
                await asyncio.wait_for(self._drained.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _gate_held(self) -> bool:
        hold = self._gate._hold
        return hold is not None and not hold.holding.lost

    async def _release_write(self) -> None:
        write = self._write
        if write is None:
            raise RedisLockNotAcquiredError(
                f"read-write lock {self.name!r}: writer.release() called, but the writer is "
                "not held through this instance; acquire it first"
            )
        self._write = None
        try:
            hold = self._gate._hold
            if hold is None or hold.owner is not write.owner:
                # The writer's gate was lost and given back (the gate may be
                # a reader's of this instance now, passing through).
                raise self._lost_error("writer")
            await self._gate.release()
        except (RedisLockLeaseLostError, RedisLockNotAcquiredError):
            # Taken back (or found lost and given back already).
            raise self._lost_error("writer") from None
        finally:
            self._unwant(write)
        if write.lost:
            raise self._lost_error("writer")

    async def _end_write_block(self, owner: object) -> None:
        """The end of a ``with`` block on the writer: release the writer, or the
        read a ``downgrade()`` in the block left."""
        read = self._read_of.get(owner)
        if self._write is None and read is not None and read.downgraded:
            await self._unread(owner)
        else:
            await self._release_write()

    def _owns_read(self, owner: object) -> bool:
        read = self._read_of.get(owner)
        return read is not None and not read.lost

    def _owns_write(self, owner: object) -> bool:
        write = self._write
        return write is not None and write.owner is owner and not write.lost and self._gate_held()

    def _write_fence(self, owner: object) -> int | None:
        write = self._write
        return write.fence if write is not None and write.owner is owner else None

    async def _downgrade(self) -> None:
        write = self._write
        if write is None:
            raise RedisLockNotAcquiredError(
                f"read-write lock {self.name!r}: downgrade() called, but the writer is not "
                "held through this instance"
            )
        read = _Read(f"{self._instance}.{next(self._numbers)}", write.owner, downgraded=True)
        self._write = None
        hold = self._gate._hold
        if hold is None or hold.owner is not write.owner:  # the writer's gate was lost
            self._unwant(write)
            raise self._lost_error("writer")
        try:
            joined = await self._join_through_gate(read)
        except BaseException:
            self._undo_read(read)  # cancelled or failed: the caller holds nothing
            raise
        finally:
            self._unwant(write)
        if not joined:
            raise self._lost_error("writer")

    # -- notices -------------------------------------------------------------

    @property
    def _channel(self) -> str:
        return f"{self._keys.key('drained')}:{self._instance}"

    async def _subscribe(self) -> bool:
        """Listen for "the last read left" (once); False if the server or
        user cannot subscribe, and the drain looks again now and then."""
        if self._sub is None:
            self._sub = Subscription(self._link, self._channel, self._notice, self._notice_gap)
        if self._sub.refused is not None:
            return False
        try:
            await self._sub.start()
        except PushUnavailable:
            return False
        return True

    def _notice(self, data: str) -> None:
        self._drained.set()

    def _notice_gap(self) -> None:
        self._drained.set()

    # -- renewal (one batch in the process's shared round trip) ------------------

    def _renew_args(self) -> tuple[list[str], list[str], list[Any]]:
        reads = list(self._reads)
        wants = [(m, "h" if w.holding else "w") for m, w in self._wants.items()]
        keys = [self._readers_key, self._gate._keys.key("meta"), self._writers_key]
        args: list[Any] = [self._ttl_ms, len(reads), *reads]
        for member, mode in wants:
            args += [member, mode]
        return reads, keys, args

    async def _renew_batch(self) -> Batch | None:
        if not self._reads and not self._wants:
            return Batch(self._link, [], self._nothing_done, inline=True)
        reads, keys, args = self._renew_args()
        command: Command = ("EVALSHA", SCRIPTS["renew"].sha, len(keys), *keys, *args)
        sent = asyncio.get_running_loop().time()

        async def done(replies: list[Any] | BaseException, now: int) -> None:
            if isinstance(replies, BaseException):
                self._renewal_failed(sent)
                return
            (reply,) = replies
            if isinstance(reply, Exception):
                if isinstance(reply, rex.NoScriptError):  # a restarted or flushed server
                    await self._renew_tick()
                    return
                self._renewal_failed(sent)
                raise reply
            self._renewed(reads, [text(m) for m in reply], sent)

        return Batch(self._link, [command], done)

    async def _nothing_done(self, replies: list[Any] | BaseException, now: int) -> None:
        return None

    async def _renew_tick(self) -> None:
        if not self._reads and not self._wants:
            return
        reads, keys, args = self._renew_args()
        sent = asyncio.get_running_loop().time()
        try:
            reply = await self._link.script(SCRIPTS["renew"], keys, args)
        except Exception:
            self._renewal_failed(sent)
            raise
        self._renewed(reads, [text(m) for m in reply], sent)

    def _renewed(self, members: list[str], lost: list[str], sent: float) -> None:
        for member in members:
            read = self._reads.get(member)
            if read is not None:
                read.confirmed = sent
        for member in lost:
            read = self._reads.get(member)
            if read is not None and not read.lost:
                read.lost = True
                self._count_lost()
            write = self._wants.get(member)
            if write is not None and write.holding and not write.lost:
                write.lost = True
                self._count_lost()

    def _renewal_failed(self, sent: float) -> None:
        """A renewal failed: reads whose lease must have run out by now are lost."""
        now = asyncio.get_running_loop().time()
        for read in self._reads.values():
            if not read.lost and now > read.confirmed + self.lease_ttl:
                read.lost = True
                self._count_lost()

    # -- lost leases, inspection, closing ------------------------------------

    def _gate_lost(self) -> None:
        self._drained.set()  # a drain in progress looks again, and finds it out
        write = self._write
        if write is not None and not write.lost:
            write.lost = True
            self._count_lost()

    def _count_lost(self) -> None:
        self._leases_lost += 1
        self._lost_event.set()
        for callback in self._lost_callbacks:
            try:
                callback()
            except Exception:
                log.exception("lease-lost callback failed")

    def add_lease_lost_callback(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever a read or the writer held here is found lost."""
        self._lost_callbacks.append(callback)

    async def wait_lease_lost(self) -> None:
        """Return once a read or the writer held through this instance was found lost."""
        await self._lost_event.wait()

    async def statistics(self) -> ReadWriteLockStatistics:
        """Reads held anywhere and here, the writer here, waiters, losses (two round trips)."""
        sem = await self._gate._semaphore()
        time_reply, pool = await retrying(
            lambda _: self._link.pipeline([("TIME",), ("LLEN", sem._keys.key("pool"))]),
            what="read-write lock statistics",
        )
        server_ms = now_ms(time_reply)
        live = await retrying(
            lambda _: self._link.pipeline([("ZCOUNT", self._readers_key, f"({server_ms}", "+inf")]),
            what="read-write lock statistics",
        )
        write = self._write
        return ReadWriteLockStatistics(
            name=self.name,
            readers=int(live[0]),
            gate_held=not int(pool),
            readers_here=sum(1 for read in self._reads.values() if not read.lost),
            writer_here=write is not None,
            fence=None if write is None else write.fence,
            tasks_waiting=self._waiting,
            leases_lost=self._leases_lost,
        )

    async def close(self) -> None:
        """Stop waiting and renewing; waiting tasks get :class:`RedisLockClosedError`.

        Holds still in place stay until their lease runs out (or they are
        released); then other processes may take the lock.
        """
        if self._closed:
            return
        self._closed = True
        self._drained.set()  # a writer draining the lock fails with the closed error
        if self._renewal is not None:
            await self._renewal.stop()
            self._renewal = None
        if self._sub is not None:
            await self._sub.close()
        for task in list(self._tasks):
            if not task.done():
                await asyncio.wait([task], timeout=1.0)
        await self._gate.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RedisLockClosedError(f"read-write lock {self.name!r} is closed")

    def _spawn(self, step: Any) -> None:
        async def run() -> None:
            try:
                await step
            except Exception as exc:  # the lease runs out in the end
                log.debug("read-write lock %r: cleanup failed: %r", self.name, exc)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lost_error(self, what: str) -> RedisLockLeaseLostError:
        return RedisLockLeaseLostError(
            f"read-write lock {self.name!r}: the {what}'s lease had expired and it was "
            "taken back; raise lease_ttl above the longest stall of this process"
        )

    def __repr__(self) -> str:
        state = (
            "writer held here" if self._write is not None else f"{len(self._reads)} read(s) here"
        )
        return f"<RedisReadWriteLock {self.name!r} {state}{' closed' if self._closed else ''}>"


class _Reader:
    """``rw.reader``: the shared side.  ``async with rw.reader: ...``"""

    def __init__(self, rw: RedisReadWriteLock) -> None:
        self._rw = rw

    async def acquire(self, timeout: float | None = None) -> None:
        """Take a read, waiting up to ``timeout`` s (None: as long as it takes;
        0 or less: one attempt).  Raises :class:`RedisLockTimeoutError`."""
        await self._rw._read(asyncio.current_task(), timeout)

    async def release(self) -> None:
        """End the calling task's read (or, if it has none, one held through
        this instance).  Raises :class:`RedisLockNotAcquiredError` if none is,
        :class:`RedisLockLeaseLostError` if it had been taken back."""
        await self._rw._unread(asyncio.current_task())

    def owned(self) -> bool:
        """Whether the calling task holds a read (no I/O)."""
        return self._rw._owns_read(_current())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"<reader of {self._rw!r}>"


class _Writer:
    """``rw.writer``: the exclusive side.  ``async with rw.writer as fence: ...``"""

    def __init__(self, rw: RedisReadWriteLock) -> None:
        self._rw = rw

    async def acquire(self, timeout: float | None = None) -> int:
        """Take the writer once every read already in has ended; return its
        fence (greater than every fence of this lock before).  Waits up to
        ``timeout`` s; raises :class:`RedisLockTimeoutError`."""
        return await self._rw._acquire_write(asyncio.current_task(), timeout)

    async def release(self) -> None:
        """Release the writer held through this instance (by any task)."""
        await self._rw._release_write()

    async def downgrade(self) -> None:
        """Turn the writer into a read of the same task, atomically: no other
        writer gets in between.  Readers queued behind follow."""
        await self._rw._downgrade()

    def owned(self) -> bool:
        """Whether the calling task holds the writer (no I/O)."""
        return self._rw._owns_write(_current())

    @property
    def fence(self) -> int | None:
        """The calling task's writer fence, or None."""
        return self._rw._write_fence(_current())

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._rw._end_write_block(asyncio.current_task())

    def __repr__(self) -> str:
        return f"<writer of {self._rw!r}>"


def _current() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None
