"""``python -m devtools.chaos.table RESULTS.json``: one markdown table, a column per topology.

Renders the JSON that ``python -m devtools.chaos --json`` writes, for the README.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

Row = tuple[str, Callable[[dict[str, Any]], str]]


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return f"{value:,}"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _modes(s: dict[str, Any], kind: str) -> str:
    found = s.get(f"{kind}_modes") or {}
    return ", ".join(f"{v} {k}" for k, v in sorted(found.items()))


def _faults(s: dict[str, Any], kind: str) -> str:
    total = s[f"{kind}s"]
    return f"{total} ({_modes(s, kind)})" if total else "0"


def _pair(s: dict[str, Any], what: str) -> str:
    return f"**{s[f'{what}_lost']} / {s[f'{what}_duplicated']}**"


ROWS: list[Row] = [
    ("storm", lambda s: f"{s['storm_s'] / 60:.1f} min"),
    ("acquisitions / releases", lambda s: f"{_n(s['acquires'])} / {_n(s['releases'])}"),
    ("event sets ok / waits ok", lambda s: f"{_n(s['sets_ok'])} / {_n(s['waits_ok'])}"),
    ("SIGKILLs (of permit holders)", lambda s: f"{_n(s['sigkills'])} ({s['sigkills_of_holders']})"),
    ("task cancellations", lambda s: _n(s["cancellations"])),
    ("tiny acquire timeouts that expired", lambda s: _n(s["acquire_timeouts_tiny"])),
    ("CLIENT KILL: connections", lambda s: _n(s["client_kill_connections"])),
    ("proxy: cut connections", lambda s: _n(s["cut_connections"])),
    ("proxy: swallowed replies", lambda s: _n(s["swallowed_replies"])),
    ("CLIENT PAUSE / DEBUG SLEEP stalls", lambda s: f"{s['pauses']} / {s['sleeps']}"),
    (
        "server restarts",
        lambda s: f"{s['restarts']} ({_modes(s, 'restart')})" if s["restarts"] else "0",
    ),
    (
        "failovers",
        lambda s: f"{s['failovers']} ({_modes(s, 'failover')})" if s["failovers"] else "0",
    ),
    ("**over-admissions**", lambda s: f"**{s['over_admissions']}**"),
    ("… of which right after a lossy failover", lambda s: _n(s["over_admissions_explained"])),
    ("max simultaneous holders (count)", lambda s: f"{s['max_holders']} ({s['count']})"),
    (
        "**permits lost / duplicated**",
        lambda s: f"**{s['permits_lost']} / {s['permits_duplicated']}**",
    ),
    (
        "**signals lost / duplicated**",
        lambda s: f"**{s['signals_lost']} / {s['signals_duplicated']}**",
    ),
    ("lease-lost notifications", lambda s: _n(s["lease_lost_notifications"])),
    (
        "killed holder → permits back, p50 / max",
        lambda s: f"{_s(s['kill_recovery_p50'])} / {_s(s['kill_recovery_max'])}",
    ),
    (
        "restart / failover → next acquisition, p50 / max",
        lambda s: f"{_s(s['big_recovery_p50'])} / {_s(s['big_recovery_max'])}",
    ),
]


def render(doc: dict[str, Any]) -> str:
    results = [r for r in doc["results"] if "summary" in r]
    head = [r["topology"] for r in results]
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r["summary"]) for r in results) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as fh:
        print(render(json.load(fh)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
