"""python -m tests.e2e.cluster [--node|--docker|--kind] up|status|down; --node|--docker|--kind exec
-- CMD..."""

from __future__ import annotations

import argparse
import sys

from tests.e2e.cluster import docker, kind, kwok, node
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
    which.add_argument(
        "--kind", action="store_true", help="a kind cluster on that Docker daemon (rung 6)"
    )
    parser.add_argument("command", choices=("up", "down", "status", "exec"))
    parser.add_argument("--timeout", type=float, help="seconds allowed for `up`")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="exec: the command to run")
    args = parser.parse_args(argv)
    harness = node if args.node else docker if args.docker else kind if args.kind else kwok
    paths = harness.default_paths()
    try:
        if args.command == "up":
            harness.up(paths, timeout=args.timeout or harness.UP_TIMEOUT)
            if args.docker:
                print(f"DOCKER_HOST=unix://{docker.sock(paths)}")
            else:
                print(kind.kubeconfig(paths) if args.kind else paths.kubeconfig)
            return 0
        if args.command == "down":
            harness.down(paths)
            return 0
        if args.command == "exec":
            if harness is kwok:
                parser.error(
                    "exec is for --node, --docker or --kind (kwok is on the host's loopback)"
                )
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                parser.error("exec needs a command")
            return harness.exec_inside(paths, command)
        return 0 if harness.status(paths) else 1
    except ClusterError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
