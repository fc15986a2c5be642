"""`python -m jobs launch cleanup --release tasks -n <ns>`: run an admin CronJob now, from a
workstation or CI, and exit with its result.

It creates a Job from the CronJob exactly as `kubectl create job --from=cronjob/<name>` does
(k8s.io/kubectl/pkg/cmd/create/create_job.go, createJobFromCronJob): the Job's spec is the
CronJob's `spec.jobTemplate.spec` as the API server stored it, its labels are the job template's
labels, its annotations are `cronjob.kubernetes.io/instantiate: manual` plus the job template's
annotations, and its one ownerReference names the CronJob as controller (without
blockOwnerDeletion, like kubectl). Then it waits for the Job to complete or fail.

Unlike the other commands it talks to the Kubernetes API, not to the store, and runs outside the
image: the `kubernetes` client is an optional extra (`pip install 'tasks[kube]'`), imported only
here. Credentials come from --kubeconfig, else $KUBECONFIG or ~/.kube/config, else the pod's
in-cluster ServiceAccount.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from jobs.runtime import Command, JobFailed, Summary, UsageError, seconds
from service.settings import Settings

log = logging.getLogger("tasks.jobs.launch")

# The admin processes that run as a CronJob. With --release the chart's CronJob is found by its
# labels (its name is cut to fit Kubernetes' limits, so it cannot be guessed); kustomize names it
# plainly (`cleanup`) and has no release: --cronjob.
LAUNCHABLE = ("cleanup",)
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANTIATE = "cronjob.kubernetes.io/instantiate"
FIELD_MANAGER = "tasks-jobs-launch"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
INSTALL_HINT = "the kubernetes client is not installed: pip install 'tasks[kube]'"

Obj = dict[str, Any]


def job_from_cronjob(cronjob: Obj, name: str | None = None) -> Obj:
    """The Job `kubectl create job --from=cronjob/<cronjob> <name>` would create.

    With no name, the API server picks one: generateName `<cronjob>-manual-` (unique, and cut to
    fit the 63 characters a Job name may have, since it becomes the `job-name` label).
    """
    template = cronjob["spec"]["jobTemplate"]
    template_meta = template.get("metadata") or {}
    meta: Obj = {
        "annotations": {INSTANTIATE: "manual", **(template_meta.get("annotations") or {})},
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": cronjob["metadata"]["name"],
                "uid": cronjob["metadata"]["uid"],
                "controller": True,
            }
        ],
    }
    if template_meta.get("labels"):
        meta["labels"] = template_meta["labels"]
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = f"{cronjob['metadata']['name']}-manual-"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": template["spec"]}


def job_result(job: Obj) -> str | None:
    """ "succeeded" / "failed" once the Job controller says so (condition Complete / Failed)."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True":
            if condition.get("type") == "Complete":
                return "succeeded"
            if condition.get("type") == "Failed":
                reason = condition.get("reason") or "Failed"
                message = condition.get("message") or ""
                return f"failed: {reason}" + (f": {message}" if message else "")
    return None


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("process", choices=LAUNCHABLE, help="the admin process to run now")
    parser.add_argument(
        "--release",
        help="Helm release: its CronJob labelled app.kubernetes.io/instance=<release>, "
        "app.kubernetes.io/component=<process>",
    )
    parser.add_argument("--cronjob", help="the CronJob's name instead (kustomize: plain `cleanup`)")
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the kubeconfig context's, or the pod's)"
    )
    parser.add_argument("--name", help="the Job's name (default: <cronjob>-manual-<random>)")
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=900.0,
        help="seconds to wait for the Job to finish (default 900)",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")


def _check_target(args: argparse.Namespace) -> None:
    if args.cronjob and args.release:
        raise UsageError("give --release or --cronjob, not both")
    if not (args.cronjob or args.release):
        raise UsageError("give --release (a Helm release) or --cronjob NAME (kustomize: cleanup)")


def release_selector(release: str, process: str) -> str:
    """The label selector of the chart's CronJob for `process` in `release`."""
    return f"{INSTANCE_LABEL}={release},{COMPONENT_LABEL}={process}"


def find_release_cronjob(batch: Any, namespace: str, release: str, process: str) -> Obj:
    """The one CronJob of `release` that runs `process`, by its labels (instance + component)."""
    selector = release_selector(release, process)
    raw = batch.list_namespaced_cron_job(namespace, label_selector=selector, _preload_content=False)
    found: list[Obj] = json.loads(raw.data).get("items") or []
    if not found:
        raise UsageError(
            f"no CronJob labelled {selector} in namespace {namespace}"
            " (kustomize installs name it plain: --cronjob)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(c["metadata"]["name"] for c in found))
        raise UsageError(f"several CronJobs labelled {selector}: {names}; pick one with --cronjob")
    return found[0]


def _kube() -> Any:
    """The `kubernetes` package, imported only when launch runs. Used through Any: its config
    functions are untyped and its API methods are typed for models, while launch reads and sends
    the API server's raw JSON (the CronJob's template exactly as stored, nothing dropped)."""
    try:
        return importlib.import_module("kubernetes")
    except ImportError as exc:
        raise UsageError(INSTALL_HINT) from exc


def _client(kube: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """An ApiClient and the namespace to use."""
    in_cluster = (
        not args.kubeconfig
        and not os.environ.get("KUBECONFIG")
        and not Path("~/.kube/config").expanduser().exists()
        and "KUBERNETES_SERVICE_HOST" in os.environ
    )
    try:
        if in_cluster:
            config = kube.client.Configuration()
            kube.config.load_incluster_config(client_configuration=config)
            api = kube.client.ApiClient(config)
            namespace = args.namespace or IN_CLUSTER_NAMESPACE.read_text().strip()
        else:
            api = kube.config.new_client_from_config(
                config_file=args.kubeconfig, context=args.context
            )
            namespace = args.namespace
            if not namespace:
                contexts, current = kube.config.list_kube_config_contexts(
                    config_file=args.kubeconfig
                )
                chosen = next((c for c in contexts if c["name"] == args.context), current)
                namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    except (kube.config.ConfigException, OSError) as exc:
        raise UsageError(f"no Kubernetes credentials: {exc}") from exc
    return api, str(namespace)


def _body(exc: Exception) -> str:
    try:
        return str(json.loads(getattr(exc, "body", "") or "{}").get("message") or exc)
    except ValueError:
        return str(exc)


def launch(args: argparse.Namespace) -> Summary:
    """Create the Job and wait for it (blocking: runs in a worker thread)."""
    _check_target(args)
    kube = _kube()
    api, namespace = _client(kube, args)
    ApiException = kube.client.exceptions.ApiException
    batch = kube.client.BatchV1Api(api)
    summary: Summary = {"namespace": namespace}
    try:
        try:
            if args.release:
                cronjob = find_release_cronjob(batch, namespace, args.release, args.process)
            else:
                raw = batch.read_namespaced_cron_job(
                    args.cronjob, namespace, _preload_content=False
                )
                cronjob = json.loads(raw.data)
        except ApiException as exc:
            if exc.status == 404:
                raise UsageError(f"no CronJob {args.cronjob} in namespace {namespace}") from exc
            raise JobFailed(f"reading the CronJob: {_body(exc)}", summary) from exc
        cronjob_name = cronjob["metadata"]["name"]
        summary["cronjob"] = cronjob_name
        body = job_from_cronjob(cronjob, args.name)
        try:
            raw = batch.create_namespaced_job(
                namespace, body, field_manager=FIELD_MANAGER, _preload_content=False
            )
        except ApiException as exc:
            raise JobFailed(f"creating the Job: {_body(exc)}", summary) from exc
        job = json.loads(raw.data)
        name = job["metadata"]["name"]
        summary["name"] = name
        log.info("created job %s/%s from cronjob %s", namespace, name, cronjob_name)

        deadline = time.monotonic() + args.timeout
        interval = 0.2
        while (result := job_result(job)) is None:
            if time.monotonic() >= deadline:
                summary.update(_counts(job))
                raise JobFailed(
                    f"timed out after {args.timeout:g}s; job {name} is still running", summary
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)
            raw = batch.read_namespaced_job_status(name, namespace, _preload_content=False)
            job = json.loads(raw.data)
        summary.update(_counts(job))
        if result != "succeeded":
            raise JobFailed(f"job {name} {result}", summary)
        log.info("job %s/%s succeeded", namespace, name)
        return summary
    finally:
        api.close()


def _counts(job: Obj) -> Summary:
    status = job.get("status") or {}
    return {"succeeded": int(status.get("succeeded", 0)), "failed": int(status.get("failed", 0))}


async def run(args: argparse.Namespace, settings: Settings) -> Summary:
    return await asyncio.to_thread(launch, args)


COMMAND = Command(
    name="launch",
    help="run an admin CronJob now (like kubectl create job --from=cronjob/...) and wait for it",
    add_arguments=_arguments,
    run=run,
)
