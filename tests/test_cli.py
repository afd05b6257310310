"""``redsync run`` and ``redsync status``, tested as processes.

Every case starts the real console entry point (``python -m redsync``) and
checks what the caller sees (exit status, output) and what Redis holds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from helpers import keyspace

PY = sys.executable
CHILD_WAITS = (
    "import signal, sys, time\n"
    "path = sys.argv[1]\n"
    "def stop(signum, frame):\n"
    "    open(path, 'a').write(f'got {signum}\\n')\n"
    "    sys.exit(7)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "signal.signal(signal.SIGINT, stop)\n"
    "open(path, 'a').write('ready\\n')\n"
    "time.sleep(60)\n"
)


def redsync(*args: str, url: str) -> list[str]:
    return [PY, "-m", "redsync", *args, "--url", url]


def run_args(name: str, *options: str, url: str, command: list[str]) -> list[str]:
    return [PY, "-m", "redsync", "run", name, "--url", url, *options, "--", *command]


@pytest.fixture
def url(redis_url: str) -> str:
    return redis_url


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {predicate}")


def waiting(url: str, name: str, holders: int = 1, prefix: str = "redsync:lock") -> bool:
    """A second instance registered its slot: a waiter blocks on the permit
    (of a lock: runs with the default ``--count 1`` hold one)."""
    client = redis.Redis.from_url(url)
    try:
        return int(client.zcard(keyspace(name, prefix).key("holders"))) > holders
    finally:
        client.close()


def free(url: str, name: str) -> int:
    out = subprocess.run(
        [PY, "-m", "redsync", "status", name, "--url", url, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return int(json.loads(out)["available"])


def test_exit_status_is_the_commands_and_the_environment_names_the_holder(
    url: str, unique_name: str
) -> None:
    script = (
        "import os, sys\n"
        "print(os.environ['REDSYNC_NAME'], os.environ['REDSYNC_INSTANCE'],"
        " os.environ.get('REDSYNC_FENCE', '-'))\n"
        "sys.exit(3)\n"
    )
    fences = []
    for _ in range(2):
        done = subprocess.run(
            run_args(unique_name, url=url, command=[PY, "-c", script]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 3, done.stderr
        name, instance, fence = done.stdout.split()
        assert name == unique_name and len(instance) == 16
        fences.append(int(fence))  # --count 1: a lock, whose holder gets a fence
    assert fences[1] > fences[0]
    done = subprocess.run(
        run_args(unique_name + "-sem", "--count", "2", url=url, command=[PY, "-c", script]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3 and done.stdout.split()[2] == "-"  # a semaphore: no fence
    killed = subprocess.run(
        run_args(unique_name, url=url, command=["sh", "-c", "kill -TERM $$"]), timeout=60
    )
    assert killed.returncode == 128 + signal.SIGTERM
    assert free(url, unique_name) == 1  # returned after each run


def test_conflict_unreachable_and_usage_codes(
    url: str, unique_name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    holder = subprocess.Popen(
        run_args(unique_name, url=url, command=[PY, "-c", CHILD_WAITS, str(marks)])
    )
    procs.append(holder)
    wait_for(lambda: marks.exists() and "ready" in marks.read_text())
    nonblock = subprocess.run(
        run_args(unique_name, "--nonblock", url=url, command=["true"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert nonblock.returncode == 1 and "no permit" in nonblock.stderr
    started = time.monotonic()
    timed_out = subprocess.run(
        run_args(
            unique_name, "--timeout", "0.5", "--conflict-exit-code", "9", url=url, command=["true"]
        ),
        timeout=60,
    )
    assert timed_out.returncode == 9
    assert time.monotonic() - started >= 0.5
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(30) == 7
    unreachable = subprocess.run(
        run_args(unique_name, url="redis://127.0.0.1:1/0", command=["true"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 69, unreachable.stderr
    for bad in (
        [PY, "-m", "redsync", "run", unique_name, "--url", url],  # no command
        run_args(unique_name, "--count", "0", url=url, command=["true"]),
        run_args(unique_name, "--conflict-exit-code", "300", url=url, command=["true"]),
        [PY, "-m", "redsync", "run", unique_name, "--bogus", "--", "true"],
    ):
        usage = subprocess.run(bad, capture_output=True, text=True, timeout=60)
        assert usage.returncode == 64, (bad, usage.stderr)
        assert "error" in usage.stderr
    assert free(url, unique_name) == 1


def test_four_runs_with_count_2_never_overlap_more_than_two(
    url: str, unique_name: str, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    body = (
        "import sys, time\n"
        "f = open(sys.argv[1], 'a')\n"
        "f.write(f'{time.time():.6f} 1\\n'); f.flush()\n"
        "time.sleep(0.4)\n"
        "f.write(f'{time.time():.6f} -1\\n'); f.flush()\n"
    )
    runs = [
        subprocess.Popen(
            run_args(
                unique_name,
                "--count",
                "2",
                "--timeout",
                "60",
                url=url,
                command=[PY, "-c", body, str(log)],
            )
        )
        for _ in range(4)
    ]
    assert [run.wait(90) for run in runs] == [0, 0, 0, 0]
    events = sorted(
        (float(t), int(k)) for t, k in (line.split() for line in log.read_text().splitlines())
    )
    inside = peak = 0
    for _, kind in events:
        inside += kind
        peak = max(peak, inside)
    assert len(events) == 8
    assert peak == 2, events  # two at a time: bounded, and shared
    assert free(url, unique_name) == 2


def test_signals_are_forwarded_and_the_permit_returned_after_the_command(
    url: str, unique_name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        marks = tmp_path / f"marks-{signum}"
        run = subprocess.Popen(
            run_args(unique_name, url=url, command=[PY, "-c", CHILD_WAITS, str(marks)])
        )
        procs.append(run)
        wait_for(lambda marks=marks: marks.exists() and "ready" in marks.read_text())
        assert free(url, unique_name) == 0
        run.send_signal(signum)
        status = run.wait(30)
        if signum == signal.SIGHUP:  # the child does not handle it: it dies of it
            assert status == 128 + signal.SIGHUP
        else:
            assert status == 7
            assert f"got {int(signum)}" in marks.read_text()
        assert free(url, unique_name) == 1


def test_an_interrupt_while_waiting_takes_nothing(
    url: str, unique_name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    holder = subprocess.Popen(
        run_args(unique_name, url=url, command=[PY, "-c", CHILD_WAITS, str(marks)])
    )
    procs.append(holder)
    wait_for(lambda: marks.exists() and "ready" in marks.read_text())
    waiter = subprocess.Popen(
        run_args(unique_name, url=url, command=["sh", "-c", "echo RAN > " + str(tmp_path / "ran")])
    )
    procs.append(waiter)
    wait_for(lambda: waiting(url, unique_name))
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(30) == 128 + signal.SIGINT
    assert not (tmp_path / "ran").exists()
    holder.send_signal(signal.SIGTERM)
    assert holder.wait(30) == 7
    assert free(url, unique_name) == 1


def test_lost_lease_stops_the_command_with_75(
    url: str, unique_name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    run = subprocess.Popen(
        run_args(
            unique_name,
            "--lease-ttl",
            "3",
            "--kill-after",
            "5",
            url=url,
            command=[PY, "-c", CHILD_WAITS, str(marks)],
        )
    )
    procs.append(run)
    wait_for(lambda: marks.exists() and "ready" in marks.read_text())
    client = redis.Redis.from_url(url)
    try:
        # Re-create the semaphore under a new generation: the held permit is void.
        keys = list(client.scan_iter(match=f"*{unique_name}*"))
        client.delete(*keys)
        recreate = subprocess.run(
            [PY, "-c", _RECREATE, url, unique_name], capture_output=True, text=True, timeout=60
        )
        assert recreate.returncode == 0, recreate.stderr
    finally:
        client.close()
    assert run.wait(30) == 75
    assert f"got {int(signal.SIGTERM)}" in marks.read_text()


_RECREATE = (
    "import asyncio, sys\n"
    "import redis.asyncio as r\n"
    "from redsync import RedisSemaphore\n"
    "async def main():\n"
    "    c = r.Redis.from_url(sys.argv[1])\n"
    "    s = await RedisSemaphore.create(c, sys.argv[2], count=1, lease_ttl=3,"
    " key_prefix='redsync:lock')\n"
    "    await s.close(); await c.aclose()\n"
    "asyncio.run(main())\n"
)


def test_a_killed_run_frees_its_permit_within_the_lease(
    url: str, unique_name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    run = subprocess.Popen(
        run_args(
            unique_name, "--lease-ttl", "2", url=url, command=[PY, "-c", CHILD_WAITS, str(marks)]
        )
    )
    procs.append(run)
    wait_for(lambda: marks.exists() and "ready" in marks.read_text())
    run.kill()
    run.wait(10)
    killed_at = time.monotonic()
    after = subprocess.run(
        run_args(unique_name, "--lease-ttl", "2", "--timeout", "10", url=url, command=["true"]),
        timeout=60,
    )
    assert after.returncode == 0
    assert time.monotonic() - killed_at < 2 * 1.4 + 1.5  # lease + one renewal period + start-up
    # The orphaned command still runs (as with flock): stop it.
    subprocess.run(["pkill", "-f", str(marks)], check=False)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_ctrl_c_in_a_terminal(url: str, unique_name: str, tmp_path: Path) -> None:
    """In a real terminal: Ctrl-C while waiting gives up; Ctrl-C while the command runs
    reaches the command once, and the permit comes back after it exited."""
    session = f"redsync-{uuid.uuid4().hex[:8]}"
    marks = tmp_path / "marks"
    status_file = tmp_path / "status"
    script = tmp_path / "child.py"
    script.write_text(CHILD_WAITS)
    inner = " ".join(run_args(unique_name, url=url, command=[PY, str(script), str(marks)]))
    shell_line = f"{inner}; echo $? > {status_file}"
    env = {**os.environ}
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "20", "bash", "--norc"],
        check=True,
        env=env,
        timeout=30,
    )
    try:
        subprocess.run(["tmux", "send-keys", "-t", session, shell_line, "Enter"], check=True)
        wait_for(lambda: marks.exists() and "ready" in marks.read_text(), timeout=30)
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        wait_for(lambda: status_file.exists() and status_file.read_text().strip(), timeout=30)
        assert status_file.read_text().strip() == "7"  # the command's own exit
        assert marks.read_text().count("got") == 1, marks.read_text()  # one SIGINT, not two
        assert free(url, unique_name) == 1
        # Ctrl-C while waiting: hold the permit elsewhere, then interrupt the wait.
        other = tmp_path / "other"
        holder = subprocess.Popen(
            run_args(unique_name, url=url, command=[PY, str(script), str(other)])
        )
        try:
            wait_for(lambda: other.exists() and "ready" in other.read_text())
            status_file.unlink()
            subprocess.run(["tmux", "send-keys", "-t", session, shell_line, "Enter"], check=True)
            wait_for(lambda: waiting(url, unique_name))
            subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
            wait_for(lambda: status_file.exists() and status_file.read_text().strip(), timeout=30)
            assert status_file.read_text().strip() == "130"
        finally:
            holder.send_signal(signal.SIGTERM)
            holder.wait(30)
        assert free(url, unique_name) == 1
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
