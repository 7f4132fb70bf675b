"""Sign-in, sessions, API keys, rate limit, users and roles administration over HTTP."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import ApiKey, AuthSession, User
from central.domain.clock import utcnow
from tests.client import Api


async def test_sign_in_sets_one_session_cookie_first(api: Api, make_user: Any) -> None:
    await make_user("pl@example.com", "planner")
    r = await api.client.post(
        "/api/auth/sign-in/email", json={"email": "pl@example.com", "password": "Test123!"}
    )
    body = await r.json()
    assert r.status == 200 and body["ok"] is True
    assert set(body["data"]) == {"token", "expiresAt", "user"}
    assert body["data"]["user"]["roles"] == ["planner"] and body["data"]["expiresAt"].endswith("Z")
    cookies = r.headers.getall("Set-Cookie")
    assert len(cookies) == 1 and cookies[0].startswith(f"mes_session={body['data']['token']};")
    for attr in ("HttpOnly", "Path=/", "SameSite=Lax", "Max-Age=604800"):
        assert attr in cookies[0]


async def test_cookie_works_on_permissions_me(api: Api, make_user: Any) -> None:
    await make_user("pl@example.com", "planner")
    await api.client.post("/api/auth/sign-in/email", json={"email": "pl@example.com", "password": "Test123!"})
    r = await api.client.get("/api/permissions/me")  # the cookie jar sends mes_session
    data = (await r.json())["data"]
    assert r.status == 200
    assert data["roles"][0]["code"] == "planner" and data["roles"][0]["dataScope"] == "ALL"
    assert "wo:release" in data["roles"][0]["permissions"]
    assert data["lineIds"] == [] and data["stationIds"] == []


async def test_wrong_password_and_unknown_user_are_401(api: Api, make_user: Any) -> None:
    await make_user("pl@example.com", "planner")
    for email, pw in (("pl@example.com", "nope"), ("ghost@example.com", "Test123!")):
        r = await api.post("/auth/sign-in/email", json={"email": email, "password": pw})
        assert r.status == 401 and r.code == "INVALID_EMAIL_OR_PASSWORD"


async def test_sign_in_is_rate_limited_per_account(api: Api, make_user: Any) -> None:
    await make_user("pl@example.com", "planner")
    for _ in range(5):
        r = await api.post("/auth/sign-in/email", json={"email": "pl@example.com", "password": "bad"})
        assert r.status == 401
    r = await api.post("/auth/sign-in/email", json={"email": "pl@example.com", "password": "Test123!"})
    assert r.status == 429 and r.code == "TOO_MANY_ATTEMPTS"


async def test_failed_sign_in_is_audited_without_the_password(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    await api.post("/auth/sign-in/email", json={"email": "adm@example.com", "password": "S3cret-Wrong!"})
    rows = (
        await api.get("/audit-logs", "adm@example.com", params={"action": "SIGN_IN", "status": "FAIL"})
    ).data
    assert rows["total"] == 1
    assert "S3cret-Wrong!" not in str(rows) and rows["items"][0]["payload"]["password"] == "***"


async def test_get_session_and_sign_out(api: Api, make_user: Any) -> None:
    await make_user("pl@example.com", "planner")
    s = (await api.get("/auth/get-session", "pl@example.com")).data
    assert s["user"]["email"] == "pl@example.com" and s["session"]["expiresAt"]
    out = await api.post("/auth/sign-out", "pl@example.com")
    assert out.status == 200 and "mes_session=" in out.headers["Set-Cookie"]
    again = await api.get("/auth/get-session", "pl@example.com")
    assert again.status == 401 and again.code == "UNAUTHORIZED"


async def test_expired_session_is_refused(api: Api, make_user: Any, database: Database) -> None:
    await make_user("pl@example.com", "planner")
    await api.login("pl@example.com")
    async with database.writer() as s, s.begin():
        await s.execute(update(AuthSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = await api.get("/permissions/me", "pl@example.com")
    assert r.status == 401


async def test_session_token_is_stored_hashed(api: Api, make_user: Any, database: Database) -> None:
    await make_user("pl@example.com", "planner")
    token = await api.login("pl@example.com")
    async with database.reader() as s:
        hashes = (await s.scalars(select(AuthSession.token_hash))).all()
        pw = await s.scalar(select(User.password_hash).where(User.email == "pl@example.com"))
    assert token not in hashes and len(hashes[0]) == 64
    assert pw and pw.startswith("scrypt$") and "Test123!" not in pw


async def test_api_key_lifecycle(api: Api, make_user: Any, database: Database) -> None:
    await make_user("adm@example.com", "admin")
    created = await api.post("/api-keys", "adm@example.com", json={"name": "erp-bridge", "role": "planner"})
    assert created.status == 200
    key = created.data["key"]
    assert key.startswith("mes_")
    me = await api.get("/permissions/me", key)
    assert me.status == 200 and me.data["roles"][0]["code"] == "planner"
    listed = (await api.get("/api-keys", "adm@example.com")).data
    assert listed[0]["prefix"] and "key" not in listed[0]
    async with database.reader() as s:
        stored = await s.scalar(select(ApiKey.key_hash))
    assert stored and key not in stored and stored.startswith("scrypt$")
    wrong = await api.get("/permissions/me", key[:-2] + "xx")
    assert wrong.status == 401
    revoked = await api.delete(f"/api-keys/{created.data['id']}", "adm@example.com")
    assert revoked.data["revokedAt"]
    assert (await api.get("/permissions/me", key)).status == 401


async def test_api_key_needs_an_unscoped_role(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    r = await api.post("/api-keys", "adm@example.com", json={"name": "x", "role": "operator"})
    assert r.status == 400 and r.code == "API_KEY_ROLE_SCOPED"
    r = await api.post("/api-keys", "adm@example.com", json={"name": "x"})
    assert r.code == "API_KEY_OWNER_REQUIRED"


async def test_role_admin_rules(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    roles = {r["code"]: r for r in (await api.get("/roles", "adm@example.com")).data}
    assert set(roles) >= {"admin", "planner", "engineer", "quality", "material", "operator", "trace"}
    assert all(roles[c]["isSystem"] for c in ("admin", "operator"))
    locked = await api.patch(f"/roles/{roles['planner']['id']}", "adm@example.com", json={"name": "x"})
    assert locked.status == 400 and locked.code == "ROLE_SYSTEM_LOCKED"
    locked_del = await api.delete(f"/roles/{roles['planner']['id']}", "adm@example.com")
    assert locked_del.code == "ROLE_SYSTEM_LOCKED"
    reserved = await api.post("/roles", "adm@example.com", json={"code": "operator", "name": "x"})
    assert reserved.code == "ROLE_CODE_RESERVED"
    bad = await api.post(
        "/roles",
        "adm@example.com",
        json={"code": "lead", "name": "L", "permissions": ["run:read", "run:fly"]},
    )
    assert bad.status == 400 and bad.code == "INVALID_PERMISSION"
    ok = await api.post(
        "/roles", "adm@example.com", json={"code": "lead", "name": "L", "permissions": ["run:read"]}
    )
    dup = await api.post("/roles", "adm@example.com", json={"code": "lead", "name": "L"})
    assert dup.status == 409 and dup.code == "ROLE_EXISTS"
    upd = await api.patch(
        f"/roles/{ok.data['id']}",
        "adm@example.com",
        json={"permissions": ["run:read", "wo:read"], "dataScope": "ASSIGNED_LINES"},
    )
    assert upd.data["permissions"] == ["run:read", "wo:read"] and upd.data["dataScope"] == "ASSIGNED_LINES"
    missing = await api.patch("/roles/999999", "adm@example.com", json={"name": "x"})
    assert missing.status == 404 and missing.code == "ROLE_NOT_FOUND"
    gone = await api.delete(f"/roles/{ok.data['id']}", "adm@example.com")
    assert gone.data == {"id": ok.data["id"], "deleted": True}


async def test_user_admin_rules(api: Api, make_user: Any) -> None:
    await make_user("adm@example.com", "admin")
    base = {"email": "new@example.com", "name": "New", "password": "Longpass1!"}
    needs_line = await api.post("/users", "adm@example.com", json={**base, "roles": ["material"]})
    assert needs_line.status == 400 and needs_line.code == "LINE_BINDING_REQUIRED"
    needs_station = await api.post("/users", "adm@example.com", json={**base, "roles": ["operator"]})
    assert needs_station.code == "STATION_BINDING_REQUIRED"
    unknown_role = await api.post("/users", "adm@example.com", json={**base, "roles": ["wizard"]})
    assert unknown_role.status == 404 and unknown_role.code == "ROLE_NOT_FOUND"
    created = await api.post("/users", "adm@example.com", json={**base, "roles": ["planner", "trace"]})
    assert created.data["roles"] == ["planner", "trace"]
    dup = await api.post("/users", "adm@example.com", json={**base, "roles": []})
    assert dup.status == 409 and dup.code == "USER_EMAIL_EXISTS"
    r = await api.post("/auth/sign-in/email", json={"email": "new@example.com", "password": "Longpass1!"})
    assert r.status == 200
    off = await api.patch(f"/users/{created.data['id']}", "adm@example.com", json={"isActive": False})
    assert off.data["isActive"] is False
    r = await api.post("/auth/sign-in/email", json={"email": "new@example.com", "password": "Longpass1!"})
    assert r.status == 401
    listed = await api.get("/users", "adm@example.com", params={"search": "new@"})
    assert [u["email"] for u in listed.data["items"]] == ["new@example.com"]


async def test_multi_role_permissions_are_the_union_with_widest_scope(
    api: Api, make_user: Any, database: Database
) -> None:
    from central.db.models import Line, Station

    async with database.writer() as s, s.begin():
        line = Line(code="L1", name="L1", process_type="SMT")
        s.add(line)
        await s.flush()
        st = Station(code="S1", name="S1", line_id=line.id, station_type="MANUAL")
        s.add(st)
        await s.flush()
        line_id, st_id = line.id, st.id
    await make_user("multi@example.com", "operator", "trace", line_ids=[line_id], station_ids=[st_id])
    me = (await api.get("/permissions/me", "multi@example.com")).data
    assert {r["code"] for r in me["roles"]} == {"operator", "trace"}
    assert {"exec:track_in", "trace:export"} <= set(me["permissions"])
    assert me["lineIds"] == [line_id] and me["stationIds"] == [st_id]


async def test_grants_are_cached_briefly_but_credentials_are_checked_on_every_request(
    api: Api, database: Database, make_user: Any, monkeypatch: Any
) -> None:
    from sqlalchemy import text

    from central.services import auth

    monkeypatch.setattr(auth, "GRANTS_TTL", 1.0)
    await make_user("cache@example.com", "planner")
    assert (await api.get("/work-orders", "cache@example.com")).status == 200
    # Another process takes the role away (plain SQL: not through this process's ORM): this process keeps the
    # grants it loaded for at most GRANTS_TTL, then reads them again.
    async with database.engine.begin() as conn:
        await conn.execute(
            text(
                "DELETE FROM user_role_assignments WHERE user_id = "
                "(SELECT id FROM users WHERE email = 'cache@example.com')"
            )
        )
    assert (await api.get("/work-orders", "cache@example.com")).status == 200
    await asyncio.sleep(1.2)
    r = await api.get("/work-orders", "cache@example.com")
    assert (r.status, r.body["error"]["code"]) == (403, "FORBIDDEN")
    # Disabling the user takes effect on the very next request, cache or not.
    await make_user("cache2@example.com", "planner")
    assert (await api.get("/work-orders", "cache2@example.com")).status == 200
    async with database.engine.begin() as conn:
        await conn.execute(text("UPDATE users SET is_active = false WHERE email = 'cache2@example.com'"))
    assert (await api.get("/work-orders", "cache2@example.com")).status == 401
    # A change this process writes applies at once (no waiting for the TTL): a role given over REST.
    await make_user("adm@example.com", "admin")
    await make_user("cache3@example.com", "trace")
    assert (await api.get("/work-orders", "cache3@example.com")).status == 403
    async with database.reader() as s:
        uid = await s.scalar(select(User.id).where(User.email == "cache3@example.com"))
    r = await api.patch(f"/users/{uid}", "adm@example.com", json={"roles": ["planner"]})
    assert r.status == 200, r.body
    assert (await api.get("/work-orders", "cache3@example.com")).status == 200
