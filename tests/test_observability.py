"""Logs and metrics (factor XI, and what operators scrape): shape, request ids, bounded series."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from service.observability.logging import (
    JsonFormatter,
    configure_logging,
    log_fields,
    request_id,
)
from tests.support import scrape


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """A stream for configure_logging to write to; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        yield io.StringIO()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def series(metrics_text: str, name: str) -> list[str]:
    return [line for line in metrics_text.splitlines() if line.startswith(name + "{")]


@pytest.mark.factor("XI")
def test_request_id_is_taken_from_the_request_or_generated(client: TestClient) -> None:
    given = client.get("/livez", headers={"X-Request-ID": "abc-123"})
    generated = client.get("/livez")
    invalid = client.get("/livez", headers={"X-Request-ID": "has spaces and\ttabs"})

    assert given.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert invalid.headers["x-request-id"] != "has spaces and\ttabs"


@pytest.mark.factor("XI")
def test_access_line_carries_request_id_method_route_status_duration(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tasks.access"):
        client.get("/v1/tasks/01aaaaaaaaaaaaaaaaaaaaaaaa", headers={"X-Request-ID": "r-1"})

    (record,) = [r for r in caplog.records if r.name == "tasks.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "r-1"
    assert (line["method"], line["route"], line["status"]) == ("GET", "/v1/tasks/{task_id}", 404)
    assert line["duration_ms"] >= 0


@pytest.mark.factor("XI")
def test_configure_logging_writes_json_lines_to_the_stream_it_is_given(
    log_stream: io.StringIO,
) -> None:
    configure_logging("info", stream=log_stream)
    token = request_id.set("rid-7")
    logging.getLogger("uvicorn.error").info("hello %s", "world", extra={"k": 1})
    request_id.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("jobs").exception("failed")

    first, second = (json.loads(line) for line in log_stream.getvalue().splitlines())
    assert first["msg"] == "hello world" and first["request_id"] == "rid-7" and first["k"] == 1
    assert first["logger"] == "uvicorn.error" and first["level"] == "info"
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


@pytest.mark.factor("IV")
def test_metrics_has_request_store_inflight_and_build_series(client: TestClient) -> None:
    """Each series the README lists, with the labels it says: one create and one read are
    counted under their method, route template and status, and timed by route template."""
    location = client.post("/v1/tasks", json={"title": "x"}).headers["location"]
    assert client.get(location).status_code == 200
    version = client.get("/version").json()
    text = scrape(client.app)

    assert 'tasks_http_requests_total{method="POST",route="/v1/tasks",status="201"} 1.0' in text
    assert (
        'tasks_http_requests_total{method="GET",route="/v1/tasks/{task_id}",status="200"} 1.0'
        in text
    )
    assert (
        'tasks_http_request_duration_seconds_count{method="GET",route="/v1/tasks/{task_id}"} 1.0'
        in text
    )
    assert "tasks_http_requests_in_flight 0.0" in text
    assert 'tasks_store_operation_duration_seconds_count{operation="create"} 1.0' in text
    assert "# TYPE tasks_store_errors_total counter" in text
    build = (
        f'tasks_build_info{{build_date="{version["build_date"]}",'
        f'git_revision="{version["git_revision"]}",version="{version["version"]}"}} 1.0'
    )
    assert build in text
    assert "process_resident_memory_bytes" in text


@pytest.mark.factor("IX")
def test_a_thousand_task_ids_do_not_make_a_thousand_series(client: TestClient) -> None:
    for _ in range(1000):
        client.get(f"/v1/tasks/{uuid.uuid4().hex}")
    client.get(f"/no/such/{uuid.uuid4().hex}")

    text = scrape(client.app)

    routes = {
        s.split('route="')[1].split('"')[0] for s in series(text, "tasks_http_requests_total")
    }
    assert routes <= {"/v1/tasks/{task_id}", "unmatched"}
    assert len(series(text, "tasks_http_requests_total")) < 10
    assert len(series(text, "tasks_http_request_duration_seconds_bucket")) < 60


@pytest.mark.factor("XI")
def test_log_timestamps_are_utc_iso_8601_with_milliseconds() -> None:
    formatter = JsonFormatter()
    for created in (0.0, 1_700_000_000.0005, 1_700_000_000.9999, 1_700_000_001.25, 951_782_400.5):
        record = logging.LogRecord("t", logging.INFO, "", 0, "m", None, None)
        record.created = created
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(record))["ts"] == expected


@pytest.mark.factor("XI")
def test_one_formatter_keeps_each_records_own_extra_fields() -> None:
    formatter = JsonFormatter()
    log = logging.getLogger("tasks.test")
    first = log.makeRecord("tasks.test", logging.INFO, "", 0, "a", (), None, extra={"x": 1})
    second = log.makeRecord("tasks.test", logging.INFO, "", 0, "b", (), None, extra={"y": "2"})
    third = log.makeRecord("tasks.test", logging.INFO, "", 0, "c", (), None, extra={"x": 3})

    lines = [json.loads(formatter.format(r)) for r in (first, second, third)]

    assert (lines[0]["x"], "y" in lines[0]) == (1, False)
    assert (lines[1]["y"], "x" in lines[1]) == ("2", False)
    assert lines[2]["x"] == 3


@pytest.mark.factor("XI")
def test_log_fields_writes_one_line_through_the_handlers_and_honours_the_level(
    log_stream: io.StringIO,
) -> None:
    configure_logging("info", stream=log_stream)
    log_fields(logging.getLogger("tasks.access"), "request", {"status": 200, "route": "/r"})
    configure_logging("warning", stream=log_stream)
    log_fields(logging.getLogger("tasks.access"), "request", {"status": 201})

    (line,) = (json.loads(text) for text in log_stream.getvalue().splitlines())
    assert line["logger"] == "tasks.access" and line["msg"] == "request"
    assert (line["status"], line["route"], line["level"]) == (200, "/r", "info")


@pytest.mark.factor("XI")
def test_the_access_line_written_straight_to_the_stream_is_the_one_the_handler_formats(
    log_stream: io.StringIO,
) -> None:
    """log_fields skips the LogRecord when our JSON stream handler is the only destination; the
    line must be the one the handler writes for the same record, and a filter anywhere (a test
    capturing logs, an operator's) must still see every record."""
    configure_logging("info", stream=log_stream)
    access = logging.getLogger("tasks.access")
    fields = {"request_id": "r-1", "method": "GET", "status": 200, "duration_ms": 1.5, "e": "é\n"}
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    log_fields(access, "request", fields)  # straight to the stream
    access.addFilter(keep)
    try:
        log_fields(access, "request", fields)  # through the handler, as a record
    finally:
        access.removeFilter(keep)
    direct, handled = (json.loads(text) for text in log_stream.getvalue().splitlines())
    assert len(seen) == 1
    direct.pop("ts"), handled.pop("ts")
    assert list(direct.items()) == list(handled.items())
    assert direct == {"level": "info", "logger": "tasks.access", "msg": "request", **fields}
