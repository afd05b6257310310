"""A chaos runner for redsync: many processes, random faults, independent checks.

Run it from the repository root::

    python -m devtools.chaos --topology standalone --duration 60 --seed 1

See ``runner.py`` for what it does and ``observer.py`` for how the results
are judged.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TESTS_DIR = REPO_ROOT / "tests"
