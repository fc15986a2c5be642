#!/usr/bin/python3
"""dockerd's default runtime in the docker harness: runc, minus the capabilities this process's
bounding set lacks.

Docker 20.10 asks for every capability the kernel knows for a `--privileged` container (and for
`docker exec --privileged`), whether or not the daemon holds it; runc then fails with "unable to
apply caps: operation not permitted" where the bounding set is reduced (a sandbox without
CAP_SYS_RESOURCE, say). Docker 23 clamps the set itself (moby PR 42933); Debian 12's 20.10 does
not. This wrapper drops the missing ones from the bundle's config.json (`create`, `run`) or the
process spec (`exec --process`), then execs /usr/sbin/runc with the same arguments. With a full
bounding set it changes nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

RUNC = "/usr/sbin/runc"
# linux/capability.h, in bit order.
NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def missing() -> set[str]:
    status = Path("/proc/self/status").read_text()
    bounding = int(status.split("CapBnd:", 1)[1].split()[0], 16)
    return {f"CAP_{name}" for bit, name in enumerate(NAMES) if not bounding >> bit & 1}


def option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def strip(path: Path, drop: set[str], nested: bool) -> None:
    spec = json.loads(path.read_text())
    caps = spec.get("process", {}).get("capabilities") if nested else spec.get("capabilities")
    if not caps or not any(drop & set(v) for v in caps.values() if isinstance(v, list)):
        return
    for key, value in caps.items():
        if isinstance(value, list):
            caps[key] = [c for c in value if c not in drop]
    tmp = path.with_name(path.name + ".caps")
    tmp.write_text(json.dumps(spec))
    tmp.replace(path)


def main(argv: list[str]) -> None:
    drop = missing()
    if drop:
        bundle = option(argv, "--bundle", "-b")
        if bundle and (Path(bundle) / "config.json").is_file():
            strip(Path(bundle) / "config.json", drop, nested=True)
        process = option(argv, "--process", "-p")
        if process and Path(process).is_file():
            strip(Path(process), drop, nested=False)
    os.execv(RUNC, [RUNC, *argv])  # noqa: S606 - the fixed runc, dockerd's arguments


if __name__ == "__main__":
    main(sys.argv[1:])
