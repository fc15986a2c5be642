"""The kind node image (rung 6), assembled here. `kind build node-image` cannot run offline (it
pulls etcd, CoreDNS, pause and kindnetd from registries), so this does what it and kind's base
Dockerfile do, from what the project already builds:

  base      tests/image/standin.sh kind: Debian bookworm, systemd and the base image's packages
  files     kind's entrypoint, systemd units and containerd/crictl configs, from the pinned
            sigs.k8s.io/kind module (images/base/files), as its Dockerfile copies them
  binaries  containerd, its runc shim, ctr, runc, crictl (make node-tools); kubeadm, kubelet,
            kubectl (the multi-call `kube`)
  images    the control plane, kube-proxy and etcd (one image: `kube` and `etcd` on the base, which
            has the iptables kube-proxy runs, and the sh, mkdir and rm of local-path's helper),
            CoreDNS, pause, local-path-provisioner; their archives ride in /kind/images and a unit
            imports them into the node's containerd at boot, before kubelet starts
  storage   kind's default StorageClass manifest (local-path), from the kind module's source, with
            these images
  network   a static CNI config (Debian's bridge plugin) instead of kindnetd, which no module proxy
            serves: clusters are created with `disableDefaultCNI` (cluster_config())

Every image keeps a name of its own below IMAGE_REPOSITORY; cluster_config() points kubeadm at
them (imageRepository and the etcd and CoreDNS tags), so nothing is named as an upstream image.

    python -m tests.e2e.cluster.kindnode    # build (or reuse) the node image and its archive
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

from tests.e2e.cluster import images
from tests.e2e.cluster.procs import ROOT, ClusterError, binary, log, run

BASE = "localhost/tasks-kind-base:bookworm"
IMAGE_REPOSITORY = "localhost/tasks-kind"
NODE = "localhost/tasks-kind-node"
# The bridge's pod range: the first /24 of kind's default podSubnet, the one the controller
# manager gives the only node.
POD_SUBNET = "10.244.0.0/24"
INPUTS_LABEL = "org.tasks.test.inputs.sha256"
# The other names of the control-plane image.
ALIASES = ("kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd", "local-path-helper")
NODE_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "crictl", "runc", "kube")


def makefile_pin(name: str) -> str:
    """A version pinned in the Makefile (`NAME := vX.Y.Z`), the single place pins live."""
    found = re.search(rf"^{name}\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    if not found:
        raise ClusterError(f"{name} is not pinned in the Makefile: update kindnode.makefile_pin()")
    return found.group(1)


def versions() -> dict[str, str]:
    """What the built binaries say they are (local-path-provisioner prints no version)."""
    kube = json.loads(run([binary("kubectl"), "version", "--client", "-o", "json"]).stdout)
    etcd = run([binary("etcd"), "--version"]).stdout.split()[2]
    coredns = run([binary("coredns", "node-tools"), "-version"]).stdout.split()[0]
    return {
        "kubernetes": kube["clientVersion"]["gitVersion"],
        "etcd": f"v{etcd}",
        "coredns": "v" + coredns.removeprefix("CoreDNS-"),
        "local-path": makefile_pin("LOCAL_PATH_VERSION"),
    }


def refs(v: dict[str, str]) -> dict[str, str]:
    control_plane = {
        c: f"{IMAGE_REPOSITORY}/{c}:{v['kubernetes']}"
        for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
    }
    return {
        **control_plane,
        "etcd": f"{IMAGE_REPOSITORY}/etcd:{v['etcd']}",
        "coredns": f"{IMAGE_REPOSITORY}/coredns:{v['coredns']}",
        "local-path-provisioner": f"{IMAGE_REPOSITORY}/local-path-provisioner:{v['local-path']}",
        "local-path-helper": f"{IMAGE_REPOSITORY}/local-path-helper:{v['kubernetes']}",
        "node": f"{NODE}:{v['kubernetes']}",
    }


def cluster_config(v: dict[str, str] | None = None) -> str:
    """kind's cluster config for this node image (JSON, which kind reads as YAML)."""
    v = v or versions()
    cluster = (
        "kind: ClusterConfiguration\n"
        f"imageRepository: {IMAGE_REPOSITORY}\n"
        f"etcd: {{local: {{imageTag: {v['etcd']}}}}}\n"
        f"dns: {{imageTag: {v['coredns']}}}\n"
    )
    return json.dumps(
        {
            "kind": "Cluster",
            "apiVersion": "kind.x-k8s.io/v1alpha4",
            "networking": {"disableDefaultCNI": True, "ipFamily": "ipv4"},
            "nodes": [{"role": "control-plane"}],
            "kubeadmConfigPatches": [cluster],
        },
        indent=2,
    )


def kind_module() -> Path:
    """The pinned kind module's source (downloaded through the module proxy)."""
    version = makefile_pin("KIND_VERSION")
    out = run(["go", "mod", "download", "-json", f"sigs.k8s.io/kind@{version}"], cwd="/").stdout
    module = Path(json.loads(out)["Dir"])
    if not (
        module / "images" / "base" / "files" / "usr" / "local" / "bin" / "entrypoint"
    ).is_file():
        raise ClusterError(f"{module} has no base image entrypoint: kind {version} changed")
    return module


def storage_manifest(module: Path, r: dict[str, str]) -> str:
    """kind's default-storage.yaml, as `kind build node-image` writes it, with our images."""
    source = (module / "pkg" / "build" / "nodeimage" / "const_storage.go").read_text()
    found = re.search(r"const defaultStorageManifest = `(.*?)^`$", source, re.S | re.M)
    images_in = {
        "storageProvisionerImage": "local-path-provisioner",
        "storageHelperImage": "local-path-helper",
    }
    if not found or any(f"` + {const} + `" not in found.group(1) for const in images_in):
        raise ClusterError(
            "kind's const_storage.go changed shape: update kindnode.storage_manifest()"
        )
    manifest = found.group(1)
    for const, name in images_in.items():
        manifest = manifest.replace(f"` + {const} + `", r[name])
    return manifest


def _sha256(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _label(ref: str) -> str:
    fmt = f'{{{{index .ImageAnnotations "{INPUTS_LABEL}"}}}}'
    return images.buildah("inspect", "--format", fmt, ref, check=False)


def _commit(ctr: str, ref: str, inputs: str, *config: str) -> None:
    images.buildah("config", "--annotation", f"{INPUTS_LABEL}={inputs}", *config, ctr)
    images.buildah("commit", "--quiet", ctr, ref)


def _scratch_image(ref: str, exe: Path, dest: str, *config: str) -> None:
    """ref: FROM scratch, the static binary exe at dest; rebuilt when the binary changes."""
    inputs = _sha256(exe)
    if _label(ref) == inputs:
        return
    ctr = images.buildah("from", "scratch")
    try:
        images.buildah("copy", "--chmod", "0755", ctr, str(exe), dest)
        _commit(ctr, ref, inputs, *config)
    finally:
        images.buildah("rm", ctr, check=False)


def build_components(r: dict[str, str]) -> list[Path]:
    """The control-plane image (tagged for each component and etcd), CoreDNS and pause; their
    archives, reused while the image IDs are the same."""
    base_id = images.image_id(BASE)
    if not base_id:
        raise ClusterError(
            f"{BASE} is not in buildah's store: run `bash tests/image/standin.sh kind`"
        )
    kube, etcd, coredns = binary("kube"), binary("etcd"), binary("coredns", "node-tools")
    inputs = _sha256(kube, etcd) + base_id
    main = r["kube-apiserver"]
    if _label(main) != inputs:
        ctr = images.buildah("from", "--pull=false", BASE)
        try:
            images.buildah("copy", "--chmod", "0755", ctr, str(kube), str(etcd), "/usr/local/bin/")
            names = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
            links = " && ".join(f"ln -s kube /usr/local/bin/{n}" for n in names)
            images.buildah("run", "--isolation", "chroot", ctr, "--", "sh", "-c", links)
            what = "Kubernetes control plane, kube-proxy and etcd for the kind node"
            _commit(ctr, main, inputs, "--label", f"org.opencontainers.image.description={what}")
        finally:
            images.buildah("rm", ctr, check=False)
    for name in ALIASES:
        images.buildah("tag", main, r[name])
    _scratch_image(r["coredns"], coredns, "/coredns", "--entrypoint", '["/coredns"]')
    provisioner = binary("local-path-provisioner", "kind-node-image")
    _scratch_image(
        r["local-path-provisioner"], provisioner, "/usr/local/bin/", "--env", "PATH=/usr/local/bin"
    )
    if not images.image_id(images.PAUSE):
        images.build_pause()
    how = "make kind-node-image"
    refs_ = (main, r["coredns"], r["local-path-provisioner"], images.PAUSE)
    return [images.archive(ref, how) for ref in refs_]


IMPORT_UNIT = """\
[Unit]
Description=Import the node's images into containerd (no registry is reachable)
Requires=containerd.service
After=containerd.service
Before=kubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/kind/bin/import-images.sh

[Install]
WantedBy=multi-user.target
"""

IMPORT_SCRIPT = """\
#!/bin/bash
# The node's images come with the node image (no registry is reachable): import each archive,
# pinned as kind pins its preloaded images, then give the control-plane image its other names.
set -o errexit -o nounset -o pipefail
for archive in /kind/images/*.tar; do
  ctr --namespace k8s.io images import --label io.cri-containerd.pinned=pinned "$archive"
done
while read -r source target; do
  ctr --namespace k8s.io images tag --force "$source" "$target"
done < /kind/images/tags
"""


def containerd_config(kind_toml: str) -> str:
    """kind's config with the two settings this host needs: our pause image, and no OOM score
    below containerd's own (no process here holds CAP_SYS_RESOURCE)."""
    edits = {
        'sandbox_image = "registry.k8s.io/pause:3.10"': f'sandbox_image = "{images.PAUSE}"',
        "restrict_oom_score_adj = false": "restrict_oom_score_adj = true",
    }
    for old, new in edits.items():
        if old not in kind_toml:
            raise ClusterError(f"kind's containerd config has no `{old}`: update kindnode.py")
        kind_toml = kind_toml.replace(old, new)
    return kind_toml


def cni_config() -> dict[str, object]:
    return {
        "cniVersion": "1.0.0",
        "name": "kind",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _install_tree(src: Path, dst: Path) -> None:
    """Copy kind's files with the modes its Dockerfile gives (the module cache is read-only)."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        target = dst / rel
        if path.is_dir():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            continue
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        executable = rel.parts[:3] == ("usr", "local", "bin") or rel.parts[:2] == ("kind", "bin")
        target.chmod(0o755 if executable else 0o644)


def build_node(r: dict[str, str], v: dict[str, str], archives: list[Path]) -> Path:
    """The node image, rebuilt when an input changes; returns its docker-archive."""
    module = kind_module()
    files = module / "images" / "base" / "files"
    tools = [binary(t, "node-tools") for t in NODE_TOOLS]
    base_id = images.image_id(BASE) or ""
    inputs = hashlib.sha256(
        "\n".join(
            [base_id, Path(__file__).read_text(), str(files), *(a.name for a in archives),
             *(_sha256(t) for t in tools)]
        ).encode()
    ).hexdigest()  # fmt: skip
    how = "make kind-node-image"
    if _label(r["node"]) == inputs:
        return images.archive(r["node"], how)
    log(f"building the kind node image {r['node']}")
    ctr = images.buildah("from", "--pull=false", BASE)
    try:
        mnt = Path(images.buildah("mount", ctr))
        _install_tree(files, mnt)
        etc = mnt / "etc"
        toml = etc / "containerd" / "config.toml"
        toml.write_text(containerd_config(toml.read_text()))
        spec = json.loads(run([binary("ctr", "node-tools"), "oci", "spec"]).stdout)
        hooks = spec.setdefault("hooks", {}).setdefault("createContainer", [])
        hooks.append({"path": "/kind/bin/mount-product-files.sh"})
        spec["process"].pop("rlimits", None)
        (etc / "containerd" / "cri-base.json").write_text(json.dumps(spec, indent=2) + "\n")
        for name, tool in zip(NODE_TOOLS, tools, strict=True):
            where = {"runc": "usr/local/sbin", "kube": "usr/bin"}.get(name, "usr/local/bin")
            (mnt / where).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tool, mnt / where / name)
            (mnt / where / name).chmod(0o755)
        for name in ("kubeadm", "kubelet", "kubectl"):
            (mnt / "usr" / "bin" / name).symlink_to("kube")
        (mnt / "opt" / "cni").mkdir(parents=True, exist_ok=True)
        (mnt / "opt" / "cni" / "bin").symlink_to("/usr/lib/cni")
        (etc / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (etc / "cni" / "net.d" / "10-kind.conflist").write_text(json.dumps(cni_config(), indent=2))
        kind_dir = mnt / "kind"
        (kind_dir / "version").write_text(v["kubernetes"] + "\n")
        (kind_dir / "images").mkdir(mode=0o755)
        for archive in archives:
            shutil.copyfile(archive, kind_dir / "images" / archive.name)
        main = r["kube-apiserver"]
        tags = [f"{main} {r[name]}" for name in ALIASES]
        (kind_dir / "images" / "tags").write_text("\n".join(tags) + "\n")
        (kind_dir / "bin" / "import-images.sh").write_text(IMPORT_SCRIPT)
        (kind_dir / "bin" / "import-images.sh").chmod(0o755)
        (etc / "systemd" / "system" / "kind-images.service").write_text(IMPORT_UNIT)
        (kind_dir / "manifests").mkdir(mode=0o755)
        (kind_dir / "manifests" / "default-storage.yaml").write_text(storage_manifest(module, r))
        (etc / "kubernetes" / "manifests").mkdir(parents=True, exist_ok=True)
        images.buildah("umount", ctr)
        # What kind's base Dockerfile does after installing packages.
        lib = "/lib/systemd/system"
        setup = " && ".join([
            f"rm -f {lib}/sysinit.target.wants/systemd-tmpfiles-setup.service",
            f"rm -f {lib}/multi-user.target.wants/* /etc/systemd/system/*.wants/*",
            f"rm -f {lib}/local-fs.target.wants/* {lib}/basic.target.wants/*",
            f"rm -f {lib}/sockets.target.wants/*udev* {lib}/sockets.target.wants/*initctl*",
            "echo ReadKMsg=no >> /etc/systemd/journald.conf",
            "ln -sf /usr/lib/systemd/systemd /sbin/init",
            "systemctl enable kubelet containerd undo-mount-hacks kind-images",
            "systemctl mask systemd-binfmt.service",
        ])  # fmt: skip
        images.buildah("run", "--isolation", "chroot", ctr, "--", "sh", "-c", setup)
        _commit(
            ctr, r["node"], inputs,
            "--entrypoint", '["/usr/local/bin/entrypoint", "/sbin/init"]', "--cmd", "[]",
            "--env", "container=docker", "--stop-signal", "SIGRTMIN+3",
            "--label", "org.opencontainers.image.description=kind node (Kubernetes "
            f"{v['kubernetes']}) built from this project's pinned sources",
        )  # fmt: skip
    finally:
        images.buildah("rm", ctr, check=False)
    return images.archive(r["node"], how)


def build() -> Path:
    v = versions()
    r = refs(v)
    archive = build_node(r, v, build_components(r))
    log(f"kind node image {r['node']}: {archive}")
    return archive


if __name__ == "__main__":
    try:
        build()
    except ClusterError as e:
        log(f"error: {e}")
        sys.exit(1)
