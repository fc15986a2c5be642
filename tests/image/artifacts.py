"""What the image tests hand around: the build secret, the built image, its exported layers."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class BuildSecret:
    """The file passed as the `ca` build secret; byte patterns that would betray it in a layer."""

    path: Path
    markers: dict[str, bytes] = field(default_factory=dict)


def pem_bodies(text: str) -> list[str]:
    bodies, current = [], None
    for line in text.splitlines():
        if line.startswith("-----BEGIN CERTIFICATE-----"):
            current = []
        elif line.startswith("-----END CERTIFICATE-----") and current is not None:
            bodies.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line.strip())
    return bodies


@dataclass
class BuiltImage:
    tag: str
    build_args: dict[str, str]


@dataclass
class Layer:
    digest: str
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def unpacked_size(self) -> int:
        """The layer tar's own size (gzip keeps it, modulo 2**32, in its last four bytes)."""
        with self.path.open("rb") as blob:
            if blob.read(2) != b"\x1f\x8b":
                return self.size
            blob.seek(-4, 2)
            return int.from_bytes(blob.read(4), "little")

    def members(self) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile]]:
        with tarfile.open(self.path, "r:*") as tar:
            for member in tar:
                yield member, tar


def export_layers(buildah: list[str], image: str, dest: Path) -> list[Layer]:
    """`buildah push` to an OCI layout directory; the image's layers, base first."""
    subprocess.run(
        [*buildah, "push", "--quiet", image, f"oci:{dest}:export"],
        check=True,
        capture_output=True,
    )
    index = json.loads((dest / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(_blob(dest, manifest_digest).read_text())
    return [Layer(layer["digest"], _blob(dest, layer["digest"])) for layer in manifest["layers"]]


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def prune_stale_build_cache(buildah: list[str], older_than: float) -> int:
    """Remove unnamed images (old `--layers` cache) that no named image is built on.

    With vfs every cached step is a full copy of the rootfs, so each code change would leave
    hundreds of MB behind. An unnamed image is kept while its layers are a prefix of a named
    image's layers (it is that image's cache); only images created before `older_than` (epoch
    seconds, e.g. this session's start) are touched, so a concurrent build keeps its steps.
    """
    images = json.loads(
        subprocess.run(
            [*buildah, "images", "--all", "--json"], check=True, capture_output=True, text=True
        ).stdout
    )

    def diff_ids(image_id: str) -> tuple[str, ...]:
        out = subprocess.run(
            [*buildah, "inspect", "--type", "image", image_id],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return tuple(json.loads(out)["OCIv1"]["rootfs"]["diff_ids"])

    named = [diff_ids(image["id"]) for image in images if image.get("names")]
    removed = 0
    for image in images:
        if image.get("names") or image["created"] >= older_than:
            continue
        layers = diff_ids(image["id"])
        if any(chain[: len(layers)] == layers for chain in named):
            continue
        gone = subprocess.run([*buildah, "rmi", image["id"]], capture_output=True)
        removed += gone.returncode == 0
    return removed
