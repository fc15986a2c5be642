"""Rung 4: the control plane with kwok playing the kubelets of three fake nodes (one per zone).

kwok's stages make scheduled pods Running/Ready, complete Job pods and finish deletions; no
container runs. State in .cache/cluster/.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.e2e.cluster import controlplane
from tests.e2e.cluster.procs import (
    ROOT,
    ClusterError,
    Paths,
    State,
    binary,
    https_get,
    leftover_pids,
    log,
    ours,
    pidfile_targets,
    print_components,
    start,
    stop,
    wait_for,
    wait_gone,
)

CLUSTER_DIR = Path(os.environ.get("TASKS_CLUSTER_DIR", ROOT / ".cache" / "cluster")).resolve()
STAGES_DIR = ROOT / "tests" / "e2e" / "controlplane" / "stages"
POD_CIDR = "10.244.0.0/16"  # kwok hands out pod IPs from here
ZONES = ("zone-a", "zone-b", "zone-c")
NODES = tuple(f"kwok-{z}" for z in ZONES)
COMPONENTS = (*controlplane.COMPONENTS, "kwok")
UP_TIMEOUT = 90.0


def default_paths() -> Paths:
    return Paths(CLUSTER_DIR)


def kwok_args(paths: Paths) -> list[str]:
    return [
        str(binary("kwok")),
        f"--kubeconfig={paths.kubeconfig}",
        "--manage-all-nodes=true",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
        "--node-lease-duration-seconds=40",
        # The stages kwokctl uses by default (committed copies of sigs.k8s.io/kwok@v0.8.0
        # kustomize/stage/...). Explicit --config files also keep kwok off ~/.kwok.
        *(f"--config={p}" for p in sorted(STAGES_DIR.glob("*.yaml"))),
    ]


def node_objects() -> list[dict[str, object]]:
    capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                    "type": "kwok",
                    "topology.kubernetes.io/region": "local",
                    "topology.kubernetes.io/zone": zone,
                },
            },
            # No kwok taint: there are no real kubelets here, so any pod may use a fake node.
            "status": {"allocatable": capacity, "capacity": capacity},
        }
        for name, zone in zip(NODES, ZONES, strict=True)
    ]


def healthy(paths: Paths, state: State | None) -> bool:
    if not state or set(state.pids) != set(COMPONENTS):
        return False
    if not all(ours(pid, paths) for pid in state.pids.values()):
        return False
    return controlplane.api_ready(paths, state)


def up(paths: Paths | None = None, timeout: float = UP_TIMEOUT) -> State:
    """Start the cluster (or reuse a healthy one) and return its state."""
    paths = paths or default_paths()
    existing = State.load(paths)
    if healthy(paths, existing):
        assert existing
        log(f"cluster already up: {paths.kubeconfig}")
        return existing
    if existing or leftover_pids(paths):
        log("found a stale or partial cluster; stopping it first")
        down(paths)
    for name in (*COMPONENTS, "kubectl"):  # fail before starting anything
        binary(name)

    t0 = time.monotonic()
    deadline = t0 + timeout
    remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    state = controlplane.prepare(paths)
    try:
        controlplane.start_all(paths, state, remaining)
        state.pids["kwok"] = start("kwok", kwok_args(paths), paths)
        state.save(paths)
        controlplane.apply(paths, node_objects())
        wait_for(
            "nodes Ready",
            lambda: controlplane.nodes_ready(paths, set(NODES)),
            remaining(),
            state.pids,
            paths,
        )
        controlplane.wait_default_service_account(paths, state, remaining)
        controlplane.check_alive(paths, state)
    except BaseException:
        log(f"start-up failed; logs are in {paths.logs}; stopping what was started")
        down(paths, quiet=True)
        raise
    state.up_seconds = round(time.monotonic() - t0, 1)
    state.save(paths)
    log(f"cluster up in {state.up_seconds}s: {state.server}")
    return state


def down(paths: Paths | None = None, quiet: bool = False) -> None:
    """Stop every process this cluster started, in reverse start order, then verify that no
    process of this cluster remains."""
    paths = paths or default_paths()
    targets = pidfile_targets(paths, COMPONENTS)
    stopped = stop(dict(reversed(list(targets.items()))), paths)
    wait_gone(paths)
    for name in COMPONENTS:
        paths.pidfile(name).unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    if not quiet:
        log(f"cluster down; stopped {', '.join(stopped) or 'nothing (none was running)'}")


def status(paths: Paths | None = None) -> bool:
    paths = paths or default_paths()
    state = State.load(paths)
    if not state:
        print("cluster: down (no state)")
        return False
    print_components(paths, state, COMPONENTS)
    ok = healthy(paths, state)
    if ok:
        _, body = https_get(paths, state.server, "/version")
        print(f"server: {state.server}  version: {json.loads(body).get('gitVersion')}")
    print(f"kubeconfig: {paths.kubeconfig}")
    print(f"cluster: {'up' if ok else 'unhealthy'}")
    return ok


__all__ = ["NODES", "ClusterError", "down", "healthy", "status", "up"]
