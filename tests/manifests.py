"""Kubernetes objects as plain dicts (parsed with pyyaml): pod specs, and the environment the
kubelet would give a container. Shared by the chart, kustomize and e2e tests."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from typing import Any
from unittest import mock

from service.settings import Settings, load_settings

Obj = dict[str, Any]

_POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "ReplicaSet")


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec a workload creates pods from; None for objects that create no pods."""
    kind = obj["kind"]
    if kind == "Pod":
        return dict(obj["spec"])
    if kind in _POD_TEMPLATE_KINDS:
        return dict(obj["spec"]["template"]["spec"])
    if kind == "CronJob":
        return dict(obj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return None


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj | None:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if found else None


def secret_data(secret: Obj) -> dict[str, str]:
    """A Secret's values, decoded: `data` (base64) and `stringData`."""
    decoded = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**decoded, **(secret.get("stringData") or {})}


def _source(
    objects: Iterable[Obj], external: Mapping[str, Mapping[str, str]], kind: str, name: str
) -> dict[str, str] | None:
    if kind == "Secret" and name in external:
        return dict(external[name])
    obj = find(objects, kind, name)
    if obj is None:
        return None
    if kind == "Secret":
        return secret_data(obj)
    return {k: str(v) for k, v in (obj.get("data") or {}).items()}


def _ref(item: Obj, secret: str, config_map: str) -> tuple[str, Obj]:
    return ("Secret", item[secret]) if secret in item else ("ConfigMap", item[config_map])


def resolve_env(
    objects: Iterable[Obj], container: Obj, external: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, str]:
    """The environment the kubelet would give `container`: envFrom first, then env (env wins).

    ConfigMaps and Secrets come from `objects`; `external` stands in for Secrets the user creates
    beforehand (existingSecret), by name. A reference that resolves nowhere fails, unless optional.
    """
    objects, external = list(objects), external or {}
    env: dict[str, str] = {}
    for item in container.get("envFrom", []):
        kind, ref = _ref(item, "secretRef", "configMapRef")
        data = _source(objects, external, kind, ref["name"])
        assert data is not None or ref.get("optional", False), (
            f"{container['name']}: {kind}/{ref['name']} is neither rendered nor provided"
        )
        env.update({item.get("prefix", "") + k: v for k, v in (data or {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        kind, ref = _ref(item["valueFrom"], "secretKeyRef", "configMapKeyRef")
        data = _source(objects, external, kind, ref["name"])
        if data is None or ref["key"] not in data:
            assert ref.get("optional", False), (
                f"{item['name']}: {kind}/{ref['name']} lacks {ref['key']}"
            )
            continue
        env[item["name"]] = data[ref["key"]]
    return env


def secret_env_names(objects: Iterable[Obj], container: Obj) -> set[str]:
    """The names `container` gets from a Secret, by envFrom or by secretKeyRef."""
    objects = list(objects)
    names: set[str] = set()
    for item in container.get("envFrom", []):
        if "secretRef" in item:
            secret = find(objects, "Secret", item["secretRef"]["name"]) or {}
            keys = [*(secret.get("data") or {}), *(secret.get("stringData") or {})]
            names |= {item.get("prefix", "") + key for key in keys}
    names |= {
        item["name"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    return names


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The settings the app loads from exactly `env` (nothing of this process's env, no .env)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return load_settings(_env_file=None)
