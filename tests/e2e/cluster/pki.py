"""Certificates and kubeconfigs of a test cluster, made with the openssl CLI: one CA, the API
server's serving certificate, a client certificate per identity, and the service-account key pair.
ECDSA P-256 leaves valid for 30 days; the service-account key is RSA-2048 (RS256)."""

from __future__ import annotations

import base64
import json
import shutil
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.e2e.cluster.procs import ClusterError, run

DAYS = "30"
EC_KEY = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out")
SERVER_EXT = """
    basicConstraints = critical, CA:FALSE
    keyUsage = critical, digitalSignature
    extendedKeyUsage = serverAuth
    subjectAltName = {sans}
    """
CLIENT_EXT = """
    basicConstraints = critical, CA:FALSE
    keyUsage = critical, digitalSignature
    extendedKeyUsage = clientAuth
    """

# Every cluster's client identities: file name -> (CN, O). Kubernetes reads the user from CN and
# the groups from O.
CONTROL_PLANE_CLIENTS: Mapping[str, tuple[str, str | None]] = {
    "admin": ("kubernetes-admin", "system:masters"),
    "front-proxy-client": ("front-proxy-client", None),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
}


def _openssl() -> str:
    openssl = shutil.which("openssl")
    if not openssl:
        raise ClusterError(
            "the openssl CLI is required to make certificates (apt-get install openssl)"
        )
    return openssl


def _cnf(path: Path, cn: str, org: str | None, ext: str) -> Path:
    dn = f"CN = {cn}\n" + (f"O = {org}\n" if org else "")
    path.write_text(
        "[req]\nprompt = no\ndistinguished_name = dn\n\n[dn]\n"
        + dn
        + "\n[ext]\n"
        + textwrap.dedent(ext).strip()
        + "\n"
    )
    return path


def _leaf(pki: Path, name: str, cn: str, org: str | None, ext: str) -> None:
    openssl = _openssl()
    cnf = _cnf(pki / f"{name}.cnf", cn, org, ext)
    key, csr, crt = (pki / f"{name}.{s}" for s in ("key", "csr", "crt"))
    run([openssl, *EC_KEY, key])
    run([openssl, "req", "-new", "-key", key, "-out", csr, "-config", cnf])
    run(
        [openssl, "x509", "-req", "-in", csr, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
         "-CAcreateserial", "-out", crt, "-days", DAYS, "-extfile", cnf, "-extensions", "ext"]
    )  # fmt: skip
    key.chmod(0o600)


def make_pki(
    pki: Path, sans: Sequence[str], clients: Mapping[str, tuple[str, str | None]] = {}
) -> None:
    """The CA, the API server certificate for `sans`, the control plane's client certificates plus
    `clients`, and the service-account key pair, into `pki`."""
    openssl = _openssl()
    pki.mkdir(parents=True, exist_ok=True)
    ca_cnf = _cnf(
        pki / "ca.cnf",
        "tasks-e2e-ca",
        None,
        """
        basicConstraints = critical, CA:TRUE
        keyUsage = critical, keyCertSign, cRLSign, digitalSignature
        subjectKeyIdentifier = hash
        """,
    )
    run([openssl, *EC_KEY, pki / "ca.key"])
    run(
        [openssl, "req", "-x509", "-new", "-key", pki / "ca.key", "-out", pki / "ca.crt",
         "-days", DAYS, "-config", ca_cnf, "-extensions", "ext"]
    )  # fmt: skip
    _leaf(pki, "apiserver", "kube-apiserver", None, SERVER_EXT.format(sans=", ".join(sans)))
    for name, (cn, org) in {**CONTROL_PLANE_CLIENTS, **clients}.items():
        _leaf(pki, name, cn, org, CLIENT_EXT)
    run([openssl, "genrsa", "-out", pki / "sa.key", "2048"])
    run([openssl, "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"])
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    """A kubeconfig for `user` (a client certificate of make_pki's), certificates inline."""

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
