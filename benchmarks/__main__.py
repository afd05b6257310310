"""``python -m benchmarks [--smoke] [--repeats N] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .contenders import LIBS
from .report import console, markdown, plots, targets
from .runner import FULL, ROOT, SMOKE, log, run_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare redsync with redsync 2.0.0, redis-py Lock, pottery and "
        "python-redis-lock on a private redis-server.",
    )
    parser.add_argument("--smoke", action="store_true", help="a quick run of every case (~20 s)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per case (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--rs2-venv",
        type=Path,
        default=Path("/tmp/rs2"),
        help="venv with redsync 2.0.0 (created with pip if missing)",
    )
    parser.add_argument("--only", nargs="+", choices=sorted(LIBS), help="run these libraries only")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild results.md and the plots from OUT/results.json without running anything",
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    repeats = args.repeats if args.repeats is not None else (1 if args.smoke else 3)
    if repeats < 1:
        parser.error("--repeats must be at least 1")

    if args.report_only:
        data = json.loads((args.out / "results.json").read_text())
    else:
        data = run_all(plan, repeats, args.out, args.rs2_venv, args.only)
    rows = targets(data)
    data["targets"] = rows
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "results.md").write_text(markdown(data, rows) + "\n")
    written = plots(data, out)
    print(console(data, rows))
    log(f"\nwrote {out / 'results.json'}, {out / 'results.md'}")
    for path in written:
        log(f"wrote {path}")
    if not written:
        log("no plots: matplotlib is not installed")
    log(f"total {data['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
