"""The private network and mount namespace the real node lives in.

A holder process (`unshare --net --mount ... sleep infinity`) owns both namespaces. The harness
enters them with setns(2) before it starts a component, so every process of the node (control
plane, containerd and its containers, kubelet, kube-proxy, CoreDNS) and the tests run there:
routes, the pod bridge, iptables rules, `ip_forward` and every listener stay inside, and mounts
never reach the host.
Inside, host paths that the node's components write to regardless of their configuration are
shadowed: a tmpfs on /run (containerd's shim sockets), and overlays on /var/lib (the CNI cache) and
/var/log (kubelet's /var/log/containers) whose upper layers live in the cluster directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.cluster.procs import ClusterError, Paths, all_pids, log, pid_alive, run

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
KINDS = {"net": CLONE_NEWNET, "mnt": CLONE_NEWNS}
SHADOWED_TMPFS = ("/run",)
SHADOWED_OVERLAY = ("/var/lib", "/var/log")

_libc = ctypes.CDLL(None, use_errno=True)


def inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise ClusterError(f"setns: {os.strerror(err)}")


def start_holder(paths: Paths) -> int:
    """Start the holder (its own session, like every component) and wait for its namespaces."""
    with open(paths.log("holder"), "ab") as logf:
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    paths.pidfile("holder").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 10
    while inode(proc.pid, "net") == inode("self", "net"):  # unshare has not exec'd sleep yet
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ClusterError(f"unshare failed; see {paths.log('holder')}")
        time.sleep(0.02)
    log(f"namespace holder pid {proc.pid}")
    return proc.pid


@contextlib.contextmanager
def inside(holder: int) -> Iterator[None]:
    """Run the block (and every process it starts) in the holder's namespaces. The calling process
    must be single-threaded (setns into a mount namespace requires it)."""
    if not pid_alive(holder):
        raise ClusterError(f"namespace holder {holder} is not running")
    cwd = os.getcwd()
    own = {kind: os.open(f"/proc/self/ns/{kind}", os.O_RDONLY) for kind in KINDS}
    target = {kind: os.open(f"/proc/{holder}/ns/{kind}", os.O_RDONLY) for kind in KINDS}
    try:
        for kind, flag in KINDS.items():
            _setns(target[kind], flag)
        os.chdir(cwd)  # entering a mount namespace resets the working directory
        yield
    finally:
        for kind, flag in KINDS.items():
            _setns(own[kind], flag)
        os.chdir(cwd)
        for fd in (*own.values(), *target.values()):
            os.close(fd)


def is_inside(namespaces: dict[str, int]) -> bool:
    return bool(namespaces) and all(inode("self", k) == namespaces.get(k) for k in KINDS)


def setup(paths: Paths, node_ip: str, service_cidr: str) -> None:
    """Inside the namespaces: loopback up, the node's address on it, forwarding on (pod to
    ClusterIP to pod), a route for Service IPs, and the shadowing mounts."""
    run(["ip", "link", "set", "lo", "up"])
    run(["ip", "addr", "add", f"{node_ip}/32", "dev", "lo"])
    # The node's own processes reach ClusterIPs by kube-proxy's DNAT in OUTPUT, which needs a
    # route to exist first (a real node has its default route; this namespace has none). The
    # packet is re-routed to the pod after DNAT; the source is the node address, not 127.0.0.1.
    run(["ip", "route", "add", service_cidr, "dev", "lo", "src", node_ip])
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    for target in SHADOWED_TMPFS:
        run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", target])
    for target in SHADOWED_OVERLAY:
        overlay(paths, target)


def overlay(paths: Paths, target: str) -> None:
    """Inside: an overlay on `target` whose upper layer is in the cluster directory, so what a
    component writes there (a fixed host path) stays in the namespace."""
    layer = paths.root / "host-overlay" / target.strip("/").replace("/", "-")
    upper, work = layer / "upper", layer / "work"
    for d in (upper, work):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={target},upperdir={upper},workdir={work}"
    run(["mount", "-t", "overlay", "-o", opts, "overlay", target])


def members(namespaces: dict[str, int]) -> list[int]:
    """Every live process in one of these namespaces (the holder included)."""
    found = []
    for pid in all_pids():
        with contextlib.suppress(OSError):
            if any(inode(pid, k) == ino for k, ino in namespaces.items()) and pid_alive(pid):
                found.append(pid)
    return sorted(found)
