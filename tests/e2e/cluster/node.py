"""Rung 5: the control plane plus one real node, `tasks-node`: containerd + runc run the pods'
containers, kubelet manages them, kube-proxy routes Service traffic, CoreDNS answers cluster DNS.
Everything runs inside a private network and mount namespace (netns.py); state in .cache/node/.

    start order: control plane -> containerd (+ images) -> CoreDNS -> kubelet -> kube-proxy

Addresses (inside the namespace only): the node is 10.250.0.2 on lo, pods get 10.244.0.0/24 on
the bridge cni0 (gateway 10.244.0.1), Services 10.96.0.0/16; cluster DNS is the Service
kube-system/kube-dns (10.96.0.10) whose EndpointSlice points at CoreDNS on the node address.
The namespace has no link to anything else: an image pull or a lookup outside the cluster fails
fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tests.e2e.cluster import controlplane, host, images, netns
from tests.e2e.cluster.procs import (
    ROOT,
    ClusterError,
    Paths,
    State,
    binary,
    free_ports,
    http_ok,
    leftover_pids,
    log,
    ours,
    pidfile_targets,
    print_components,
    run,
    start,
    stop,
    wait_for,
    wait_gone,
)

NODE_DIR = Path(os.environ.get("TASKS_NODE_DIR", ROOT / ".cache" / "node")).resolve()
NODE_NAME = "tasks-node"
NODE_IP = "10.250.0.2"
POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
ZONE = "zone-a"
CGROUP_ROOT = "tasks-e2e-node"
STORAGE_CLASS = "local"
NODE_COMPONENTS = ("containerd", "coredns", "kubelet", "kube-proxy")
COMPONENTS = (*controlplane.COMPONENTS, *NODE_COMPONENTS)
# Client identities beyond the control plane's: file name -> (CN, O).
CLIENTS = {
    "kubelet": (f"system:node:{NODE_NAME}", "system:nodes"),
    "kube-proxy": ("system:kube-proxy", None),  # bound to system:node-proxier by default RBAC
    "coredns": ("system:tasks-coredns", None),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", "system:masters"),
}
UP_TIMEOUT = 180.0
TOOLS = (
    "etcd",
    "kube",
    "kubectl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "crictl",
    "coredns",
    "pause",
)


def default_paths() -> Paths:
    return Paths(NODE_DIR)


def sock(paths: Paths) -> Path:
    return paths.root / "containerd.sock"


# --------------------------------------------------------------------------- configuration


def containerd_config(paths: Paths) -> str:
    d = paths.root
    return f"""\
version = 3
root = "{d / "containerd" / "root"}"
state = "{d / "containerd" / "state"}"
# NRI would open a socket in /var/run/nri; the other snapshotters are not used.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{sock(paths)}"
[ttrpc]
  address = "{sock(paths)}.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d / "containerd" / "opt"}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{images.PAUSE}"
[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = false
  netns_mounts_under_state_dir = true
  # This host grants no CAP_SYS_RESOURCE: never ask for an OOM score below containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{binary("runc")}"
        Root = "{d / "runc"}"
        # cgroupfs (no systemd here); the CRI reports it to kubelet.
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "{d / "cni" / "net.d"}"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_config(paths: Paths) -> dict[str, Any]:
    """Debian's bridge + host-local plugins: every pod on cni0, hairpin for pod -> own Service."""
    return {
        "cniVersion": "1.0.0",
        "name": "tasks-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.root / "cni" / "ipam"),
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


def kubelet_config(paths: Paths, ports: dict[str, int]) -> dict[str, Any]:
    d = paths.root
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet-healthz"],
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(paths.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{sock(paths)}",
        "imageServiceEndpoint": f"unix://{sock(paths)}",
        # No systemd on this host; cgroup v1 is in maintenance mode but still supported by 1.34,
        # and 1.35 refuses it unless told otherwise.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "cgroupsPerQOS": True,
        "failCgroupV1": False,
        "podLogsDir": str(d / "pod-logs"),
        "volumePluginDir": str(d / "kubelet-plugins"),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [CLUSTER_DNS],
        "resolvConf": str(d / "resolv.conf"),  # empty: pods never see the host's resolver
        # A test node, not a server: no disk-pressure evictions or image garbage collection.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "serializeImagePulls": False,
        "maxPods": 60,
    }


def kube_proxy_config(paths: Paths, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(paths.root / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
        # localhost NodePorts would set route_localnet; nf_conntrack_max is global (read-only in a
        # network namespace): leave both alone, as kind does.
        "iptables": {"localhostNodePorts": False},
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def corefile(paths: Paths, ports: dict[str, int]) -> str:
    # No `forward`: the namespace reaches nothing outside, so a foreign name fails at once.
    return f"""\
.:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{ports["coredns-health"]}
    ready 127.0.0.1:{ports["coredns-ready"]}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {paths.root / "coredns.kubeconfig"} tasks-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""


def cluster_objects() -> list[dict[str, Any]]:
    """What the node's add-ons need from the API: CoreDNS's read access, the kube-dns Service
    and its EndpointSlice (CoreDNS runs on the node, not as a pod), and a default StorageClass for
    the static local PersistentVolumes the tests create."""
    dns_ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "tasks-e2e:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "tasks-e2e:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "tasks-e2e:coredns",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": CLIENTS["coredns"][0],
                }
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns"},
            },
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "ports": [{**p, "targetPort": 53} for p in dns_ports],
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "tasks-e2e",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}
            ],
            "ports": dns_ports,
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        },
    ]


def local_pv(
    paths: Paths, name: str, claim_namespace: str, claim_name: str, size: str = "1Gi"
) -> dict[str, Any]:
    """A static `local` PersistentVolume reserved for one claim, on a fresh directory of the node
    (the local plugin applies the pod's fsGroup, as a real disk would)."""
    directory = paths.root / "pv" / name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "claimRef": {"namespace": claim_namespace, "name": claim_name},
            "local": {"path": str(directory)},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [NODE_NAME],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }


def write_configs(paths: Paths, ports: dict[str, int]) -> None:
    d = paths.root
    (d / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    for sub in ("pod-logs", "kubelet", "kubelet-plugins", "pv"):
        (d / sub).mkdir(exist_ok=True)
    (d / "containerd.toml").write_text(containerd_config(paths))
    (d / "cni" / "net.d" / "10-tasks-e2e.conflist").write_text(
        json.dumps(cni_config(paths), indent=2) + "\n"
    )
    (d / "kubelet.yaml").write_text(json.dumps(kubelet_config(paths, ports), indent=2) + "\n")
    (d / "kube-proxy.yaml").write_text(json.dumps(kube_proxy_config(paths, ports), indent=2) + "\n")
    (d / "Corefile").write_text(corefile(paths, ports))
    (d / "resolv.conf").write_text("")


def component_args(name: str, paths: Paths) -> list[str]:
    d = paths.root
    if name == "containerd":
        return [
            str(binary("containerd", "node-tools")),
            f"--config={d / 'containerd.toml'}",
            "--log-level=warn",
        ]
    if name == "coredns":
        return [str(binary("coredns", "node-tools")), "-conf", str(d / "Corefile")]
    if name == "kubelet":
        return [
            str(binary("kubelet", "node-tools")),
            f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet'}",
            f"--cert-dir={d / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--node-labels=topology.kubernetes.io/zone={ZONE}",
            "--v=1",
        ]
    if name == "kube-proxy":
        return [
            str(binary("kube-proxy", "node-tools")),
            f"--config={d / 'kube-proxy.yaml'}",
            "--v=1",
        ]
    raise ValueError(name)


# --------------------------------------------------------------------------- lifecycle


def healthy(paths: Paths, state: State | None) -> bool:
    if not state or set(state.pids) != set(COMPONENTS):
        return False
    if not all(ours(pid, paths) for pid in state.pids.values()):
        return False
    if not netns.is_inside(state.namespaces):
        with netns.inside(state.holder):
            return controlplane.api_ready(paths, state)
    return controlplane.api_ready(paths, state)


def up(paths: Paths | None = None, timeout: float = UP_TIMEOUT) -> State:
    """Start the node cluster (or reuse a healthy one) and return its state."""
    paths = paths or default_paths()
    existing = State.load(paths)
    if existing and existing.holder and healthy(paths, existing):
        log(f"node cluster already up: {paths.kubeconfig}")
        return existing
    if existing or leftover_pids(paths) or (paths.root / "sysctls.json").exists():
        log("found a stale or partial node cluster; bringing it down first")
        down(paths)
    if os.geteuid() != 0:
        raise ClusterError("the node needs root (namespaces, mounts, cgroups, iptables)")
    for tool in TOOLS:
        binary(tool, "node-tools")
    for tool in ("unshare", "ip", "mount", "nft"):
        if not shutil.which(tool):
            raise ClusterError(
                f"{tool} is missing (Debian packages util-linux, iproute2, mount, nftables)"
            )
    if not Path("/usr/lib/cni/bridge").exists():
        raise ClusterError(
            "the CNI plugins are missing: apt-get install containernetworking-plugins"
        )

    t0 = time.monotonic()
    deadline = t0 + timeout
    remaining = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    archives = images.export()  # buildah works in the host's namespaces (its /run)
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "host.json").write_text(json.dumps(host.snapshot(), indent=2) + "\n")
    host.save_sysctls(paths.root / "sysctls.json")
    state = controlplane.prepare(paths, CLIENTS)
    try:
        host.make_cgroup_root(CGROUP_ROOT)
        state.holder = netns.start_holder(paths)
        state.namespaces = {k: netns.inode(state.holder, k) for k in netns.KINDS}
        state.save(paths)
        keys = (
            "kubelet-healthz",
            "kube-proxy-healthz",
            "kube-proxy-metrics",
            "coredns-health",
            "coredns-ready",
        )
        with netns.inside(state.holder):
            netns.setup(paths, NODE_IP, controlplane.SERVICE_CIDR)
            # The namespace's loopback is empty, so any port is free; pick them the usual way.
            ports = dict(zip(keys, free_ports(len(keys)), strict=True))
            state.ports.update(ports)
            write_configs(paths, ports)
            controlplane.start_all(paths, state, remaining, node=True)
            _start(paths, state, "containerd")
            wait_for("containerd socket", sock(paths).exists, remaining(), state.pids, paths)
            images.load(sock(paths), archives)
            controlplane.apply(paths, cluster_objects())
            _start(paths, state, "coredns")
            _start(paths, state, "kubelet")
            _start(paths, state, "kube-proxy")
            wait_for(
                f"node {NODE_NAME} Ready",
                lambda: controlplane.nodes_ready(paths, {NODE_NAME}),
                remaining(),
                state.pids,
                paths,
            )
            for what, port in (("kube-proxy", "kube-proxy-healthz"), ("coredns", "coredns-ready")):
                path = "/healthz" if what == "kube-proxy" else "/ready"
                url = f"http://127.0.0.1:{ports[port]}{path}"
                wait_for(
                    f"{what} {path}", lambda url=url: http_ok(url), remaining(), state.pids, paths
                )
            controlplane.wait_default_service_account(paths, state, remaining)
            controlplane.check_alive(paths, state)
    except BaseException:
        log(f"start-up failed; logs are in {paths.logs}; bringing down what was started")
        down(paths, quiet=True)
        raise
    state.up_seconds = round(time.monotonic() - t0, 1)
    state.save(paths)
    log(
        f"node cluster up in {state.up_seconds}s: {state.server} "
        f"(inside the namespaces of pid {state.holder})"
    )
    return state


def _start(paths: Paths, state: State, name: str) -> None:
    env = dict(os.environ)
    if (
        name == "kubelet"
    ):  # kubelet execs mount, iptables... from PATH; runc and the CNI plugins are configured
        env["PATH"] = (
            f"{binary('kube').parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        )
    state.pids[name] = start(name, component_args(name, paths), paths, env)
    state.save(paths)


def _remove_pods(paths: Paths) -> None:
    """Stop and remove every pod sandbox through the CRI, so containers exit cleanly."""
    crictl = binary("crictl", "node-tools")
    endpoint = f"unix://{sock(paths)}"
    run(
        [
            crictl,
            "--runtime-endpoint",
            endpoint,
            "--image-endpoint",
            endpoint,
            "--timeout",
            "30s",
            "rmp",
            "--all",
            "--force",
        ],
        check=False,
        timeout=90,
    )


def down(paths: Paths | None = None, quiet: bool = False) -> None:
    """Stop everything, leave nothing: no process, mount, cgroup or namespace of the node, the
    host's sysctls as they were, its network unchanged. Raises when something is left.

    Order: kubelet (so nothing restarts), the pods through the CRI, the node's other components
    and containerd's shims, whatever is left in the pods' cgroups, the control plane, the holder.
    """
    paths = paths or default_paths()
    state = State.load(paths) or State()
    holder = state.holder
    if not holder:
        with contextlib.suppress(OSError, ValueError):
            holder = int(paths.pidfile("holder").read_text())
    targets = pidfile_targets(paths, COMPONENTS)
    control = {n: targets.pop(n) for n in reversed(controlplane.COMPONENTS) if n in targets}
    stopped = stop({n: targets.pop(n) for n in ("kubelet",) if n in targets}, paths)
    if "containerd" in targets and ours(targets["containerd"], paths):
        _remove_pods(paths)  # a unix socket: reachable from outside the network namespace
    order = [n for n in ("kube-proxy", "coredns", "containerd") if n in targets]
    stopped += stop(
        {n: targets[n] for n in [*order, *(n for n in targets if n not in order)]}, paths
    )
    late = {f"pid {p}": p for p in leftover_pids(paths) if p not in control.values()}
    stopped += stop(late, paths, grace=2)  # shims that appeared after the first scan
    host.remove_cgroup_root(CGROUP_ROOT)  # containers whose shim is gone
    stopped += stop(control, paths)
    wait_gone(paths)
    if holder and os.path.exists(f"/proc/{holder}"):
        os.kill(holder, 9)
        stopped.append("holder")
    namespaces = state.namespaces
    deadline = time.monotonic() + 10
    while namespaces and netns.members(namespaces) and time.monotonic() < deadline:
        time.sleep(0.1)
    if namespaces and (left := netns.members(namespaces)):
        raise ClusterError(f"processes still in the node's namespaces: {left}")
    for name in (*COMPONENTS, "holder"):
        paths.pidfile(name).unlink(missing_ok=True)
    paths.state.unlink(missing_ok=True)
    restored = host.restore_sysctls(paths.root / "sysctls.json")
    host.check_unchanged(paths.root / "host.json")
    # The mounts died with the mount namespace; the data under them can go.
    for sub in ("containerd", "kubelet", "runc", "host-overlay", "pv", "cni"):
        shutil.rmtree(paths.root / sub, ignore_errors=True)
    if not quiet:
        log(
            f"node cluster down; stopped {', '.join(stopped) or 'nothing'}; "
            f"sysctls restored: {restored or 'none had changed'}"
        )


def status(paths: Paths | None = None) -> bool:
    paths = paths or default_paths()
    state = State.load(paths)
    if not state:
        print("node cluster: down (no state)")
        return False
    print_components(paths, state, COMPONENTS)
    ok = healthy(paths, state)
    print(
        f"namespaces: holder pid {state.holder} "
        f"({'running' if os.path.exists(f'/proc/{state.holder}') else 'gone'})"
    )
    print(f"kubeconfig: {paths.kubeconfig} (the API server listens inside the namespace)")
    print(f"node cluster: {'up' if ok else 'unhealthy'}")
    return ok


def exec_inside(paths: Paths, argv: list[str]) -> int:
    """Replace this process with `argv`, run in the node's namespaces with KUBECONFIG set."""
    state = State.load(paths)
    if not state or not state.holder:
        raise ClusterError("the node cluster is not up: run `make node-up`")
    with netns.inside(state.holder):
        os.environ["KUBECONFIG"] = str(paths.kubeconfig)
        os.environ["PATH"] = f"{binary('kube').parent}:{os.environ.get('PATH', '')}"
        os.execvp(argv[0], argv)  # noqa: S606 - the developer's own command
    return 127  # not reached
