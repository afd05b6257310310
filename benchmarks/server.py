"""A private redis-server on a free loopback port, and redis-benchmark figures."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` without persistence, bound to 127.0.0.1, stopped by its pid."""

    def __init__(self, binary: str = "redis-server", extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def start(self) -> RedisServer:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found on PATH")
        self._dir = tempfile.TemporaryDirectory(prefix="redsync-bench-")
        for _ in range(5):
            self.port = free_port()
            log = Path(self._dir.name) / "redis.log"
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--logfile",
                    str(log),
                    *self.extra_args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError("redis-server did not start")

    def _wait_ready(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"v=(\S+)", out)
        return match.group(1) if match else out.strip()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_RB_LINE = re.compile(r"([A-Z_]+): ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?")


def redis_benchmark(port: int, requests: int) -> dict[str, Any]:
    """``redis-benchmark -q -t ping,rpush,lpop``: requests/s and p50 per test (50 clients)."""
    if shutil.which("redis-benchmark") is None:
        return {"error": "redis-benchmark not found on PATH"}
    command = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-q",
        "-t",
        "ping,rpush,lpop",
        "-n",
        str(requests),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    figures: dict[str, Any] = {}
    for line in out.replace("\r", "\n").splitlines():
        match = _RB_LINE.search(line)
        if match:
            test, rps, p50 = match.groups()
            figures[test] = {
                "rps": float(rps),
                "p50": float(p50) / 1000 if p50 is not None else None,
            }
    return figures
