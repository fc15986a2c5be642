"""The HTTP contract of /v1/tasks and the probes, run against both stores (memory and Redis)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app

pytestmark = pytest.mark.factor("X")

PROBLEM = "application/problem+json"


def create(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/tasks", json={"title": "a task", **body})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


def is_rfc3339_utc(value: str) -> bool:
    return value.endswith("Z") and datetime.fromisoformat(value).utcoffset() is not None


# --- create and read ----------------------------------------------------------------------


def test_create_returns_201_with_location_and_the_task(client: TestClient) -> None:
    response = client.post("/v1/tasks", json={"title": "write tests", "description": "all"})

    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["title"] == "write tests" and task["description"] == "all"
    assert task["status"] == "todo"
    assert task["completed_at"] is None
    assert is_rfc3339_utc(task["created_at"]) and task["updated_at"] == task["created_at"]
    assert set(task) == {
        "id", "title", "description", "status", "created_at", "updated_at", "completed_at"
    }  # fmt: skip
    # The ETag of the created task: a conditional write may follow without a read.
    assert response.headers["etag"] == client.get(response.headers["location"]).headers["etag"]


def test_get_returns_the_task_with_an_etag(client: TestClient) -> None:
    task = create(client, title="read me")

    response = client.get(f"/v1/tasks/{task['id']}")

    assert response.status_code == 200
    assert response.json() == task
    assert response.headers["etag"].startswith('"')


def test_get_with_current_etag_in_if_none_match_returns_304(client: TestClient) -> None:
    task = create(client)
    etag = client.get(f"/v1/tasks/{task['id']}").headers["etag"]

    response = client.get(f"/v1/tasks/{task['id']}", headers={"If-None-Match": etag})

    assert response.status_code == 304


def test_creating_a_done_task_marks_it_completed(client: TestClient) -> None:
    task = create(client, status="done")
    assert task["completed_at"] == task["created_at"]


def test_get_unknown_task_returns_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/tasks/01aaaaaaaaaaaaaaaaaaaaaaaa"), 404)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": "x" * 201},
        {"title": "ok", "description": "x" * 10_001},
        {"title": "ok", "status": "later"},
        {"title": "ok", "owner": "me"},
        {"title": None},
    ],
    ids=["no-title", "empty-title", "long-title", "long-description", "bad-status",
         "unknown-field", "null-title"],
)  # fmt: skip
def test_invalid_create_returns_422_problem_listing_the_errors(
    client: TestClient, body: dict[str, Any]
) -> None:
    problem = assert_problem(client.post("/v1/tasks", json=body), 422)
    assert problem["errors"] and all("loc" in e and "msg" in e for e in problem["errors"])


def test_title_and_description_at_their_limits_are_accepted(client: TestClient) -> None:
    create(client, title="x" * 200, description="y" * 10_000)


def test_malformed_json_returns_400_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert assert_problem(response, 400)["type"] == "urn:tasks:problem:malformed-json"


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "status=later"])
def test_invalid_list_query_returns_422_problem(client: TestClient, query: str) -> None:
    assert_problem(client.get(f"/v1/tasks?{query}"), 422)


def test_unknown_cursor_returns_400_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/tasks?cursor=not-a-cursor"), 400)


def test_unknown_route_and_method_are_problems_too(client: TestClient) -> None:
    assert_problem(client.get("/nowhere"), 404)
    assert_problem(client.put("/v1/tasks"), 405)


# --- patch, etags, delete -------------------------------------------------------------------


def test_patch_changes_only_the_fields_given(client: TestClient) -> None:
    task = create(client, title="before", description="keep")

    response = client.patch(f"/v1/tasks/{task['id']}", json={"title": "after"})

    assert response.status_code == 200
    patched = response.json()
    assert patched["title"] == "after" and patched["description"] == "keep"
    assert patched["updated_at"] > task["updated_at"]
    assert client.get(f"/v1/tasks/{task['id']}").json() == patched


def test_moving_to_done_sets_completed_at_and_moving_away_clears_it(client: TestClient) -> None:
    task = create(client)

    done = client.patch(f"/v1/tasks/{task['id']}", json={"status": "done"}).json()
    assert is_rfc3339_utc(done["completed_at"])

    again = client.patch(f"/v1/tasks/{task['id']}", json={"status": "in_progress"}).json()
    assert again["completed_at"] is None


def test_patch_with_current_etag_succeeds(client: TestClient) -> None:
    task = create(client)
    etag = client.get(f"/v1/tasks/{task['id']}").headers["etag"]

    response = client.patch(
        f"/v1/tasks/{task['id']}", json={"title": "new"}, headers={"If-Match": etag}
    )

    assert response.status_code == 200
    assert response.headers["etag"] != etag


def test_patch_with_stale_etag_returns_412(client: TestClient) -> None:
    task = create(client)
    stale = client.get(f"/v1/tasks/{task['id']}").headers["etag"]
    client.patch(f"/v1/tasks/{task['id']}", json={"title": "someone else"})

    response = client.patch(
        f"/v1/tasks/{task['id']}", json={"title": "mine"}, headers={"If-Match": stale}
    )

    assert_problem(response, 412)
    assert client.get(f"/v1/tasks/{task['id']}").json()["title"] == "someone else"


def test_patch_with_null_field_returns_422(client: TestClient) -> None:
    task = create(client)
    assert_problem(client.patch(f"/v1/tasks/{task['id']}", json={"title": None}), 422)


def test_patch_unknown_task_returns_404(client: TestClient) -> None:
    assert_problem(client.patch("/v1/tasks/01aaaaaaaaaaaaaaaaaaaaaaaa", json={"title": "x"}), 404)


def test_delete_returns_204_then_the_task_is_gone(client: TestClient) -> None:
    task = create(client)

    assert client.delete(f"/v1/tasks/{task['id']}").status_code == 204

    assert_problem(client.get(f"/v1/tasks/{task['id']}"), 404)
    assert_problem(client.delete(f"/v1/tasks/{task['id']}"), 404)
    assert task["id"] not in [t["id"] for t in client.get("/v1/tasks").json()["items"]]


# --- listing --------------------------------------------------------------------------------


def test_list_is_newest_first_with_default_limit_50(client: TestClient) -> None:
    ids = [create(client, title=f"t{i}")["id"] for i in range(55)]

    page = client.get("/v1/tasks").json()

    assert [t["id"] for t in page["items"]] == ids[::-1][:50]
    assert page["next_cursor"]
    # The bounds of `limit`, 1 and 100, are both served.
    narrowest, widest = client.get("/v1/tasks?limit=1"), client.get("/v1/tasks?limit=100")
    assert narrowest.status_code == widest.status_code == 200, widest.text
    assert [t["id"] for t in narrowest.json()["items"]] == ids[-1:]
    assert [t["id"] for t in widest.json()["items"]] == ids[::-1]
    assert widest.json()["next_cursor"] is None


def test_list_filters_by_status(client: TestClient) -> None:
    todo = create(client)
    done = create(client, status="done")
    moved = create(client)
    client.patch(f"/v1/tasks/{moved['id']}", json={"status": "done"})

    listed = client.get("/v1/tasks?status=done").json()["items"]

    assert [t["id"] for t in listed] == [moved["id"], done["id"]]
    assert [t["id"] for t in client.get("/v1/tasks?status=todo").json()["items"]] == [todo["id"]]


def test_last_page_has_null_cursor_and_no_link(client: TestClient) -> None:
    create(client)
    response = client.get("/v1/tasks?limit=5")
    assert response.json()["next_cursor"] is None
    assert "link" not in response.headers


def test_link_header_carries_the_next_cursor(client: TestClient) -> None:
    for _ in range(3):
        create(client, status="done")

    response = client.get("/v1/tasks?limit=2&status=done")

    cursor = response.json()["next_cursor"]
    link = response.headers["link"]
    assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
    assert "status=done" in link and "limit=2" in link
    following = client.get(link[1 : link.index(">")]).json()
    assert len(following["items"]) == 1 and following["next_cursor"] is None


def test_paging_while_tasks_are_added_never_repeats_or_skips(client: TestClient) -> None:
    existing = [create(client, title=f"old {i}")["id"] for i in range(23)]
    seen: list[str] = []
    cursor: str | None = None

    while True:
        query = "limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/tasks?{query}").json()
        seen += [t["id"] for t in page["items"]]
        for i in range(3):  # others keep adding tasks between our pages
            create(client, title=f"new {i}")
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == len(set(seen)), "a task was repeated"
    assert seen == existing[::-1], "a task that existed when paging began was skipped"


def test_list_cursors_are_url_safe(client: TestClient) -> None:
    for _ in range(2):
        create(client)
    cursor = client.get("/v1/tasks?limit=1").json()["next_cursor"]
    assert cursor.replace("-", "").replace("_", "").isalnum()


# --- idempotency ----------------------------------------------------------------------------


def test_same_idempotency_key_and_body_replays_the_first_response(client: TestClient) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/v1/tasks", json={"title": "once"}, headers=headers)
    client.patch(first.headers["location"], json={"title": "changed later"})

    again = client.post("/v1/tasks", json={"title": "once"}, headers=headers)

    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert [t["title"] for t in client.get("/v1/tasks").json()["items"]] == ["changed later"]


def test_same_idempotency_key_with_another_body_is_rejected(client: TestClient) -> None:
    headers = {"Idempotency-Key": "order-43"}
    client.post("/v1/tasks", json={"title": "once"}, headers=headers)

    response = client.post("/v1/tasks", json={"title": "twice"}, headers=headers)

    assert_problem(response, 422)
    assert len(client.get("/v1/tasks").json()["items"]) == 1


def test_requests_without_idempotency_key_each_create_a_task(client: TestClient) -> None:
    create(client, title="same")
    create(client, title="same")
    assert len(client.get("/v1/tasks").json()["items"]) == 2


# --- write protection -----------------------------------------------------------------------


@pytest.fixture
def protected(store_kind: str, make_settings):  # type: ignore[no-untyped-def]
    app = create_app(make_settings(store_kind, api_keys="key-one-0123456789, key-two-0123456789"))
    with TestClient(app) as test_client:
        yield test_client


def test_with_api_keys_writes_without_a_key_return_401_problem(protected: TestClient) -> None:
    response = protected.post("/v1/tasks", json={"title": "x"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer key-three-0123456789"}
    assert_problem(protected.post("/v1/tasks", json={"title": "x"}, headers=wrong), 401)
    assert_problem(protected.delete("/v1/tasks/01aaaaaaaaaaaaaaaaaaaaaaaa"), 401)
    # An existing task: PATCH and DELETE without a key, or with a wrong one, change nothing.
    key = {"Authorization": "Bearer key-one-0123456789"}
    location = protected.post("/v1/tasks", json={"title": "kept"}, headers=key).headers["location"]
    for headers in ({}, wrong):
        assert_problem(protected.patch(location, json={"title": "x"}, headers=headers), 401)
        assert_problem(protected.delete(location, headers=headers), 401)
    assert protected.get(location).json()["title"] == "kept"


def test_with_api_keys_writes_with_any_configured_key_succeed(protected: TestClient) -> None:
    for key in ("key-one-0123456789", "key-two-0123456789"):
        headers = {"Authorization": f"Bearer {key}"}
        assert protected.post("/v1/tasks", json={"title": "x"}, headers=headers).status_code == 201


def test_with_api_keys_reads_stay_open(protected: TestClient) -> None:
    key = {"Authorization": "Bearer key-one-0123456789"}
    location = protected.post("/v1/tasks", json={"title": "x"}, headers=key).headers["location"]
    for path in ("/v1/tasks", "/v1/tasks?status=todo", location, "/livez", "/version"):
        assert protected.get(path).status_code == 200, path
        assert protected.head(path).status_code == 200, path


# --- probes and docs ------------------------------------------------------------------------


def test_probes_version_and_docs_answer(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert set(client.get("/version").json()) == {"version", "git_revision", "build_date"}
    assert "/v1/tasks/{task_id}" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


@pytest.mark.factor("V")
def test_version_reports_what_the_build_set(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(version="1.2.3", git_revision="abc1234", build_date="2025-01-01")
    with TestClient(create_app(settings)) as client:
        assert client.get("/version").json() == {
            "version": "1.2.3", "git_revision": "abc1234", "build_date": "2025-01-01"
        }  # fmt: skip


def test_openapi_documents_each_operation_its_tags_and_the_conditional_get_header(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    get_task = paths["/v1/tasks/{task_id}"]["get"]
    header = {p["name"]: p for p in get_task["parameters"] if p["in"] == "header"}
    assert header["If-None-Match"]["required"] is False
    assert {p["name"] for p in get_task["parameters"] if p["in"] == "path"} == {"task_id"}
    assert get_task["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Task"
    }
    assert set(paths["/v1/tasks"]) == {"get", "post"}
    assert set(paths["/v1/tasks/{task_id}"]) == {"get", "patch", "delete"}
    assert all(op["tags"] == ["tasks"] for op in paths["/v1/tasks/{task_id}"].values())
    assert paths["/readyz"]["get"]["tags"] == ["operations"]
