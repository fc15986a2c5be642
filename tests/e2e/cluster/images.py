"""The images the real node runs, all built on this machine (no registry is reachable, and pods
never pull): the app image `make image` builds, the Redis stand-in, and the pod sandbox (pause).

They live in buildah's store; `export` writes each to a docker-archive once per image ID, and
`load` imports the archives into the node's containerd under the names the pods use. `archive`
is also how the docker harness (rung 6) gets the stand-in base.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tests.e2e.cluster.procs import ROOT, TOOLS_BIN, ClusterError, log, run

APP = os.environ.get("TASKS_NODE_APP_IMAGE", "localhost/tasks:dev")
# The app image with a test-only migration to the next data layout: what an upgrade that changes
# the layout rolls out (made from APP by next_layout()).
NEXT_LAYOUT = "localhost/tasks:next-layout"
REDIS = "localhost/tasks-redis:7.0-stand-in"
# Built from the pinned k8s.io/kubernetes module's build/pause (make node-tools), named for what it
# is; containerd's CRI is told to use it as the sandbox image.
PAUSE = "localhost/tasks-pause:3.10.1"
ARCHIVES = ROOT / ".cache" / "node-images"
STORAGE_DRIVER = os.environ.get("STORAGE_DRIVER", "vfs")
HOW = {
    APP: "make image BASE_IMAGE=localhost/tasks-base-python:3.11-stand-in",
    NEXT_LAYOUT: "make node-up (next_layout() makes it from the app image)",
    REDIS: "bash tests/image/standin.sh redis",
    PAUSE: "make node-tools",
}


def buildah(*args: str, **kw: object) -> str:
    exe = shutil.which("buildah")
    if not exe:
        raise ClusterError("buildah is missing: run `make system-deps`")
    return run([exe, "--storage-driver", STORAGE_DRIVER, *args], **kw).stdout.strip()  # type: ignore[arg-type]


def image_id(ref: str) -> str | None:
    ids = buildah("images", "--quiet", "--no-trunc", ref, check=False)
    return ids.splitlines()[0].removeprefix("sha256:") if ids else None


def build_pause() -> None:
    """The pause image: the static binary alone, run as 65535 like upstream's."""
    binary = TOOLS_BIN / "pause"
    if not binary.exists():
        raise ClusterError(f"{binary} is missing: run `make node-tools`")
    ctr = buildah("from", "scratch")
    try:
        buildah("copy", ctr, str(binary), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
        buildah("commit", "--quiet", ctr, PAUSE)
    finally:
        buildah("rm", ctr, check=False)


def next_layout_sources(root: Path = ROOT) -> dict[str, str]:
    """service/store/{base,migrations}.py one layout ahead: LAYOUT_VERSION + 1 and a no-op
    migration to it, an expansion (Migration's default kind), so the current build's pods keep
    serving the data it migrates."""
    store = root / "service" / "store"
    base = (store / "base.py").read_text()
    version = int(base.split("LAYOUT_VERSION = ", 1)[1].split("\n", 1)[0])
    migrations = (store / "migrations.py").read_text()
    table, check = "MIGRATIONS: tuple[Migration, ...] = (", "\n)\nassert [m.version"
    if table not in migrations or check not in migrations or "LAYOUT_VERSION = " not in base:
        raise ClusterError("service/store changed shape: update images.next_layout_sources()")
    noop = "async def _noop_for_tests(store: RedisTaskStore) -> int:\n    return 0\n\n\n"
    entry = f'\n    Migration({version + 1}, "test-only: no change", _noop_for_tests),'
    return {
        "base.py": base.replace(
            f"LAYOUT_VERSION = {version}\n", f"LAYOUT_VERSION = {version + 1}\n"
        ),
        "migrations.py": migrations.replace(table, noop + table).replace(check, entry + check),
    }


def next_layout() -> None:
    """APP plus one no-op migration to layout N+1 (service/store/base.py and migrations.py patched
    in a layer of its own), rebuilt whenever APP changes."""
    app = image_id(APP)
    if not app:
        raise ClusterError(f"image {APP} is not in buildah's store: run `{HOW[APP]}`")
    label = "org.tasks.test.next-layout.from"
    if buildah("inspect", "--format", f'{{{{index .ImageAnnotations "{label}"}}}}', NEXT_LAYOUT,
                check=False) == app:  # fmt: skip
        return
    patched = next_layout_sources()
    ctr = buildah("from", "--pull=false", APP)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in patched.items():
                (Path(tmp) / name).write_text(text)
                buildah(
                    "copy",
                    "--chmod",
                    "0644",
                    ctr,
                    str(Path(tmp) / name),
                    f"/app/service/store/{name}",
                )
        buildah("config", "--annotation", f"{label}={app}", ctr)
        buildah("commit", "--quiet", ctr, NEXT_LAYOUT)
    finally:
        buildah("rm", ctr, check=False)


def export() -> list[Path]:
    """A docker-archive per image (its RepoTags carry the full name), reused while the image ID
    is the same."""
    if not image_id(PAUSE):
        build_pause()
    next_layout()
    return [archive(ref, HOW[ref]) for ref in (PAUSE, REDIS, APP, NEXT_LAYOUT)]


def _stem(ref: str) -> str:
    return ref.rsplit("/", 1)[-1].replace(":", "_")


def archived(ref: str) -> Path | None:
    """The archive archive() wrote of ref (it keeps one per name), without asking buildah."""
    found = sorted(ARCHIVES.glob(f"{_stem(ref)}-*.tar"))
    return found[-1] if found else None


def archive(ref: str, how: str) -> Path:
    """buildah push ref docker-archive:<file>:ref, once per image ID (the file name holds it);
    `how` says how to make a missing image."""
    iid = image_id(ref)
    if not iid:
        raise ClusterError(f"image {ref} is not in buildah's store: run `{how}`")
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    stem = _stem(ref)
    path = ARCHIVES / f"{stem}-{iid[:12]}.tar"
    if not path.exists():
        for old in ARCHIVES.glob(f"{stem}-*.tar"):
            old.unlink()
        log(f"exporting {ref} ({iid[:12]})")
        tmp = path.with_suffix(".partial")
        tmp.unlink(missing_ok=True)
        buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}")
        tmp.rename(path)
    return path


def load(containerd_socket: Path, archives: list[Path]) -> None:
    """Import into the CRI's namespace (k8s.io), unpacked for the overlayfs snapshotter."""
    ctr = TOOLS_BIN / "ctr"
    for archive in archives:
        run(
            [ctr, "--address", containerd_socket, "--namespace", "k8s.io", "images", "import",
             "--digests", "--snapshotter", "overlayfs", archive]
        )  # fmt: skip
    listed = run(
        [ctr, "--address", containerd_socket, "--namespace", "k8s.io", "images", "list", "--quiet"]
    ).stdout
    missing = [ref for ref in (PAUSE, REDIS, APP, NEXT_LAYOUT) if ref not in listed.split()]
    if missing:
        raise ClusterError(f"images not in containerd after import: {missing}")
