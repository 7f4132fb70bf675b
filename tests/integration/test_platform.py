"""Middleware behaviour over real HTTP: envelope, errors, request ids, idempotency, audit, lists."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from central.api.app import create_app
from central.api.registry import Router
from central.api.request import Req
from central.config import Settings
from central.db.engine import Database
from tests.client import Api

crash_router = Router(tag="test")


@crash_router.get("/test/crash", public=True)
async def crash(rq: Req) -> dict[str, Any]:
    """Raises an unexpected error."""
    raise RuntimeError("secret internal detail")


async def test_health_needs_no_auth_and_is_enveloped(api: Api) -> None:
    r = await api.get("/health")
    assert r.status == 200
    assert r.data["status"] == "ok" and r.data["db"] == "ok" and r.data["mqtt"] == "disabled"
    assert r.data["version"]
    assert r.headers["X-Request-Id"]


async def test_request_id_is_echoed_or_generated(api: Api) -> None:
    r = await api.get("/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["X-Request-Id"] == "abc-123"
    r2 = await api.get("/health", headers={"X-Request-Id": "bad id with spaces"})
    assert r2.headers["X-Request-Id"] != "bad id with spaces" and len(r2.headers["X-Request-Id"]) == 32


async def test_unknown_route_is_404_envelope(api: Api) -> None:
    r = await api.get("/no/such/route")
    assert r.status == 404 and r.code == "NOT_FOUND"
    assert r.headers["X-Request-Id"]


async def test_wrong_method_is_405_envelope(api: Api) -> None:
    r = await api.call("PUT", "/health")
    assert r.status == 405 and r.code == "METHOD_NOT_ALLOWED"


async def test_missing_credentials_is_401_envelope(api: Api) -> None:
    r = await api.get("/permissions/me")
    assert r.status == 401 and r.code == "UNAUTHORIZED"


async def test_forbidden_names_the_permission(api: Api, make_user: Any) -> None:
    await make_user("tr@example.com", "trace")
    r = await api.get("/roles", "tr@example.com")
    assert r.status == 403 and r.code == "FORBIDDEN"
    assert "system:role_manage" in r.body["error"]["message"]


async def test_malformed_json_is_422(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    token = await api.login("adm@example.com")
    r = await api.client.post(
        "/api/roles",
        data=b"{not json",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    body = await r.json()
    assert r.status == 422 and body["error"]["code"] == "VALIDATION_FAILED"


async def test_schema_violation_is_422_with_details(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    r = await api.post("/roles", "adm@example.com", json={"code": "X", "name": ""})
    assert r.status == 422 and r.code == "VALIDATION_FAILED"
    locs = {tuple(d["loc"]) for d in r.body["error"]["details"]}
    assert ("body", "code") in locs and ("body", "name") in locs
    assert all({"loc", "msg", "type"} <= set(d) for d in r.body["error"]["details"])


async def test_empty_json_body_is_treated_as_empty_object(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    token = await api.login("adm@example.com")
    r = await api.client.post(
        "/api/roles",
        data=b"",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    body = await r.json()
    # {} reaches validation (422 naming the missing fields), not a JSON parse error.
    assert r.status == 422
    assert {tuple(d["loc"]) for d in body["error"]["details"]} >= {("body", "code"), ("body", "name")}


async def test_body_over_limit_is_413(aiohttp_client: Any, settings: Settings, database: Database) -> None:
    small = settings.model_copy(update={"http_max_body_bytes": 2048})
    client: TestClient = await aiohttp_client(create_app(small, database=database))
    r = await client.post(
        "/api/auth/sign-in/email", data=b"x" * 10_000, headers={"Content-Type": "application/json"}
    )
    body = await r.json()
    assert r.status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_unexpected_error_is_500_without_traceback(
    aiohttp_client: Any, settings: Settings, database: Database
) -> None:
    client: TestClient = await aiohttp_client(
        create_app(settings, database=database, extra_routers=[crash_router])
    )
    r = await client.get("/api/test/crash")
    text = await r.text()
    assert r.status == 500
    assert (await r.json())["error"]["code"] == "INTERNAL_ERROR"
    assert "secret internal detail" not in text and "Traceback" not in text


async def test_idempotency_key_replays_the_stored_response(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    body = {"code": "line-lead", "name": "Line lead", "permissions": ["run:read"]}
    h = {"Idempotency-Key": "k-1"}
    first = await api.post("/roles", "adm@example.com", json=body, headers=h)
    again = await api.post("/roles", "adm@example.com", json=body, headers=h)
    assert first.status == again.status == 200
    assert again.headers.get("Idempotency-Replayed") == "true"
    assert again.body == first.body
    roles = await api.get("/roles", "adm@example.com")
    assert [r["code"] for r in roles.data].count("line-lead") == 1
    other = await api.post("/roles", "adm@example.com", json={**body, "name": "Other"}, headers=h)
    assert other.status == 409 and other.code == "IDEMPOTENCY_KEY_REUSED"


async def test_idempotency_replays_a_business_refusal(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    body = {"code": "planner", "name": "Mine"}
    h = {"Idempotency-Key": "k-reserved"}
    first = await api.post("/roles", "adm@example.com", json=body, headers=h)
    again = await api.post("/roles", "adm@example.com", json=body, headers=h)
    assert first.status == again.status == 400 and again.code == "ROLE_CODE_RESERVED"
    assert again.headers.get("Idempotency-Replayed") == "true"


async def test_every_write_is_audited_success_and_refusal(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    ok = await api.post(
        "/roles",
        "adm@example.com",
        json={"code": "aud", "name": "A"},
        headers={"X-Request-Id": "req-ok", "Idempotency-Key": "aud-1"},
    )
    assert ok.status == 200
    refused = await api.post(
        "/roles", "adm@example.com", json={"code": "admin", "name": "A"}, headers={"X-Request-Id": "req-fail"}
    )
    assert refused.code == "ROLE_CODE_RESERVED"
    logs = (await api.get("/audit-logs", "adm@example.com", params={"entityType": "ROLE"})).data["items"]
    by_req = {e["requestId"]: e for e in logs}
    success, fail = by_req["req-ok"], by_req["req-fail"]
    assert success["status"] == "SUCCESS" and success["action"] == "ROLE_CREATE"
    assert success["idempotencyKey"] == "aud-1" and success["actorName"] == "adm"
    assert {"op": "add", "path": "/code", "before": None, "after": "aud"} in success["diff"]
    assert fail["status"] == "FAIL" and fail["errorCode"] == "ROLE_CODE_RESERVED"
    one = await api.get(f"/audit-logs/{fail['id']}", "adm@example.com")
    assert one.data["id"] == fail["id"]


async def test_audit_update_records_before_after_diff(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    role = (await api.post("/roles", "adm@example.com", json={"code": "r1", "name": "Old"})).data
    await api.patch(f"/roles/{role['id']}", "adm@example.com", json={"name": "New"})
    logs = (await api.get("/audit-logs", "adm@example.com", params={"action": "ROLE_UPDATE"})).data["items"]
    assert logs[0]["diff"] == [{"op": "replace", "path": "/name", "before": "Old", "after": "New"}]


async def test_non_privileged_users_see_only_their_own_audit_rows(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    await make_user("pl@example.com", "planner")
    await api.post("/roles", "adm@example.com", json={"code": "r2", "name": "R"})
    await api.login("pl@example.com")
    rows = (await api.get("/audit-logs", "pl@example.com")).data["items"]
    assert rows and all(r["actorName"] == "pl" for r in rows)


@pytest.mark.parametrize("sort", ["nope.asc", "email.sideways", "password.asc"])
async def test_sort_outside_allow_list_is_422(api: Api, make_user: Any, sort: str) -> None:
    await make_user("adm@example.com", "admin")
    r = await api.get("/users", "adm@example.com", params={"sort": sort})
    assert r.status == 422 and r.code == "VALIDATION_FAILED"


async def test_list_pagination_search_and_sort(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    for i in range(5):
        await make_user(f"u{i}@example.com", "trace")
    r = await api.get(
        "/users", "adm@example.com", params={"pageSize": 2, "page": 2, "sort": "email.asc", "search": "u"}
    )
    assert r.data["total"] == 5 and r.data["page"] == 2 and r.data["pageSize"] == 2
    assert [u["email"] for u in r.data["items"]] == ["u2@example.com", "u3@example.com"]
    too_big = await api.get("/users", "adm@example.com", params={"pageSize": 101})
    assert too_big.status == 422


@pytest.mark.parametrize("depth", [300, 1000])
async def test_deeply_nested_bodies_are_refused_or_handled_never_a_500(
    api: Api, make_user: Any, depth: int
) -> None:
    # Valid JSON as deep as the parser takes (orjson reads 1,024 levels): deeper than Python's recursion limit
    # (the NUL check walks it) and than orjson writes (255; the audit row stores the body). Written by hand:
    # no JSON encoder writes it.
    await make_user("deep@example.com", "admin")
    token = await api.login("deep@example.com")
    nested = '{"a":' * depth + '"x"' + "}" * depth
    head = (
        '{"dedupeKey":"deep","sourceSystem":"TESTSYS","eventType":"AUTO",'
        '"occurredAt":"2026-01-01T00:00:00.000Z","payload":{"stationCode":"ST-NONE","sn":"SN-NONE",'
        '"result":"PASS","extra":'
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for extra in (nested, '{"a":[{"b":"x\\u0000y"}]}'):
        r = await api.client.post("/api/ingest/events", data=head + extra + "}}", headers=headers)
        text = await r.text()
        assert 400 <= r.status < 500, (r.status, text[:300])
        assert '"ok":false' in text.replace(" ", ""), text[:300]
        assert ("too_deep" if extra == nested else "string_nul") in text, text[:300]
