"""The real control plane both test clusters share: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler (one multi-call binary `kube`), on 127.0.0.1 with free ports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from tests.e2e.cluster import pki
from tests.e2e.cluster.procs import (
    ClusterError,
    Paths,
    State,
    binary,
    free_ports,
    http_ok,
    https_get,
    pid_alive,
    run,
    start,
    wait_for,
)

KUBE_VERSION_PREFIX = "v1.34."
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
ISSUER = "https://kubernetes.default.svc.cluster.local"
SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    f"IP:{SERVICE_IP}",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
# Start order; `down` stops them in reverse (etcd last, so the API server shuts down cleanly).
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
PORTS = ("etcd", "etcd-peer", "apiserver", "kube-controller-manager", "kube-scheduler")


def component_args(name: str, paths: Paths, ports: Mapping[str, int], node: bool) -> list[str]:
    """Command line of a control-plane component. `node`: a real kubelet joins, so the API server
    gets a client certificate to reach it (logs, exec) by its InternalIP."""
    certs, root = paths.pki, paths.root
    if name == "etcd":
        return [
            str(binary("etcd")),
            "--name=tasks-e2e",
            f"--data-dir={root / 'etcd-data'}",
            f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-cluster=tasks-e2e=http://127.0.0.1:{ports['etcd-peer']}",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=1073741824",
            "--log-level=warn",
        ]
    if name == "kube-apiserver":
        kubelet = [
            f"--kubelet-client-certificate={certs / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={certs / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        return [
            str(binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={root / 'apiserver-certs'}",
            f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={certs / 'sa.pub'}",
            f"--service-account-signing-key-file={certs / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The `kubernetes` Service cannot have a loopback endpoint (validation refuses
            # 127.0.0.0/8, every 10 s): don't reconcile it. No pod here talks to the API.
            "--endpoint-reconciler-type=none",
            # Front proxy (aggregation layer) as kubeadm sets it up; the controller-manager and
            # scheduler read this CA for delegated authentication.
            f"--requestheader-client-ca-file={certs / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={certs / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={certs / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *(kubelet if node else ()),
        ]
    if name in ("kube-controller-manager", "kube-scheduler"):
        kubeconfig = root / f"{name.removeprefix('kube-')}.kubeconfig"
        common = [
            str(binary(name)),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports[name]}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]
        if name == "kube-scheduler":
            return common
        return [
            *common,
            f"--service-account-private-key-file={certs / 'sa.key'}",
            f"--root-ca-file={certs / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={certs / 'ca.crt'}",
            f"--cluster-signing-key-file={certs / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            # Its default, /usr/libexec/kubernetes/..., would be created on the host.
            f"--flex-volume-plugin-dir={root / 'flexvolume'}",
        ]
    raise ValueError(name)


def prepare(paths: Paths, clients: Mapping[str, tuple[str, str | None]] = {}) -> State:
    """Fresh certificates, free ports and kubeconfigs; a new State (nothing started yet)."""
    for sub in ("pki", "etcd-data", "apiserver-certs", "logs"):
        shutil.rmtree(paths.root / sub, ignore_errors=True)
    for p in (paths.root, paths.logs, paths.pids):
        p.mkdir(parents=True, exist_ok=True)
    (paths.root / "etcd-data").mkdir(mode=0o700)
    pki.make_pki(paths.pki, SANS, clients)
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state = State(
        ports=ports, server=server, kubeconfig=str(paths.kubeconfig), started_at=time.time()
    )
    pki.write_kubeconfig(paths.kubeconfig, server, paths.pki, "admin")
    for user in ("controller-manager", "scheduler", *clients):
        pki.write_kubeconfig(paths.root / f"{user}.kubeconfig", server, paths.pki, user)
    return state


def start_all(
    paths: Paths, state: State, remaining: Callable[[], float], node: bool = False
) -> None:
    """etcd, then the API server once etcd is healthy, then the controllers and scheduler."""

    def launch(name: str) -> None:
        state.pids[name] = start(name, component_args(name, paths, state.ports, node), paths)
        state.save(paths)

    launch("etcd")
    etcd = f"http://127.0.0.1:{state.ports['etcd']}/health"
    wait_for("etcd /health", lambda: http_ok(etcd), remaining(), state.pids, paths)
    launch("kube-apiserver")
    wait_for(
        "kube-apiserver /readyz",
        lambda: https_get(paths, state.server, "/readyz")[0] == 200,
        remaining(),
        state.pids,
        paths,
    )
    launch("kube-controller-manager")
    launch("kube-scheduler")


def api_ready(paths: Paths, state: State | None) -> bool:
    if not state:
        return False
    try:
        return https_get(paths, state.server, "/readyz")[0] == 200
    except OSError:
        return False


def kubectl(paths: Paths, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The pinned kubectl as the admin user, never the user's ~/.kube or $KUBECONFIG."""
    env = dict(os.environ, HOME=str(paths.root))
    env.pop("KUBECONFIG", None)
    return run([binary("kubectl"), f"--kubeconfig={paths.kubeconfig}", *args], env=env, **kw)


def apply(paths: Paths, objects: list[dict[str, Any]]) -> None:
    kubectl(
        paths,
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def wait_default_service_account(
    paths: Paths, state: State, remaining: Callable[[], float]
) -> None:
    wait_for(
        "ServiceAccount default/default",
        lambda: (
            kubectl(
                paths, "get", "serviceaccount", "default", "-n", "default", check=False
            ).returncode
            == 0
        ),
        remaining(),
        state.pids,
        paths,
    )


def nodes_ready(paths: Paths, names: set[str]) -> bool:
    out = kubectl(paths, "get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    ready = {
        n["metadata"]["name"]
        for n in json.loads(out.stdout)["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    }
    return names <= ready


def check_alive(paths: Paths, state: State) -> None:
    """Any component may have died after its own check passed."""
    dead = [n for n, pid in state.pids.items() if not pid_alive(pid)]
    if dead:
        raise ClusterError(f"components exited during start-up: {dead}; see {paths.logs}")
