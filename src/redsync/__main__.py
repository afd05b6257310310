"""Command line: ``redsync run NAME -- CMD`` runs a command under a permit (like
flock(1) across machines), ``redsync status NAME`` shows a semaphore, and
``redsync demo`` shows several processes sharing one semaphore."""

from __future__ import annotations

import sys

from . import _demo, _run


def main(argv: list[str] | None = None) -> int:
    parser = _run._Parser(prog="redsync", description=__doc__)
    sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=_run._Parser)
    run = _run.add_parser(sub)
    _run.add_status_parser(sub)
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
    own, command = _run.split_command(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(own)
    if command is not None:
        if args.subcommand == "run" and args.command:
            run.error(f"unexpected arguments before --: {' '.join(args.command)}")
        args.command = command
    if args.subcommand == "run":
        return _run.main(args, run)
    if args.subcommand == "status":
        return _run.status(args)
    if args.subcommand == "demo":
        return _demo.run(args.url, args.workers, args.count, args.rounds, args.hold)
    return _demo.worker(args.url, args.name, args.index, args.count, args.rounds, args.hold)


if __name__ == "__main__":
    sys.exit(main())
