"""The operator's path: `mes-central migrate`, `seed demo`, `serve` as real processes, then S1 over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "central.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def server(db_url: str, tmp_path: Any) -> Iterator[tuple[str, dict[str, str], Any]]:
    port = _free_port()
    env = {**os.environ, "MES_DATABASE_URL": db_url, "MES_HTTP_PORT": str(port), "MES_LOG_LEVEL": "INFO"}
    env.pop("MES_CONFIG", None)
    migrated = _run(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "database at revision" in migrated.stdout
    key_file = tmp_path / "edge.key"
    seeded = _run(env, "seed", "demo", "--edge-key-file", str(key_file))
    assert seeded.returncode == 0, seeded.stderr
    # The edge key goes to an owner-only file, never to the terminal.
    key = key_file.read_text().strip()
    assert key.startswith("mes_") and key not in seeded.stdout + seeded.stderr
    assert key_file.stat().st_mode & 0o777 == 0o600
    with open(tmp_path / "server.log", "w+") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "central.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:  # poll with a deadline, never a fixed sleep
                try:
                    with urllib.request.urlopen(f"{base}/api/health", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert proc.poll() is None, "server exited early"
                assert time.monotonic() < deadline, "server did not become healthy in 30 s"
                time.sleep(0.05)
            yield base, env, log
        finally:
            proc.terminate()
            proc.wait(timeout=20)


async def test_s1_health_and_authentication_smoke(server: tuple[str, dict[str, str], Any]) -> None:
    base, _, log = server
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/api/health") as r:
            body = await r.json()
            assert r.status == 200 and body["ok"] is True and body["data"]["status"] == "ok"
        async with http.post(
            f"{base}/api/auth/sign-in/email", json={"email": "planner@example.com", "password": "Test123!"}
        ) as r:
            body = await r.json()
            assert r.status == 200 and set(body["data"]) == {"token", "expiresAt", "user"}
            assert r.headers.getall("Set-Cookie")[0].startswith("mes_session=")
        async with http.get(f"{base}/api/permissions/me") as r:  # the cookie from sign-in
            me = (await r.json())["data"]
            assert r.status == 200
            assert me["roles"][0]["code"] == "planner" and me["roles"][0]["dataScope"] == "ALL"
            assert me["lineIds"] == [] and me["stationIds"] == []
        async with http.get(f"{base}/api/auth/get-session") as r:
            assert (await r.json())["data"]["user"]["email"] == "planner@example.com"
        async with http.post(f"{base}/api/auth/sign-out") as r:
            assert r.status == 200
        async with http.get(f"{base}/api/permissions/me") as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "UNAUTHORIZED"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(
            f"{base}/api/auth/sign-in/email", json={"email": "planner@example.com", "password": "wrong"}
        ) as r:
            body = await r.json()
            assert r.status == 401 and body == {
                "ok": False,
                "error": {"code": "INVALID_EMAIL_OR_PASSWORD", "message": "Invalid email or password"},
            }
        async with http.get(f"{base}/api/roles") as r:
            assert r.status == 401 and (await r.json())["ok"] is False
        async with http.post(
            f"{base}/api/auth/sign-in/email", json={"email": "operator@example.com", "password": "Test123!"}
        ) as r:
            assert r.status == 200
        async with http.get(f"{base}/api/roles") as r:
            body = await r.json()
            assert r.status == 403 and body["error"]["code"] == "FORBIDDEN"
            assert "system:role_manage" in body["error"]["message"]
    log.flush()
    log.seek(0)
    text = log.read()
    # S4: neither the passwords used nor the session tokens appear in the server's log.
    assert "Test123!" not in text and "/api/health" in text


async def test_tokens_and_users_commands(server: tuple[str, dict[str, str], Any]) -> None:
    base, env, _ = server
    made = _run(
        {**env, "MES_NEW_USER_PASSWORD": "Another-Pass1"},
        "users",
        "create",
        "--email",
        "lead@example.com",
        "--role",
        "planner",
    )
    assert made.returncode == 0, made.stderr
    key = _run(env, "tokens", "create", "--name", "erp-bridge", "--role", "planner")
    assert key.returncode == 0, key.stderr
    secret = key.stdout.strip()
    assert secret.startswith("mes_")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(f"{base}/api/permissions/me", headers={"Authorization": f"Bearer {secret}"}) as r:
            assert r.status == 200 and (await r.json())["data"]["roles"][0]["code"] == "planner"
        async with http.post(
            f"{base}/api/auth/sign-in/email", json={"email": "lead@example.com", "password": "Another-Pass1"}
        ) as r:
            assert r.status == 200
    dup = _run(
        {**env, "MES_NEW_USER_PASSWORD": "Another-Pass1"},
        "users",
        "create",
        "--email",
        "lead@example.com",
        "--role",
        "planner",
    )
    assert dup.returncode == 1 and "USER_EMAIL_EXISTS" in dup.stderr


def test_bad_configuration_exits_with_a_clear_message(tmp_path: Any) -> None:
    env = {**os.environ, "MES_HTTP_PORT": "eighty"}
    r = _run(env, "migrate")
    assert r.returncode == 2 and "http_port (MES_HTTP_PORT)" in r.stderr and "Traceback" not in r.stderr
