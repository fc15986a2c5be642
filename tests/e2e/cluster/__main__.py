"""python -m tests.e2e.cluster [--node] up|status|down, or --node exec -- CMD..."""

from __future__ import annotations

import argparse
import sys

from tests.e2e.cluster import kwok, node
from tests.e2e.cluster.procs import ClusterError, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.cluster", description=__doc__)
    parser.add_argument(
        "--node", action="store_true", help="the real node (rung 5) instead of kwok (rung 4)"
    )
    parser.add_argument("command", choices=("up", "down", "status", "exec"))
    parser.add_argument("--timeout", type=float, help="seconds allowed for `up`")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="exec: the command to run")
    args = parser.parse_args(argv)
    kind = node if args.node else kwok
    paths = kind.default_paths()
    try:
        if args.command == "up":
            kind.up(paths, timeout=args.timeout or kind.UP_TIMEOUT)
            print(paths.kubeconfig)
            return 0
        if args.command == "down":
            kind.down(paths)
            return 0
        if args.command == "exec":
            if not args.node:
                parser.error("exec is for --node (the kwok cluster listens on the host's loopback)")
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                parser.error("exec needs a command")
            return node.exec_inside(paths, command)
        return 0 if kind.status(paths) else 1
    except ClusterError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
