"""``redsync run NAME -- CMD...``: run a command while holding a permit, like flock(1)
across machines.

The permit is taken before the command starts and returned only after it
exited; its lease is renewed meanwhile.  Exit status: the command's own (128
plus the signal number if a signal ended it); ``--conflict-exit-code`` (1)
when no permit came in time or ``--nonblock`` found none; 75 when the lease
was lost while the command ran (it then gets SIGTERM, and SIGKILL after
``--kill-after`` seconds); 69 when Redis cannot be reached; 64 on a usage
error.

Signals: SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to this process are passed
on to the command.  The command runs in its own process group; with a
terminal, that group becomes the terminal's foreground group while it runs
(as a shell does it), so Ctrl-C reaches the command once, directly, and the
permit is returned after it exited.  Ctrl-C while waiting for the permit
gives up the wait (nothing is taken) and exits with 130.

With ``--count 1`` (the default) the permit is a :class:`~redsync.RedisLock`
(keys under ``redsync:lock``), and the command finds its fence in
``REDSYNC_FENCE``; with more, a :class:`~redsync.RedisSemaphore`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from ._demo import DEFAULT_URL, redis_url

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 64 (EX_USAGE), not 2
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"Redis URL (default $REDIS_URL or {DEFAULT_URL})"
    )


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``run`` arguments before ``--``, and the command after it (None: no ``--``)."""
    if argv[:1] == ["run"] and "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run",
        help="run a command while holding a permit of a semaphore",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("name", help="semaphore name (shared by every host using the same Redis)")
    run.add_argument("--count", type=int, default=1, help="permits of the semaphore (default 1)")
    wait = run.add_mutually_exclusive_group()
    wait.add_argument("--timeout", type=float, default=None, help="seconds to wait for a permit")
    wait.add_argument("--nonblock", action="store_true", help="do not wait: one try")
    run.add_argument("--lease-ttl", type=float, default=30.0, help="lease in seconds (default 30)")
    _url_option(run)
    run.add_argument(
        "--conflict-exit-code", type=int, default=1, help="exit status when no permit (default 1)"
    )
    run.add_argument(
        "--kill-after", type=float, default=10.0, help="SIGKILL this long after SIGTERM (10 s)"
    )
    run.add_argument("command", nargs="*", help="-- CMD ARGS... (everything after --)")
    return run  # type: ignore[no-any-return]


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = list(args.command)
    if not command:
        parser.error("no command given: redsync run NAME [options] -- CMD ARGS...")
    if not 0 <= args.conflict_exit_code <= 255:
        parser.error(f"--conflict-exit-code must be 0 to 255, got {args.conflict_exit_code}")
    url = redis_url(args.url)
    try:
        return asyncio.run(_run(args, url, command))
    except _Usage as exc:
        parser.error(str(exc))
    return EX_USAGE  # pragma: no cover - parser.error exits


class _Usage(Exception):
    pass


def _status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _run(args: argparse.Namespace, url: str, command: list[str]) -> int:
    import redis.asyncio as aioredis
    from redis import exceptions as rex

    from .exceptions import RedisLockTimeoutError, RedisSemaphoreTimeoutError, RedsyncError
    from .lock import RedisLock
    from .semaphore import RedisSemaphore

    client = aioredis.Redis.from_url(url)
    loop = asyncio.get_running_loop()
    try:
        sem: Any
        try:
            if args.count == 1:  # a lock: its holder gets a fence (REDSYNC_FENCE)
                sem = _LockHolder(RedisLock(client, args.name, lease_ttl=args.lease_ttl))
            else:
                sem = await RedisSemaphore.create(
                    client, args.name, count=args.count, lease_ttl=args.lease_ttl
                )
        except (ValueError, TypeError, RedsyncError) as exc:
            if isinstance(exc, (rex.ConnectionError, rex.TimeoutError)):
                raise
            raise _Usage(str(exc)) from exc
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            print(f"redsync run: cannot reach Redis at {url}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
        try:
            with _interrupt_cancels(loop):
                await sem.acquire(0 if args.nonblock else args.timeout)
        except (RedisSemaphoreTimeoutError, RedisLockTimeoutError):
            print(f"redsync run: no permit of {args.name!r} was free", file=sys.stderr)
            await sem.close()
            return int(args.conflict_exit_code)
        except _Interrupted as exc:
            await sem.close()
            return 128 + exc.signum
        except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
            print(f"redsync run: lost Redis at {url}: {exc}", file=sys.stderr)
            await sem.close()
            return EX_UNAVAILABLE
        try:
            return await _supervise(sem, args, command)
        finally:
            try:
                await sem.release()
            except RedsyncError:
                pass  # the lease was lost: reported through the exit status
            except Exception as exc:  # Redis gone: the lease runs out and is reclaimed
                print(f"redsync run: could not return the permit: {exc!r}", file=sys.stderr)
            await sem.close()
    finally:
        await client.aclose()


class _LockHolder:
    """A :class:`~redsync.RedisLock` with the few semaphore methods ``run`` uses."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.fence: int | None = None

    async def acquire(self, timeout: float | None) -> None:
        self.fence = await self.lock.acquire(timeout)

    async def release(self) -> None:
        await self.lock.release()

    async def wait_lease_lost(self) -> None:
        await self.lock.wait_lease_lost()

    @property
    def instance_id(self) -> str:
        return str(self.lock._sem.instance_id)

    async def close(self) -> None:
        await self.lock.close()


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _interrupt_cancels(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While waiting for the permit, a forwarded signal gives up the wait."""
    task = asyncio.current_task()
    assert task is not None
    got: list[int] = []

    def interrupt(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for signum in FORWARDED:
        loop.add_signal_handler(signum, interrupt, signum)
    try:
        yield
    except asyncio.CancelledError:
        if got:
            raise _Interrupted(got[0]) from None
        raise
    finally:
        for signum in FORWARDED:
            loop.remove_signal_handler(signum)


async def _supervise(sem: Any, args: argparse.Namespace, command: list[str]) -> int:
    loop = asyncio.get_running_loop()
    env = {
        **os.environ,
        "REDSYNC_NAME": args.name,
        "REDSYNC_INSTANCE": sem.instance_id,
    }
    fence = getattr(sem, "fence", None)
    if fence is not None:
        env["REDSYNC_FENCE"] = str(fence)
    tty = _terminal()
    # Its own process group (see the module docstring); Python 3.10 lacks process_group.
    group: dict[str, Any] = (
        {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    )
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env, **group)
    except OSError as exc:
        print(f"redsync run: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    foreground = tty is not None and _give_terminal(tty, child.pid)

    def forward(signum: int) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:  # not yet (or no longer) a group leader
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    for signum in FORWARDED:
        loop.add_signal_handler(signum, forward, signum)
    lost = asyncio.ensure_future(sem.wait_lease_lost())
    exited = asyncio.ensure_future(child.wait())
    try:
        await asyncio.wait([lost, exited], return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            print(
                f"redsync run: the lease of {args.name!r} was lost; stopping the command",
                file=sys.stderr,
            )
            forward(signal.SIGTERM)
            done, _ = await asyncio.wait([exited], timeout=args.kill_after)
            if not done:
                forward(signal.SIGKILL)
            await exited
            return EX_TEMPFAIL
        return EX_TEMPFAIL if lost.done() else _status(exited.result())
    finally:
        lost.cancel()
        for signum in FORWARDED:
            loop.remove_signal_handler(signum)
        if foreground and tty is not None:
            _give_terminal(tty, os.getpgrp())


def _terminal() -> int | None:
    """The controlling terminal, if this process is in its foreground group."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _give_terminal(fd: int, pgrp: int) -> bool:
    """Make ``pgrp`` the terminal's foreground group (SIGTTOU ignored meanwhile)."""
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, pgrp)
        return True
    except OSError:
        return False
    finally:
        signal.signal(signal.SIGTTOU, previous)


def add_status_parser(sub: Any) -> argparse.ArgumentParser:
    status = sub.add_parser("status", help="show a semaphore: count, free permits, holders")
    status.add_argument("name")
    _url_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return status  # type: ignore[no-any-return]


def status(args: argparse.Namespace) -> int:
    """Print a semaphore's state; exit 1 if it does not exist, 69 without Redis."""
    import json

    import redis.asyncio as aioredis
    from redis import exceptions as rex

    from .exceptions import RedisSemaphoreTimeoutError
    from .semaphore import RedisSemaphore

    url = redis_url(args.url)

    async def look() -> dict[str, Any] | None:
        client = aioredis.Redis.from_url(url)
        try:
            kind = "semaphore"
            try:
                sem = await RedisSemaphore.attach(client, args.name, timeout=0)
            except RedisSemaphoreTimeoutError:
                # Runs with --count 1 hold a lock: a semaphore of count 1 under its prefix.
                kind = "lock"
                try:
                    sem = await RedisSemaphore.attach(
                        client, args.name, timeout=0, key_prefix="redsync:lock"
                    )
                except RedisSemaphoreTimeoutError:
                    return None
            try:
                stats = await sem.statistics()
            finally:
                await sem.close()
            return {
                "kind": kind,
                "name": stats.name,
                "count": stats.count,
                "available": stats.available,
                "holders": [
                    {"instance": h.instance, "permits": h.permits, "lease_left": h.lease_remaining}
                    for h in stats.holders
                ],
            }
        finally:
            await client.aclose()

    try:
        found = asyncio.run(look())
    except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
        print(f"redsync status: cannot reach Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    if found is None:
        print(f"redsync status: no semaphore or lock {args.name!r} at {url}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(found))
        return 0
    print(f"{found['name']}: {found['available']} of {found['count']} permits free")
    for h in found["holders"]:
        print(f"  {h['instance']}  {h['permits']} permit(s), lease {h['lease_left']:.1f} s left")
    return 0
