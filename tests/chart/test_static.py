"""Rung 1 (static): helm lint, strict Kubernetes schemas (1.30, 1.37), values schema, Helm 4."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart import values_doc
from tests.chart.helpers import (
    CHART,
    KUBE_VERSIONS,
    SUBCHART,
    VALUE_FILES,
    load_yaml,
    rendered,
    run_helm,
    schema_problems,
    template,
    values_args,
    values_id,
)

pytestmark = pytest.mark.usefixtures("helm3")


@pytest.mark.factor("V")
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_helm_lint_strict_passes(values_file: str | None) -> None:
    result = run_helm(["lint", "--strict", str(CHART), *values_args(values_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


@pytest.mark.factor("IV")
def test_chart_declares_supported_kubernetes_and_the_redis_dependency() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    # A floor, no ceiling: a ceiling makes every release un-upgradable once the cluster passes it.
    assert chart["kubeVersion"] == ">=1.30.0-0"
    assert load_yaml(SUBCHART / "Chart.yaml")["kubeVersion"] == chart["kubeVersion"]
    assert chart["dependencies"] == [
        {
            "name": "redis",
            "version": load_yaml(SUBCHART / "Chart.yaml")["version"],
            "repository": "file://charts/redis",
            "condition": "redis.enabled",
        }
    ]


@pytest.mark.factor("V")
def test_kubernetes_older_than_the_floor_is_refused() -> None:
    result = run_helm(["template", "tasks", str(CHART), "--kube-version", "1.29.0"])
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr or "incompatible" in result.stderr


@pytest.mark.factor("V")
@pytest.mark.parametrize("version", ["1.38.0", "1.45.0"])
def test_kubernetes_newer_than_the_tested_range_still_renders(version: str) -> None:
    result = run_helm(["template", "tasks", str(CHART), "--kube-version", version])
    assert result.returncode == 0, result.stderr


@pytest.mark.factor("V")
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", VALUE_FILES, ids=values_id)
def test_every_rendered_object_is_valid_against_the_strict_kubernetes_schema(
    values_file: str | None, kube_version: str
) -> None:
    objects = rendered(values_file, kube_version).objects
    assert objects
    problems = schema_problems(objects, kube_version)
    assert not problems, "\n".join(problems)


@pytest.mark.harness
def test_strict_schema_validation_is_not_vacuous() -> None:
    deployment = json.loads(json.dumps(rendered().get("Deployment", "tasks")))
    deployment["spec"]["template"]["spec"]["containers"][0]["unknownField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


@pytest.mark.factor("VII")
def test_service_monitor_is_well_formed() -> None:
    (monitor,) = rendered("production-values.yaml").of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    service = rendered("production-values.yaml").get("Service", "tasks")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


# --- the values schema ---------------------------------------------------------------------------

BAD_VALUES = [
    # (--set, words the error must name)
    ("replicaCount=two", ["replicaCount"]),
    ("bogusKey=1", ["bogusKey"]),
    ("image.pullPolicy=Sometimes", ["pullPolicy"]),
    ("config.logLevel=loud", ["logLevel"]),
    ("config.cleanupRetention=forever", ["cleanupRetention"]),
    ("service.port=70000", ["port"]),
    ("autoscaling.enabled=yes please", ["enabled"]),
    ("externalRedis.url=http://x:6379", ["url"]),
    ("externalRedis.mode=sentinel", ["mode"]),
    ("externalRedis.shards=0", ["shards"]),
    # The password comes from a Secret, never in the URL (values and ConfigMap are not secret).
    ("externalRedis.url=rediss://:hunter2@x:6380/0", ["url"]),
    ("externalRedis.url=rediss://tasks:hunter2@x:6380/0", ["url"]),
    ("redis.bogus=1", ["bogus"]),
    ("redis.auth.enabled=maybe", ["enabled"]),
    ("redis.config.extra=requirepass in-a-configmap", ["extra"]),
    ("cleanup.schedule=daily", ["schedule"]),
    ("cleanup.schedule=0 3 * *", ["schedule"]),
    ("redis.persistence.retentionPolicy.whenDeleted=Keep", ["whenDeleted"]),
]


@pytest.mark.factor("III")
@pytest.mark.parametrize(("setting", "words"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
@pytest.mark.parametrize("major", [3, 4], ids=["helm3", "helm4"])
def test_values_schema_rejects_bad_values_with_a_readable_message(
    setting: str, words: list[str], major: int, request: pytest.FixtureRequest
) -> None:
    if major == 4:
        request.getfixturevalue("helm4")
    result = run_helm(["template", "tasks", str(CHART), "--set", setting], major)
    assert result.returncode != 0, f"{setting} was accepted"
    message = result.stderr
    assert "schema" in message.lower(), message
    for word in words:
        assert word in message, f"error does not name {word!r}:\n{message}"
    assert "goroutine" not in message and len(message.splitlines()) < 15, message


@pytest.mark.factor("III")
@pytest.mark.parametrize("major", [3, 4], ids=["helm3", "helm4"])
def test_values_schema_accepts_globals(major: int, request: pytest.FixtureRequest) -> None:
    if major == 4:
        request.getfixturevalue("helm4")
    result = run_helm(["template", "tasks", str(CHART), "--set", "global.team=platform"], major)
    assert result.returncode == 0, result.stderr


@pytest.mark.factor("IX")
def test_grace_period_shorter_than_the_drain_is_refused() -> None:
    result = run_helm(
        ["template", "tasks", str(CHART), "--set", "terminationGracePeriodSeconds=20"]
    )
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr


@pytest.mark.factor("IV")
def test_external_redis_without_url_is_refused() -> None:
    result = run_helm(["template", "tasks", str(CHART), "--set", "redis.enabled=false"])
    assert result.returncode != 0
    assert "externalRedis.url is required" in result.stderr


@pytest.mark.factor("IV")
def test_cluster_mode_with_the_bundled_single_node_redis_is_refused() -> None:
    result = run_helm(["template", "tasks", str(CHART), "--set", "externalRedis.mode=cluster"])
    assert result.returncode != 0
    assert "externalRedis.mode=cluster needs redis.enabled=false" in result.stderr


def _schema_node(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _walk(
    node: yaml.Node,
    schema: dict[str, Any],
    root: dict[str, Any],
    lines: list[str],
    path: str,
    documented: bool = False,
) -> list[str]:
    """Problems of a values.yaml mapping: keys the schema does not type, leaves with no comment.

    A leaf is commented on the line above it, or by a comment on an enclosing key (e.g. one
    comment on `resources:` documents its requests and limits).
    """
    problems: list[str] = []
    assert isinstance(node, yaml.MappingNode)
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{path}.{key}" if path else key
        props = schema.get("properties", {})
        if key not in props:
            problems.append(f"{where}: not in values.schema.json")
            continue
        if where == "redis" and root.get("title") == "tasks chart values":
            continue  # the subchart's values: checked against the subchart's schema
        line = key_node.start_mark.line
        commented = documented or (line > 0 and lines[line - 1].strip().startswith("#"))
        child = _schema_node(props[key], root)
        if isinstance(value_node, yaml.MappingNode) and "properties" in child:
            problems += _walk(value_node, child, root, lines, where, commented)
        elif not commented:
            problems.append(f"{where}: no comment on the line above")
    return problems


@pytest.mark.factor("III")
@pytest.mark.parametrize("chart", [CHART, SUBCHART], ids=["tasks", "redis"])
def test_values_yaml_and_schema_do_not_drift(chart: Any) -> None:
    """Every key of values.yaml is typed by the schema and commented; the defaults validate."""
    text = (chart / "values.yaml").read_text()
    schema = json.loads((chart / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert "global" in schema["properties"]
    values = yaml.safe_load(text)
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(values)
    problems = _walk(yaml.compose(text), schema, schema, text.splitlines(), "")
    if chart == CHART:
        # The parent's `redis:` block is the subchart's values: the subchart schema types it.
        sub = json.loads((SUBCHART / "values.schema.json").read_text())
        jsonschema.Draft7Validator(sub).validate(values["redis"])
        redis_node = next(v for k, v in yaml.compose(text).value if k.value == "redis")
        problems += _walk(redis_node, sub, sub, text.splitlines(), "redis")
    assert not problems, "\n".join(problems)


@pytest.mark.factor("III")
def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = load_yaml(CHART / "values.yaml")
    missing = sorted(set(schema["properties"]) - set(values) - {"global"})
    assert not missing, f"typed in the schema but not in values.yaml: {missing}"


# --- Helm 4 ------------------------------------------------------------------------------------


@pytest.mark.factor("V")
@pytest.mark.parametrize("values_file", [None, "production-values.yaml"], ids=values_id)
def test_helm4_lints_and_renders_the_same_objects(values_file: str | None, helm4: str) -> None:
    lint = run_helm(["lint", "--strict", str(CHART), *values_args(values_file)], 4)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    # Same objects as Helm 3, apart from the generated Redis password and what hashes it.
    def shape(text: str) -> list[tuple[str, str]]:
        return sorted((o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(text) if o)

    ours = template(values_file, KUBE_VERSIONS[-1], ("redis.auth.password=fixed",))
    theirs = template(values_file, KUBE_VERSIONS[-1], ("redis.auth.password=fixed",), major=4)
    assert shape(ours) == shape(theirs)
    assert [o for o in yaml.safe_load_all(ours) if o] == [
        o for o in yaml.safe_load_all(theirs) if o
    ]


@pytest.mark.parametrize(
    "schedule", ["@daily", "@hourly", "@every 6h", "*/5 * * * *", "0 3 * * 1-5"]
)
@pytest.mark.factor("XII")
def test_cleanup_schedule_accepts_cron_macros_and_five_fields(schedule: str) -> None:
    result = run_helm(["template", "tasks", str(CHART), "--set", f"cleanup.schedule={schedule}"])
    assert result.returncode == 0, result.stderr


def _undescribed(schema: dict[str, Any], path: str = "") -> list[str]:
    missing = []
    for key, prop in schema.get("properties", {}).items():
        where = f"{path}.{key}" if path else key
        if not prop.get("description"):
            missing.append(where)
        missing += _undescribed(prop, where)
    return missing


@pytest.mark.factor("III")
@pytest.mark.parametrize("chart", [CHART, SUBCHART], ids=["tasks", "redis"])
def test_every_schema_key_has_a_description_generated_from_values_yaml(chart: Any) -> None:
    text = (chart / "values.schema.json").read_text()
    assert values_doc.described_schema(chart) == text, "stale descriptions: run `make chart-docs`"
    schema = json.loads(text)
    missing = _undescribed(schema)
    for name, definition in schema["definitions"].items():
        missing += _undescribed(definition, f"#/definitions/{name}")
    assert not missing, f"keys without a description: {missing}"
    image = schema["properties"]["image"]["properties"]
    values_line = next(
        line
        for line in (chart / "values.yaml").read_text().splitlines()
        if "# -- Image pull" in line
    )
    assert image["pullPolicy"]["description"] == values_line.split("# -- ", 1)[1]


@pytest.mark.factor("III")
def test_readme_values_table_is_generated_from_values_yaml() -> None:
    """The chart README's values table is what `make chart-docs` writes from values.yaml."""
    readme = (CHART / "README.md").read_text()
    assert values_doc.updated(readme) == readme, "stale values table: run `make chart-docs`"
    for key in ("replicaCount", "config.shutdownDelaySeconds", "redis.auth.existingSecret"):
        assert f"| `{key}` |" in readme
