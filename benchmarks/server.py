"""redis-benchmark figures, and the private server the benchmarks run on.

The server is the development tooling's :class:`devtools.servers.RedisServer`
(the same one the tests and the chaos runner use).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from devtools.servers import RedisServer

__all__ = ["RedisServer", "redis_benchmark"]


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
