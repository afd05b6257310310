"""Command line: ``python -m redsync demo`` shows several processes sharing one semaphore."""

from __future__ import annotations

import argparse
import sys

from . import _demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redsync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run worker processes that share a semaphore")
    demo.add_argument("--url", help="Redis URL (default: $REDIS_URL or redis://127.0.0.1:6379/0)")
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--count", type=int, default=2, help="permits (default 2)")
    demo.add_argument("--rounds", type=int, default=3, help="acquisitions per worker (default 3)")
    demo.add_argument("--hold", type=float, default=0.3, help="seconds each holds (default 0.3)")
    worker = sub.add_parser("_worker")  # internal: one demo worker process
    worker.add_argument("url")
    worker.add_argument("name")
    worker.add_argument("index", type=int)
    worker.add_argument("count", type=int)
    worker.add_argument("rounds", type=int)
    worker.add_argument("hold", type=float)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo.run(args.url, args.workers, args.count, args.rounds, args.hold)
    return _demo.worker(args.url, args.name, args.index, args.count, args.rounds, args.hold)


if __name__ == "__main__":
    sys.exit(main())
