"""A chaos runner for redsync: many processes, random faults, independent checks.

Run it from the repository root::

    python -m tests.chaos --topology standalone --duration 60 --seed 1

See ``runner.py`` for what it does and ``observer.py`` for how the results
are judged.  Importing this package puts the ``tests`` directory on
``sys.path`` so that the shared test infrastructure (``_infra``) imports the
same way it does under pytest.
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
