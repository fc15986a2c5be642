"""Rung 6: a kind cluster, `tasks`, made with the pinned kind CLI on the node image of kindnode.py,
in the Docker daemon of docker.py and inside its namespace; its kubeconfig in .cache/docker/kind/.

`up` starts (or reuses) the daemon, loads the node image, creates the cluster (or reuses a
healthy one), `kind load`s the images rung 5 imports (images.export(): the app, its next-layout
build, the Redis stand-in, pause), and routes the cluster's Service and pod ranges to the node
inside the namespace, so the suite reaches ClusterIPs as it does on rung 5. `down` deletes the
cluster, then brings the daemon down (which checks the host).

    python -m tests.e2e.cluster --kind up|status|down
    python -m tests.e2e.cluster --kind exec -- CMD...   # KUBECONFIG and DOCKER_HOST set
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tests.e2e.cluster import docker, images, kindnode, netns
from tests.e2e.cluster.procs import ClusterError, Paths, State, binary, log, run

CLUSTER = "tasks"  # the name the README's "Develop on kind" gives: context kind-tasks
NODE = f"{CLUSTER}-control-plane"
# kind's defaults (its cluster config sets neither).
SERVICE_SUBNET = "10.96.0.0/16"
POD_SUBNET = "10.244.0.0/16"
UP_TIMEOUT = 400.0


def default_paths() -> Paths:
    return docker.default_paths()


def kubeconfig(paths: Paths) -> Path:
    return paths.root / "kind" / "kubeconfig"


def client_env(paths: Paths) -> dict[str, str]:
    """docker's client env plus the cluster's kubeconfig (kind edits the one it is given: never
    ~/.kube/config)."""
    return {**docker.client_env(paths), "KUBECONFIG": str(kubeconfig(paths))}


def _kind(paths: Paths, *args: str, **kw: object) -> str:
    return run(  # type: ignore[call-overload, no-any-return]
        [binary("kind", "kind-tools"), *args], env=client_env(paths), **kw
    ).stdout.strip()


def node_ready(paths: Paths) -> bool:
    ready = run(
        [binary("kubectl"), "get", "node", NODE, "-o",
         'jsonpath={.status.conditions[?(@.type=="Ready")].status}'],
        env=client_env(paths), check=False, timeout=15,
    )  # fmt: skip
    return ready.returncode == 0 and ready.stdout.strip() == "True"


def healthy(paths: Paths, state: State | None) -> bool:
    if not docker.healthy(paths, state) or not state or not state.kubeconfig:
        return False
    with netns.inside(state.holder):
        return node_ready(paths)


def up(paths: Paths | None = None, timeout: float = UP_TIMEOUT) -> State:
    paths = paths or default_paths()
    versions = kindnode.versions()
    node_image = kindnode.refs(versions)["node"]
    node_archive = images.archived(node_image)
    if not node_archive:
        raise ClusterError(f"{node_image} has no archive: run `make kind-node-image`")
    archives = images.export()  # buildah works in the host's namespaces (its /run)
    state = docker.up(paths)
    if healthy(paths, state):
        log(f"kind cluster {CLUSTER} already up: KUBECONFIG={kubeconfig(paths)}")
        return state
    kubeconfig(paths).parent.mkdir(exist_ok=True)
    config = paths.root / "kind" / "cluster.json"
    config.write_text(kindnode.cluster_config(versions))
    t0 = time.monotonic()
    try:
        with netns.inside(state.holder):
            docker.load_archive(paths, node_archive)
            _kind(paths, "delete", "cluster", "--name", CLUSTER)  # a stale one
            _kind(
                paths, "create", "cluster", "--name", CLUSTER, "--image", node_image,
                "--config", str(config), "--wait", f"{int(timeout)}s", timeout=timeout + 60,
            )  # fmt: skip
            created = time.monotonic() - t0
            for archive in archives:
                _kind(paths, "load", "image-archive", str(archive), "--name", CLUSTER, timeout=300)
            fmt = "{{.NetworkSettings.Networks.kind.IPAddress}}"
            node_ip = run(
                [docker.DOCKER, "inspect", "--format", fmt, NODE], env=client_env(paths)
            ).stdout.strip()
            for subnet in (SERVICE_SUBNET, POD_SUBNET):
                run(["ip", "route", "replace", subnet, "via", node_ip])
    except BaseException:
        log("kind up failed; bringing down what was started")
        down(paths)
        raise
    state.kubeconfig = str(kubeconfig(paths))
    state.up_seconds = round(time.monotonic() - t0, 1)
    state.save(paths)
    log(
        f"kind cluster {CLUSTER} up: created in {created:.1f}s, images loaded in "
        f"{state.up_seconds - created:.1f}s; KUBECONFIG={kubeconfig(paths)}"
    )
    return state


def down(paths: Paths | None = None) -> None:
    """Delete the cluster (if the daemon is there to ask), then bring the daemon down."""
    paths = paths or default_paths()
    state = State.load(paths)
    if state and docker.healthy(paths, state):
        with netns.inside(state.holder), contextlib.suppress(ClusterError):
            _kind(paths, "delete", "cluster", "--name", CLUSTER, timeout=120)
    kubeconfig(paths).unlink(missing_ok=True)
    docker.down(paths)


def status(paths: Paths | None = None) -> bool:
    paths = paths or default_paths()
    state = State.load(paths)
    ok = healthy(paths, state)
    print(f"kind cluster {CLUSTER}: {'up' if ok else 'down'}; KUBECONFIG={kubeconfig(paths)}")
    return ok


def exec_inside(paths: Paths, argv: list[str]) -> int:
    """Replace this process with `argv`, in the daemon's namespaces, with client_env()."""
    return docker.exec_inside(paths, argv, client_env(paths))
