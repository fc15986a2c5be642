"""What the real node does to the host beyond its namespaces, undone and verified at `down`.

- Global sysctls that kubelet rewrites at start (setupKernelTunables): saved before the first
  `up`, restored at `down`.
- cgroups: kubelet and runc create the pods' cgroups under one root of ours in every cgroup v1
  hierarchy; `down` kills what is left in it and removes it.
- A snapshot of the host's network (links, nftables ruleset, ip_forward), its mounts, its
  top-level cgroups and the paths a node would write by default, compared at `down`: a difference
  is an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.cluster.procs import ClusterError, log

SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory", "vm/panic_on_oom")
# Where a kubelet, containerd or CNI plugin writes unless told otherwise.
DEFAULT_PATHS = (
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/etc/cni",
    "/opt/cni",
    "/etc/kubernetes",
    "/usr/libexec/kubernetes",
    "/opt/containerd",
)
CGROUP_FS = Path("/sys/fs/cgroup")


def save_sysctls(path: Path) -> None:
    """Record the host's values, unless a previous `up` (not yet brought down) already did: its
    file holds the values from before any kubelet ran."""
    if path.exists():
        return
    values = {s: Path("/proc/sys", s).read_text().strip() for s in SYSCTLS}
    path.write_text(json.dumps(values, indent=2) + "\n")


def restore_sysctls(path: Path) -> dict[str, str]:
    """Write back the saved values; returns what had changed, as "saved <- found"."""
    try:
        values: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    found = {s: Path("/proc/sys", s).read_text().strip() for s in values}
    for name, value in values.items():
        Path("/proc/sys", name).write_text(value + "\n")
    now = {s: Path("/proc/sys", s).read_text().strip() for s in values}
    if now != values:
        raise ClusterError(f"sysctls not restored: {now} != {values}")
    path.unlink()
    return {s: f"{values[s]} <- {found[s]}" for s in values if found[s] != values[s]}


def hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy: the v1 controllers and the unified (v2) one."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(fields[4]))
    return sorted(found)


def make_cgroup_root(name: str) -> None:
    """Create /<name> in each v1 hierarchy (kubelet's cgroupRoot must exist in all of them)."""
    for h in hierarchies():
        d = h / name
        if h.name == "unified":
            continue
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":  # a new cpuset is empty until given its parent's CPUs and nodes
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((h / f).read_text())


def cgroup_pids(name: str) -> set[int]:
    pids: set[int] = set()
    for h in hierarchies():
        for procs in (h / name).rglob("cgroup.procs") if (h / name).is_dir() else ():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroup_root(name: str, timeout: float = 15.0) -> None:
    """Kill every process left in the tree, then remove its directories, deepest first."""
    deadline = time.monotonic() + timeout
    while pids := cgroup_pids(name):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ClusterError(f"processes left in cgroup /{name}: {sorted(pids)}")
        time.sleep(0.1)
    for h in hierarchies():
        root = h / name
        if not root.is_dir():
            continue
        dirs = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, root]:
            for _ in range(50):  # a cgroup stays busy for a moment after its last task exits
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                raise ClusterError(f"cannot remove cgroup {d}")


def snapshot() -> dict[str, object]:
    """The host state the node must leave as it found it."""

    def out(*cmd: str) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return proc.stdout if proc.returncode == 0 else f"<{cmd[0]} failed: {proc.stderr.strip()}>"

    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f)
    links = sorted(
        line.split(":")[1].strip().split("@")[0] for line in out("ip", "-o", "link").splitlines()
    )
    return {
        "links": links,
        "nftables": out("nft", "list", "ruleset"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        "mounts": mounts,
        "cgroups": {
            str(h): sorted(p.name for p in h.iterdir() if p.is_dir()) for h in hierarchies()
        },
        "paths": sorted(p for p in DEFAULT_PATHS if os.path.lexists(p)),
    }


def compare(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return [
        f"{key}: before {before.get(key)!r}, after {after.get(key)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def check_unchanged(path: Path) -> None:
    """Compare the host with the snapshot taken at `up`; raise on any difference."""
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        return
    diffs = compare(before, snapshot())
    if diffs:
        raise ClusterError("the host changed:\n  " + "\n  ".join(diffs))
    path.unlink()
    log("host unchanged: links, nftables, ip_forward, mounts, cgroups, default paths, sysctls")
