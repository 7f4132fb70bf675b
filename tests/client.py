"""A thin test client over real HTTP: sign-in per user, envelope checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient

PASSWORDS = {"admin@example.com": "ChangeMe123!"}
DEFAULT_PASSWORD = "Test123!"


@dataclass
class Resp:
    status: int
    body: Any
    headers: Any

    @property
    def data(self) -> Any:
        assert self.body["ok"] is True, self.body
        return self.body["data"]

    @property
    def code(self) -> str:
        assert self.body["ok"] is False, self.body
        return self.body["error"]["code"]


@dataclass
class Api:
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    async def login(self, email: str, password: str | None = None) -> str:
        r = await self.client.post(
            "/api/auth/sign-in/email",
            json={"email": email, "password": password or PASSWORDS.get(email, DEFAULT_PASSWORD)},
        )
        body = await r.json()
        assert r.status == 200, body
        # Calls authenticate with the bearer token only: a session cookie left in the jar would make a later
        # "anonymous" call of the same test signed in.
        self.client.session.cookie_jar.clear()
        self.tokens[email] = body["data"]["token"]
        return self.tokens[email]

    async def call(
        self,
        method: str,
        path: str,
        as_: str | None = None,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Resp:
        hdrs = dict(headers or {})
        if as_ is not None:
            token = self.tokens.get(as_) or (await self.login(as_) if "@" in as_ else as_)
            hdrs["Authorization"] = f"Bearer {token}"
        r = await self.client.request(
            method,
            path if path.startswith("/api/") else "/api" + path,
            json=json,
            headers=hdrs,
            params=params,
        )
        text = await r.text()
        import json as _json

        try:
            body = _json.loads(text) if text else None
        except ValueError:
            body = text
        return Resp(r.status, body, r.headers)

    async def get(self, path: str, as_: str | None = None, **kw: Any) -> Resp:
        return await self.call("GET", path, as_, **kw)

    async def post(self, path: str, as_: str | None = None, **kw: Any) -> Resp:
        return await self.call("POST", path, as_, **kw)

    async def patch(self, path: str, as_: str | None = None, **kw: Any) -> Resp:
        return await self.call("PATCH", path, as_, **kw)

    async def put(self, path: str, as_: str | None = None, **kw: Any) -> Resp:
        return await self.call("PUT", path, as_, **kw)

    async def delete(self, path: str, as_: str | None = None, **kw: Any) -> Resp:
        return await self.call("DELETE", path, as_, **kw)
