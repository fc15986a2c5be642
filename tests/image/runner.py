"""Run a process from a built image the way a container runtime would, with no engine.

The image's rootfs comes from `buildah mount`; its OCI config (Cmd, Entrypoint, Env, WorkingDir,
User) from `buildah inspect`. Each process gets, in a private mount namespace:

- the rootfs bind-mounted read-only over itself (a read-only root filesystem),
- a fresh tmpfs on /tmp (the only writable place), a minimal /dev and /proc,
- chroot into it, the working dir, no supplementary groups, the image's UID/GID, no_new_privs,
- exactly the image's Env plus what the caller adds, and the host network (127.0.0.1 reaches it).

No process forks along the way (sh, setpriv, env and unshare all exec), so the returned Popen *is*
the container's main process: its pid takes SIGTERM and its exit code is the container's.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# Runs as root on the host, inside `unshare --mount --propagation private`; mounts vanish with it.
_SETUP = r"""
set -eu
root=$1; shift
mount --bind -o ro "$root" "$root"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=64m tmpfs "$root/tmp"
mount -t tmpfs -o mode=755,nosuid,noexec,size=64k tmpfs "$root/dev"
for d in null zero full random urandom; do
  touch "$root/dev/$d"; mount --bind "/dev/$d" "$root/dev/$d"
done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
exec "$@"
"""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config that say how to run it."""

    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    working_dir: str
    user: str
    exposed_ports: list[str]
    labels: dict[str, str]

    @classmethod
    def from_inspect(cls, inspect: Mapping[str, Any]) -> ImageConfig:
        config = inspect["OCIv1"]["config"]
        env = dict(item.split("=", 1) for item in config.get("Env") or [])
        return cls(
            entrypoint=list(config.get("Entrypoint") or []),
            cmd=list(config.get("Cmd") or []),
            env=env,
            working_dir=config.get("WorkingDir") or "/",
            user=config.get("User") or "0:0",
            exposed_ports=sorted(config.get("ExposedPorts") or {}),
            labels=dict(config.get("Labels") or {}),
        )


def buildah_json(buildah: Sequence[str], *args: str) -> Any:
    out = subprocess.run([*buildah, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def _lookup(path: Path, name: str) -> list[str] | None:
    """The colon-separated entry named `name` in an /etc/passwd-style file of the image."""
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split(":")
            if fields and fields[0] == name:
                return fields
    return None


def resolve_user(rootfs: Path, user: str) -> tuple[int, int, str]:
    """UID, GID and HOME for an OCI `User` (uid, name, uid:gid, name:group) against the image."""
    name, _, group = user.partition(":")
    if name.isdigit():
        uid = int(name)
        entry = next((f for f in _passwd(rootfs) if f[2] == name), None)
    else:
        entry = _lookup(rootfs / "etc/passwd", name)
        if entry is None:
            raise ValueError(f"user {name!r} is not in the image's /etc/passwd")
        uid = int(entry[2])
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gentry = _lookup(rootfs / "etc/group", group)
            if gentry is None:
                raise ValueError(f"group {group!r} is not in the image's /etc/group")
            gid = int(gentry[2])
    else:
        gid = int(entry[3]) if entry else uid
    home = entry[5] if entry and len(entry) > 5 else "/"
    return uid, gid, home


def _passwd(rootfs: Path) -> list[list[str]]:
    path = rootfs / "etc/passwd"
    return [line.split(":") for line in path.read_text().splitlines()] if path.exists() else []


class ImageRootfs:
    """A working container of `image`, mounted once; every `popen` runs a fresh container on it.

    The rootfs is shared read-only, so runs cannot see each other's writes (there are none).
    """

    def __init__(self, buildah: Sequence[str], image: str) -> None:
        self.buildah = list(buildah)
        self.image = image
        self.config = ImageConfig.from_inspect(
            buildah_json(self.buildah, "inspect", "--type", "image", image)
        )
        self.name = f"tasks-image-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [*self.buildah, "from", "--pull=false", "--name", self.name, image],
            check=True,
            capture_output=True,
        )
        mounted = subprocess.run(
            [*self.buildah, "mount", self.name], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.path = Path(mounted)

    def close(self) -> None:
        subprocess.run([*self.buildah, "umount", self.name], capture_output=True)
        subprocess.run([*self.buildah, "rm", self.name], capture_output=True)

    def command(
        self, args: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> list[str]:
        """The host command line that runs `args` (default: Entrypoint + Cmd) in a container."""
        argv = list(args) if args is not None else [*self.config.entrypoint, *self.config.cmd]
        if not argv:
            raise ValueError("the image has no Cmd or Entrypoint and no command was given")
        uid, gid, home = resolve_user(self.path, self.config.user)
        full_env = {"HOME": home, "HOSTNAME": self.name, **self.config.env, **(env or {})}
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            _SETUP,
            "container-setup",
            str(self.path),
            "setpriv",
            "--no-new-privs",
            "--",
            "/usr/bin/env",
            "-i",
            *(f"{k}={v}" for k, v in full_env.items()),
            "/usr/bin/unshare",
            f"--root={self.path}",
            f"--wd={self.config.working_dir}",
            f"--setgid={gid}",
            f"--setuid={uid}",
            "--",
            *argv,
        ]

    def popen(
        self,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(args, env), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )

    def run(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args, env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
