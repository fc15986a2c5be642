"""Helpers for the e2e tests: polling, reading objects as JSON, watching Jobs, listing leftovers."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tasks"
E2E_VALUES = CHART / "ci" / "e2e-values.yaml"
KUSTOMIZE = ROOT / "deploy" / "kustomize"

# Labels the API server / Job controller add to a Job and its pod template (values hold the uid).
GENERATED_JOB_LABELS = (
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
)
# What a namespace holds on its own, before and after any release: not a leftover.
NAMESPACE_OWN = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
# The cluster's record of what happened, not objects anyone installed (they expire after 1h).
NOT_INSTALLED_KINDS = {"events", "events.events.k8s.io"}

Obj = dict[str, Any]


def kustomize_build(path: Path, *args: str) -> str:
    """`kustomize build` of a directory with the pinned kustomize."""
    from tests.e2e.cluster import TOOLS_BIN

    proc = subprocess.run(
        [str(TOOLS_BIN / "kustomize"), "build", *args, str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_until(what: str, check, timeout: float = 60.0, interval: float = 0.5):  # type: ignore[no-untyped-def]
    """Poll check() until it returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # retried until the deadline
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def wait_until_or_false(check, timeout: float = 60.0, interval: float = 0.5) -> bool:  # type: ignore[no-untyped-def]
    """Poll check() until it is truthy (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())


def get_json(kubectl, *args: str) -> Obj:  # type: ignore[no-untyped-def]
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


def condition(obj: Obj, kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return str(c["status"])
    return None


def without_generated_labels(template: Obj) -> Obj:
    """A pod template minus the labels the Job controller adds (they carry the Job's uid)."""
    template = json.loads(json.dumps(template))
    labels = template.get("metadata", {}).get("labels") or {}
    for key in GENERATED_JOB_LABELS:
        labels.pop(key, None)
    return template


def namespaced_objects(kubectl, namespace: str) -> set[str]:  # type: ignore[no-untyped-def]
    """Every object in the namespace, of every listable namespaced kind the server serves
    (discovery), as `kind.group/name`; minus events and what the namespace holds on its own."""
    kinds = kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in NOT_INSTALLED_KINDS]
    assert {"deployments.apps", "persistentvolumeclaims", "secrets"} <= set(kinds), kinds
    names = kubectl("get", ",".join(kinds), "-n", namespace, "-o", "name").stdout.split()
    return set(names) - NAMESPACE_OWN


class JobWatcher:
    """Records every event of the Jobs in a namespace while a `with` block runs (a kubernetes
    watch in a thread): proof that a Helm hook Job existed, ran and was deleted, even though the
    chart's hook-delete-policy removes it before helm returns."""

    def __init__(self, k8s, namespace: str) -> None:  # type: ignore[no-untyped-def]
        self.k8s = k8s
        self.namespace = namespace
        self.events: list[tuple[str, Obj]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        if not self._ready.wait(15):
            pytest.fail(f"job watch in {self.namespace} did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        assert not self._thread.is_alive(), "job watch did not stop"
        if self._error:
            raise AssertionError(f"job watch failed: {self._error!r}")

    def _run(self) -> None:
        from kubernetes import client, watch

        batch = client.BatchV1Api(self.k8s)
        try:
            version = batch.list_namespaced_job(self.namespace).metadata.resource_version
            self._ready.set()
            while True:
                last_round = self._stop.is_set()  # one more round after stop: nothing is missed
                stream = watch.Watch().stream(
                    batch.list_namespaced_job,
                    self.namespace,
                    resource_version=version,
                    allow_watch_bookmarks=False,
                    timeout_seconds=1,
                    _request_timeout=10,
                )
                for event in stream:
                    obj = event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    self.events.append((event["type"], obj))
                if last_round:
                    return
        except BaseException as e:
            self._error = e
            self._ready.set()

    def history(self, name: str) -> dict[str, list[tuple[str, Obj]]]:
        """The events of Jobs called `name`, per uid (one entry per Job that existed)."""
        runs: dict[str, list[tuple[str, Obj]]] = {}
        for kind, obj in self.events:
            if obj["metadata"]["name"] == name:
                runs.setdefault(obj["metadata"]["uid"], []).append((kind, obj))
        return runs
