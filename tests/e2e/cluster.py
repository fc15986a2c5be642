"""A real Kubernetes control plane on 127.0.0.1, for the rung-4 e2e tests.

    python -m tests.e2e.cluster up        # start (or reuse) the cluster, print the kubeconfig path
    python -m tests.e2e.cluster status    # print component state; exit 1 unless all are up
    python -m tests.e2e.cluster down      # stop every process `up` started, verify none remain

Components are Go builds made by `make cluster-tools` into .tools/bin (tests/e2e/controlplane/):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler (one multi-call binary `kube`) and
kwok, which plays the kubelet for three fake nodes (one per zone). Every object goes through the
real API server: validation, defaulting, admission (the default plugin set, PodSecurity included),
RBAC, and the real controllers and scheduler. kwok's stages make pods Running/Ready, complete Job
pods, and finish deletions.

Everything lives under .cache/cluster/ (git-ignored): certificates made here with the openssl CLI,
etcd data, logs/<component>.log, pids/<component>.pid, state.json and the admin kubeconfig. Ports
are picked free at start. Only the standard library is used: `make cluster-up` needs no virtualenv.

Environment overrides: TASKS_CLUSTER_DIR (state directory), TASKS_TOOLS_BIN (binaries).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("TASKS_CLUSTER_DIR", ROOT / ".cache" / "cluster")).resolve()
TOOLS_BIN = Path(os.environ.get("TASKS_TOOLS_BIN", ROOT / ".tools" / "bin")).resolve()
STAGES_DIR = Path(__file__).resolve().parent / "controlplane" / "stages"

KUBE_VERSION_PREFIX = "v1.34."
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"  # kwok hands out pod IPs from here
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
ZONES = ("zone-a", "zone-b", "zone-c")
NODES = tuple(f"kwok-{z}" for z in ZONES)
# Start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
UP_TIMEOUT = 90.0


class ClusterError(RuntimeError):
    pass


@dataclass
class Paths:
    root: Path = CLUSTER_DIR

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def pidfile(self, component: str) -> Path:
        return self.pids / f"{component}.pid"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"


@dataclass
class State:
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    server: str = ""
    kubeconfig: str = ""
    started_at: float = 0.0
    up_seconds: float = 0.0

    @classmethod
    def load(cls, paths: Paths) -> State | None:
        try:
            return cls(**json.loads(paths.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, paths: Paths) -> None:
        paths.state.write_text(json.dumps(self.__dict__, indent=2) + "\n")


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def binary(name: str) -> Path:
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing: run `make cluster-tools` first")
    return path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(cmd: list[str | os.PathLike], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        return subprocess.run([str(c) for c in cmd], **kw)
    except subprocess.CalledProcessError as e:
        raise ClusterError(
            f"{' '.join(map(str, cmd))} failed ({e.returncode}): {e.stderr or e.stdout}"
        ) from e


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ours(pid: int, paths: Paths) -> bool:
    """Is pid a live process of this cluster: one of our binaries (.tools/bin) whose command line
    names this cluster's directory (every component's does)? Guards against pid reuse, and never
    matches an editor or `tail` that merely has a log open."""
    if not pid_alive(pid):
        return False
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.parent == TOOLS_BIN.resolve() and str(paths.root) in cmdline(pid)


def leftover_pids(paths: Paths) -> list[int]:
    """Every live process whose command line references this cluster's directory."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and ours(int(entry), paths):
            found.append(int(entry))
    return sorted(found)


# --------------------------------------------------------------------------- certificates


def _openssl_cnf(path: Path, cn: str, org: str | None, ext: str) -> Path:
    dn = f"CN = {cn}\n" + (f"O = {org}\n" if org else "")
    path.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\n\n[dn]\n"
        + dn
        + "\n[ext]\n"
        + textwrap.dedent(ext).strip()
        + "\n"
    )
    return path


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs (admin in system:masters, controller-manager,
    scheduler, front-proxy-client): ECDSA P-256, valid for 30 days. The service-account key
    pair: RSA-2048 (RS256)."""
    pki.mkdir(parents=True, exist_ok=True)
    days = "30"
    openssl = shutil.which("openssl")
    if not openssl:
        raise ClusterError(
            "the openssl CLI is required to make certificates (apt-get install openssl)"
        )

    ca_cnf = _openssl_cnf(
        pki / "ca.cnf",
        "tasks-e2e-ca",
        None,
        """
        basicConstraints = critical, CA:TRUE
        keyUsage = critical, keyCertSign, cRLSign, digitalSignature
        subjectKeyIdentifier = hash
        """,
    )
    ec_key = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
    run([openssl, *ec_key, pki / "ca.key"])
    run(
        [
            openssl,
            "req",
            "-x509",
            "-new",
            "-key",
            pki / "ca.key",
            "-out",
            pki / "ca.crt",
            "-days",
            days,
            "-config",
            ca_cnf,
            "-extensions",
            "ext",
        ]
    )

    def leaf(name: str, cn: str, org: str | None, ext: str) -> None:
        cnf = _openssl_cnf(pki / f"{name}.cnf", cn, org, ext)
        run([openssl, *ec_key, pki / f"{name}.key"])
        run(
            [
                openssl,
                "req",
                "-new",
                "-key",
                pki / f"{name}.key",
                "-out",
                pki / f"{name}.csr",
                "-config",
                cnf,
            ]
        )
        run(
            [
                openssl,
                "x509",
                "-req",
                "-in",
                pki / f"{name}.csr",
                "-CA",
                pki / "ca.crt",
                "-CAkey",
                pki / "ca.key",
                "-CAcreateserial",
                "-out",
                pki / f"{name}.crt",
                "-days",
                days,
                "-extfile",
                cnf,
                "-extensions",
                "ext",
            ]
        )

    sans = ", ".join(SANS)
    leaf(
        "apiserver",
        "kube-apiserver",
        None,
        f"""
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = serverAuth
        subjectAltName = {sans}
        """,
    )
    client_ext = """
        basicConstraints = critical, CA:FALSE
        keyUsage = critical, digitalSignature
        extendedKeyUsage = clientAuth
        """
    leaf("admin", "kubernetes-admin", "system:masters", client_ext)
    leaf("front-proxy-client", "front-proxy-client", None, client_ext)
    leaf("controller-manager", "system:kube-controller-manager", None, client_ext)
    leaf("scheduler", "system:kube-scheduler", None, client_ext)

    run([openssl, "genrsa", "-out", pki / "sa.key", "2048"])
    run([openssl, "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"])
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tasks-e2e",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "tasks-e2e", "context": {"cluster": "tasks-e2e", "user": user}}],
        "current-context": "tasks-e2e",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is YAML
    path.chmod(0o600)


# --------------------------------------------------------------------------- processes


def component_args(name: str, paths: Paths, ports: dict[str, int]) -> list[str]:
    pki, root = paths.pki, paths.root
    if name == "etcd":
        return [
            str(binary("etcd")),
            "--name=tasks-e2e",
            f"--data-dir={paths.etcd_data}",
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
        return [
            str(binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={root / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The `kubernetes` Service cannot have a loopback endpoint (validation refuses
            # 127.0.0.0/8, every 10 s): don't reconcile it. No pod here talks to the API anyway.
            "--endpoint-reconciler-type=none",
            # Front proxy (aggregation layer) as kubeadm sets it up; the controller-manager and
            # scheduler read this CA for delegated authentication.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
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
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
        ]
    if name == "kwok":
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
    raise ValueError(name)


def start(name: str, paths: Paths, ports: dict[str, int]) -> int:
    args = component_args(name, paths, ports)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "ETCDCTL_API")}
    # kwok and kubectl read ~/.kwok and ~/.kube: keep them out of the real home.
    env["HOME"] = str(paths.root)
    with open(paths.log(name), "ab") as logf:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            env=env,
            start_new_session=True,  # own process group: `down` signals the group
        )
    paths.pidfile(name).write_text(f"{proc.pid}\n")
    log(f"started {name} (pid {proc.pid}), log {paths.log(name)}")
    return proc.pid


def wait_for(
    what: str, check, timeout: float, pids: dict[str, int] | None = None, paths: Paths | None = None
):
    deadline = time.monotonic() + timeout
    last_err: object = None
    while time.monotonic() < deadline:
        for name, pid in (pids or {}).items():
            if not pid_alive(pid):
                tail = ""
                if paths:
                    with contextlib.suppress(OSError):
                        lines = paths.log(name).read_text(errors="replace").splitlines()
                        tail = "\n".join(lines[-25:])
                raise ClusterError(
                    f"{name} (pid {pid}) exited while waiting for {what}; log tail:\n{tail}"
                )
        try:
            result = check()
            if result:
                return result
        except Exception as e:
            last_err = e
        time.sleep(0.25)
    raise ClusterError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_err})"
    )


def https_get(paths: Paths, server: str, path: str, timeout: float = 3.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(paths.pki / "ca.crt"))
    ctx.load_cert_chain(str(paths.pki / "admin.crt"), str(paths.pki / "admin.key"))
    try:
        # S310: the URL is always https://127.0.0.1:<port> built by up()
        with urllib.request.urlopen(server + path, context=ctx, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - http://127.0.0.1 only
        return r.status == 200


def kubectl(paths: Paths, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(paths.root))
    env.pop("KUBECONFIG", None)
    return run([binary("kubectl"), f"--kubeconfig={paths.kubeconfig}", *args], env=env, **kw)


def node_manifest() -> str:
    nodes = []
    for name, zone in zip(NODES, ZONES, strict=True):
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        "kwok.x-k8s.io/node": "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
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
                "status": {
                    "allocatable": {
                        "cpu": "16",
                        "memory": "64Gi",
                        "pods": "110",
                        "ephemeral-storage": "100Gi",
                    },
                    "capacity": {
                        "cpu": "16",
                        "memory": "64Gi",
                        "pods": "110",
                        "ephemeral-storage": "100Gi",
                    },
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})


# --------------------------------------------------------------------------- commands


def healthy(paths: Paths, state: State | None) -> bool:
    if not state or set(state.pids) != set(COMPONENTS):
        return False
    if not all(ours(pid, paths) for pid in state.pids.values()):
        return False
    try:
        return https_get(paths, state.server, "/readyz")[0] == 200
    except OSError:
        return False


def up(paths: Paths | None = None, timeout: float = UP_TIMEOUT) -> State:
    """Start the cluster (or reuse a healthy one) and return its state."""
    paths = paths or Paths()
    existing = State.load(paths)
    if healthy(paths, existing):
        log(f"cluster already up: {paths.kubeconfig}")
        return existing
    if existing or leftover_pids(paths):
        log("found a stale or partial cluster; stopping it first")
        down(paths)
    for name in COMPONENTS:  # fail before starting anything
        binary(name)
    binary("kubectl")

    t0 = time.monotonic()
    for sub in ("pki", "etcd-data", "apiserver-certs", "logs"):
        shutil.rmtree(paths.root / sub, ignore_errors=True)
    for p in (paths.root, paths.logs, paths.pids):
        p.mkdir(parents=True, exist_ok=True)
    paths.etcd_data.mkdir(mode=0o700)
    make_pki(paths.pki)

    keys = ("etcd", "etcd-peer", "apiserver", "kube-controller-manager", "kube-scheduler")
    ports = dict(zip(keys, free_ports(len(keys)), strict=True))
    server = f"https://127.0.0.1:{ports['apiserver']}"
    state = State(
        ports=ports, server=server, kubeconfig=str(paths.kubeconfig), started_at=time.time()
    )
    write_kubeconfig(paths.kubeconfig, server, paths.pki, "admin")
    write_kubeconfig(
        paths.root / "controller-manager.kubeconfig", server, paths.pki, "controller-manager"
    )
    write_kubeconfig(paths.root / "scheduler.kubeconfig", server, paths.pki, "scheduler")

    deadline = t0 + timeout
    remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    try:
        state.pids["etcd"] = start("etcd", paths, ports)
        state.save(paths)
        wait_for(
            "etcd /health",
            lambda: http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
            remaining(),
            state.pids,
            paths,
        )

        state.pids["kube-apiserver"] = start("kube-apiserver", paths, ports)
        state.save(paths)
        wait_for(
            "kube-apiserver /readyz",
            lambda: https_get(paths, server, "/readyz")[0] == 200,
            remaining(),
            state.pids,
            paths,
        )

        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            state.pids[name] = start(name, paths, ports)
        state.save(paths)

        kubectl(paths, "apply", "-f", "-", input=node_manifest())
        wait_for("nodes Ready", lambda: _nodes_ready(paths), remaining(), state.pids, paths)
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
        # Any component may have died after its own check passed.
        dead = [n for n, pid in state.pids.items() if not pid_alive(pid)]
        if dead:
            raise ClusterError(f"components exited during start-up: {dead}; see {paths.logs}")
    except BaseException:
        log(f"start-up failed; logs are in {paths.logs}; stopping what was started")
        down(paths, quiet=True)
        raise
    state.up_seconds = round(time.monotonic() - t0, 1)
    state.save(paths)
    log(f"cluster up in {state.up_seconds}s: {server}")
    return state


def _nodes_ready(paths: Paths) -> bool:
    out = kubectl(paths, "get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    items = json.loads(out.stdout)["items"]
    ready = {
        n["metadata"]["name"]
        for n in items
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", [])
        )
    }
    return set(NODES) <= ready


def down(paths: Paths | None = None, quiet: bool = False, grace: float = 10.0) -> None:
    """Stop every process this cluster started, in reverse start order (kwok ... etcd last, so the
    API server can shut down cleanly): SIGTERM to its process group, SIGKILL after `grace`
    seconds. Then verify that no process of this cluster remains."""
    paths = paths or Paths()
    targets: dict[str, int] = {}
    for name in COMPONENTS:
        try:
            targets[name] = int(paths.pidfile(name).read_text().strip())
        except (OSError, ValueError):
            continue
    for pid in leftover_pids(paths):  # anything of ours that a pid file missed
        if pid not in targets.values():
            targets[f"pid {pid}"] = pid

    stopped = []
    for name in reversed(list(targets)):
        pid = targets[name]
        if not ours(pid, paths):
            continue
        stopped.append(name)
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and ours(pid, paths):
            time.sleep(0.05)
        if ours(pid, paths):
            log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; sending SIGKILL")
            _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and leftover_pids(paths):
        time.sleep(0.05)
    left = leftover_pids(paths)
    if left:
        raise ClusterError(f"processes still running after down: {left}")
    for name in COMPONENTS:
        paths.pidfile(name).unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    if not quiet:
        log(f"cluster down; stopped {', '.join(stopped) or 'nothing (none was running)'}")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each component leads its own process group (start_new_session)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def status(paths: Paths | None = None) -> bool:
    paths = paths or Paths()
    state = State.load(paths)
    if not state:
        print("cluster: down (no state)")
        return False
    for name in COMPONENTS:
        pid = state.pids.get(name)
        running = "running" if pid and ours(pid, paths) else "NOT RUNNING"
        print(f"{name:24} pid {pid or '-':>7}  {running}")
    ok = healthy(paths, state)
    if ok:
        _, body = https_get(paths, state.server, "/version")
        print(f"server: {state.server}  version: {json.loads(body).get('gitVersion')}")
    print(f"kubeconfig: {paths.kubeconfig}")
    print(f"cluster: {'up' if ok else 'unhealthy'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--timeout", type=float, default=UP_TIMEOUT, help="seconds allowed for `up`"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(timeout=args.timeout)
            print(Paths().kubeconfig)
            return 0
        if args.command == "down":
            down()
            return 0
        return 0 if status() else 1
    except ClusterError as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
