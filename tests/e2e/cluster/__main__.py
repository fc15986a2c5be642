"""python -m tests.e2e.cluster [--node|--docker] up|status|down; --node|--docker exec -- CMD..."""

from __future__ import annotations

import argparse
import sys

from tests.e2e.cluster import docker, kwok, node
from tests.e2e.cluster.procs import ClusterError, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.cluster", description=__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--node", action="store_true", help="the real node (rung 5) instead of kwok (rung 4)"
    )
    which.add_argument(
        "--docker", action="store_true", help="a Docker daemon in its own namespace (rung 6)"
    )
    parser.add_argument("command", choices=("up", "down", "status", "exec"))
    parser.add_argument("--timeout", type=float, help="seconds allowed for `up`")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="exec: the command to run")
    args = parser.parse_args(argv)
    kind = node if args.node else docker if args.docker else kwok
    paths = kind.default_paths()
    try:
        if args.command == "up":
            kind.up(paths, timeout=args.timeout or kind.UP_TIMEOUT)
            print(f"DOCKER_HOST=unix://{docker.sock(paths)}" if args.docker else paths.kubeconfig)
            return 0
        if args.command == "down":
            kind.down(paths)
            return 0
        if args.command == "exec":
            if not (args.node or args.docker):
                parser.error("exec is for --node or --docker (kwok listens on the host's loopback)")
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                parser.error("exec needs a command")
            return kind.exec_inside(paths, command)
        return 0 if kind.status(paths) else 1
    except ClusterError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
