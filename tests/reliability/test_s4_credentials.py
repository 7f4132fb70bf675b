"""S4 (quality-bars.md): credentials — slow hashes only, sessions expire, sign-in rate-limited, MQTT TLS.

Already covered elsewhere, and not repeated here:
- tests/integration/test_auth.py: session tokens stored as SHA-256 digests, a session past its stored expiry
  is 401, 5 wrong passwords → 429 `TOO_MANY_ATTEMPTS` even for the right password, failed sign-ins audited
  with the password masked, API keys stored as scrypt and revoked keys refused.
- tests/integration/test_edge_forwarder.py: the edge agent over TLS with per-edge credentials against a real
  Mosquitto (`test_tls_with_credentials_delivers_and_bad_credentials_are_refused`), never falling back to
  plain text and refusing an untrusted certificate (`test_tls_never_falls_back_to_plain_text`).
- The "no secret in logs" grep over a whole scenario belongs to R1.

Added here: every secret the product creates (demo seed through the real CLI with `--edge-key-file`, users
and a password change, an API key, an edge registration, a session) appears nowhere in the database in plain
text, and each password/key hash is scrypt with its real cost; the session lifetime follows the setting; the
rate limit holds until its window passes and also counts per address; central's MQTT consumer over TLS with
broker credentials, and no plain-text fallback when `mqtts://` is configured.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import paho.mqtt.client as mqtt
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from central.api.app import create_app
from central.config import Settings
from central.db.base import Base
from central.db.engine import Database, create_database
from central.db.models import ApiKey, AuthSession, SignInAttempt, User
from central.domain.clock import utcnow
from shared import topics
from tests.brokers import Broker, Tls, make_tls
from tests.brokers import User as BrokerUser
from tests.client import Api
from tests.integration.test_mqtt_consumer import ingest_event, now
from tests.reliability.conftest import Recorder

ROOT = Path(__file__).resolve().parents[2]
HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)$")
ADMIN = "admin@example.com"


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


async def _app(aiohttp_client: Any, settings: Settings, database: Database, **over: Any) -> Api:
    client: TestClient = await aiohttp_client(create_app(settings.model_copy(update=over), database=database))
    return Api(client)


# ---- slow hashes only ----------------------------------------------------------------------------------


async def test_s4_secrets_are_stored_only_as_slow_hashes(
    api: Api, database: Database, db_url: str, tmp_path: Path, record_figures: Recorder
) -> None:
    # The demo seed through the real CLI, as an operator runs it: demo users and the edge's API key.
    env = {**os.environ, "MES_DATABASE_URL": db_url}
    env.pop("MES_CONFIG", None)
    key_file = tmp_path / "edge.key"
    seeded = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "central.cli", "seed", "demo", "--edge-key-file", str(key_file)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    edge_key = key_file.read_text().strip()
    secrets = {"demo password": "Test123!", "admin password": "ChangeMe123!", "edge key": edge_key}

    # A user, then a password change, an API key and an edge registration over HTTP; a session.
    ids = []
    for email in ("s4@example.com", "s4-twin@example.com"):  # the same password twice: two different hashes
        body = {"email": email, "name": "S4", "password": "First-Pass-S4!", "roles": []}
        created = await api.post("/users", ADMIN, json=body)
        assert created.status == 200, created.body
        ids.append(created.data["id"])
    changed = await api.patch(f"/users/{ids[0]}", ADMIN, json={"password": "Second-Pass-S4!"})
    assert changed.status == 200, changed.body
    key = await api.post("/api-keys", ADMIN, json={"name": "s4-bridge", "role": "planner"})
    assert key.status == 200, key.body
    edge = await api.post("/integration/edges", ADMIN, json={"edgeId": "edge-s4", "lineCode": "LINE-B"})
    assert edge.status == 201, edge.body
    token = await api.login("s4@example.com", "Second-Pass-S4!")
    secrets |= {
        "first password": "First-Pass-S4!",
        "new password": "Second-Pass-S4!",
        "api key": key.data["key"],
        "registered edge key": edge.data["apiKey"],
        "session token": token,
    }
    for name in [n for n in secrets if "key" in n]:  # the random part alone, without the public prefix
        secrets[f"{name} (secret part)"] = secrets[name].split("_", 2)[2]
    # Every key works, so what follows checks the hashes of live credentials.
    for k in (edge_key, key.data["key"], edge.data["apiKey"]):
        assert (await api.get("/auth/get-session", k)).status == 200

    # No secret anywhere in the database: every row of every table, as text.
    found: list[tuple[str, str]] = []
    rows = 0
    async with database.reader() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(select(table))).all():
                rows += 1
                dump = repr(tuple(row))
                found += [(table.name, n) for n, v in secrets.items() if v in dump]
    assert found == []

    # Every password and key hash: scrypt with a real cost, its own salt.
    async with database.reader() as s:
        passwords = [h for h in await s.scalars(select(User.password_hash)) if h is not None]
        ours = list(await s.scalars(select(User.password_hash).where(User.id.in_(ids))))
        keys = list(await s.scalars(select(ApiKey.key_hash)))
        session_digests = list(await s.scalars(select(AuthSession.token_hash)))
    costs = set()
    for h in passwords + keys:
        m = HASH.match(h)
        assert m, h[:20]
        n, r, p = (int(x) for x in m.groups()[:3])
        assert n >= 2**14 and n & (n - 1) == 0 and r >= 8 and p >= 1  # ≥ 16 MiB per hash
        assert len(_unb64(m.group(4))) >= 16 and len(_unb64(m.group(5))) >= 32
        costs.add((n, r, p))
    # A random salt per hash: the same password twice, and every key, hash differently. (The demo seed hashes
    # its one shared, published demo password once for all demo users — a documented speed-up of the seed.)
    salts = [HASH.match(h).group(4) for h in ours + keys]  # type: ignore[union-attr]
    assert len(set(salts)) == len(salts) == len(ids) + len(keys)
    assert not set(ours) & (set(passwords) - set(ours))
    assert hashlib.sha256(token.encode()).hexdigest() in session_digests
    assert len(costs) == 1
    (n, r, p) = costs.pop()
    started = time.perf_counter()
    hashlib.scrypt(b"x", salt=b"0" * 16, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)
    ms = (time.perf_counter() - started) * 1000
    record_figures(
        "S4",
        "credentials stored as slow hashes",
        backend=database.engine.dialect.name,
        algorithm="scrypt",
        scrypt_n=n,
        scrypt_r=r,
        scrypt_p=p,
        memory_mib=128 * n * r // 2**20,
        ms_per_hash_here=round(ms, 1),
        password_hashes=len(passwords),
        distinct_password_hashes=len(set(passwords)),
        api_key_hashes=len(keys),
        session_tokens="SHA-256 of 256 random bits",
        rows_scanned_for_plaintext=rows,
        plaintext_found=len(found),
    )


# ---- sessions expire -----------------------------------------------------------------------------------


async def test_s4_session_lifetime_follows_the_setting(
    aiohttp_client: Any, settings: Settings, database: Database, make_user: Any, record_figures: Recorder
) -> None:
    ttl = 60  # the shortest the setting allows (MES_SESSION_TTL_SECONDS ≥ 60)
    api = await _app(aiohttp_client, settings, database, session_ttl_seconds=ttl)
    await make_user("pl@example.com", "planner")
    before = datetime.now(UTC)
    r = await api.client.post(
        "/api/auth/sign-in/email", json={"email": "pl@example.com", "password": "Test123!"}
    )
    body = await r.json()
    assert r.status == 200, body
    token = body["data"]["token"]
    expires = datetime.fromisoformat(body["data"]["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(seconds=ttl - 1) <= expires - before <= timedelta(seconds=ttl + 5)
    assert f"Max-Age={ttl}" in r.headers["Set-Cookie"]
    async with database.reader() as s:
        stored = await s.scalar(select(AuthSession.expires_at))
    assert abs((stored.replace(tzinfo=UTC) - expires).total_seconds()) < 1
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/api/auth/get-session", headers=bearer)).status == 200
    # The lifetime has passed (moved in the database: the shortest setting is a minute); cookie and bearer
    # are both refused from then on.
    async with database.writer() as s, s.begin():
        await s.execute(update(AuthSession).values(expires_at=utcnow() - timedelta(milliseconds=1)))
    assert (await api.client.get("/api/auth/get-session", headers=bearer)).status == 401
    assert (await api.client.get("/api/permissions/me")).status == 401  # the cookie jar's mes_session
    record_figures(
        "S4",
        "session lifetime",
        backend=database.engine.dialect.name,
        default_session_ttl_seconds=Settings.model_fields["session_ttl_seconds"].default,
        tested_ttl_seconds=ttl,
        expired_session_status=401,
    )


# ---- sign-in rate limit --------------------------------------------------------------------------------


async def _sign_in(api: Api, email: str, password: str) -> tuple[int, str | None]:
    r = await api.post("/auth/sign-in/email", json={"email": email, "password": password})
    return r.status, (None if r.body["ok"] else r.body["error"]["code"])


async def test_s4_sign_in_rate_limit_holds_until_its_window_passes(
    aiohttp_client: Any, settings: Settings, database: Database, make_user: Any, record_figures: Recorder
) -> None:
    window = 2  # seconds (MES_SIGN_IN_WINDOW_SECONDS; 900 by default)
    api = await _app(aiohttp_client, settings, database, sign_in_window_seconds=window)
    await make_user("pl@example.com", "planner")
    limit = settings.sign_in_max_failures
    first = time.monotonic()
    for _ in range(limit):
        assert await _sign_in(api, "pl@example.com", "wrong") == (401, "INVALID_EMAIL_OR_PASSWORD")
    last = time.monotonic()
    assert await _sign_in(api, "pl@example.com", "Test123!") == (429, "TOO_MANY_ATTEMPTS")
    # Still inside the window for every failure: the right password stays refused.
    await asyncio.sleep(max(0.0, first + window - 1.0 - time.monotonic()))
    assert await _sign_in(api, "pl@example.com", "Test123!") == (429, "TOO_MANY_ATTEMPTS")
    # Once the window has passed the last failure, the right password is accepted again.
    await asyncio.sleep(max(0.0, last + window + 0.3 - time.monotonic()))
    assert await _sign_in(api, "pl@example.com", "Test123!") == (200, None)
    record_figures(
        "S4",
        "sign-in rate limit (per account)",
        backend=database.engine.dialect.name,
        failures_per_account=limit,
        default_window_seconds=Settings.model_fields["sign_in_window_seconds"].default,
        tested_window_seconds=window,
        refused_code="429 TOO_MANY_ATTEMPTS",
    )


async def test_s4_sign_in_rate_limit_counts_per_address(
    aiohttp_client: Any, settings: Settings, database: Database, make_user: Any, record_figures: Recorder
) -> None:
    # One failure per account (the default is 5): the per-address limit (×10) is reached with 10 scrypt checks
    # instead of 50; the rule is the same.
    api = await _app(aiohttp_client, settings, database, sign_in_max_failures=1)
    await make_user("op@example.com", "planner")
    per_address = 1 * 10
    # Many accounts (here unknown ones), one failure each: no account reaches its own limit.
    for i in range(per_address):
        assert (await _sign_in(api, f"guess-{i}@example.com", "wrong"))[0] == 401
    assert await _sign_in(api, "op@example.com", "Test123!") == (429, "TOO_MANY_ATTEMPTS")
    record_figures(
        "S4",
        "sign-in rate limit (per address)",
        backend=database.engine.dialect.name,
        failures_per_address=f"10 × the per-account limit (default {settings.sign_in_max_failures * 10})",
        tested_failures_per_address=per_address,
        refused_code="429 TOO_MANY_ATTEMPTS",
    )


async def test_s4_a_forged_forwarded_address_does_not_slip_the_limit(
    aiohttp_client: Any, settings: Settings, database: Database, make_user: Any
) -> None:
    # A client that is not a trusted proxy sends a new X-Forwarded-For with every guess: ignored, the limit
    # per (its real) address holds, and the attempts record the real address.
    api = await _app(aiohttp_client, settings, database, sign_in_max_failures=1, trusted_proxies=[])
    await make_user("op@example.com", "planner")
    for i in range(10):
        r = await api.post(
            "/auth/sign-in/email",
            json={"email": f"guess-{i}@example.com", "password": "wrong"},
            headers={"X-Forwarded-For": f"10.9.8.{i}"},
        )
        assert r.status == 401
    assert await _sign_in(api, "op@example.com", "Test123!") == (429, "TOO_MANY_ATTEMPTS")
    async with database.reader() as s:
        assert set(await s.scalars(select(SignInAttempt.ip))) == {"127.0.0.1"}
    # The same requests through a trusted proxy (the test client's loopback address by default): the address
    # the proxy appended is the client's.
    proxied = await _app(aiohttp_client, settings, database, sign_in_max_failures=1)
    r = await proxied.post(
        "/auth/sign-in/email",
        json={"email": "guess-x@example.com", "password": "wrong"},
        headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3"},
    )
    assert r.status == 401
    async with database.reader() as s:
        assert "10.1.2.3" in set(await s.scalars(select(SignInAttempt.ip)))


# ---- MQTT over TLS, central's consumer -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("s4-tls"))


@pytest.fixture
async def sqlite_db(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[Database]:
    """The consumer needs a database to record refusals in; TLS does not depend on which, so SQLite only."""
    target = tmp_path / "tls.db"
    shutil.copyfile(sqlite_template, target)
    db = create_database(f"sqlite+aiosqlite:///{target}", pool_size=2)
    yield db
    await db.dispose()


def _log_count(broker: Broker, needle: str) -> int:
    return broker.log_path.read_text(errors="replace").count(needle)


async def _until(check: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_s4_central_consumer_over_tls_without_plain_fallback(
    aiohttp_client: Any, sqlite_db: Database, tmp_path: Path, tls_files: Tls, record_figures: Recorder
) -> None:
    users = [BrokerUser("central", "central-s4-secret"), BrokerUser("edge-s4", "edge-s4-secret")]
    tls_broker = Broker(tmp_path / "tls", tls=tls_files, users=users)
    plain_broker = Broker(tmp_path / "plain")
    tls_broker.start()
    plain_broker.start()
    base = Settings(
        database_url=str(sqlite_db.engine.url),
        migrate_on_start=False,
        mqtt_topic_prefix=f"s4{uuid.uuid4().hex[:8]}",
    )
    creds = f"{quote(users[0].name)}:{quote(users[0].password)}"
    try:
        # 1. mqtts:// with the CA and broker credentials: connected, and a batch goes through and is answered.
        api = await _app(
            aiohttp_client,
            base,
            sqlite_db,
            mqtt_url=f"mqtts://{creds}@{tls_broker.host}:{tls_broker.port}",
            mqtt_ca_file=str(tls_files.ca),
        )
        health = await _health_until(api, "connected")
        ack = await _round_trip_over_tls(tls_broker, tls_files, users[1], base.mqtt_topic_prefix)
        assert (ack["results"][0]["status"], ack["results"][0]["code"]) == ("REJECTED", "EDGE_NOT_REGISTERED")

        # 2. mqtts:// aimed at a plain-text listener: TLS handshakes only, retried, never a plain session.
        plain = base
        api_plain = await _app(
            aiohttp_client,
            plain,
            sqlite_db,
            mqtt_url=f"mqtts://{creds}@{plain_broker.host}:{plain_broker.port}",
            mqtt_ca_file=str(tls_files.ca),
        )
        attempts = _attempts_refused(plain_broker)
        await _until(lambda: attempts() >= 2, "two refused connection attempts")
        assert (await api_plain.get("/health")).data["mqtt"] != "connected"

        # 3. mqtts:// to the TLS broker without its CA (system trust store only): certificate refused.
        api_untrusted = await _app(
            aiohttp_client, plain, sqlite_db, mqtt_url=f"mqtts://{creds}@{tls_broker.host}:{tls_broker.port}"
        )
        before = _log_count(tls_broker, "New client connected")
        await asyncio.sleep(2.5)  # paho retries every second: room for two attempts
        assert _log_count(tls_broker, "New client connected") == before
        assert (await api_untrusted.get("/health")).data["mqtt"] != "connected"
        assert _log_count(plain_broker, "New client connected") == 0
    finally:
        tls_broker.kill()
        plain_broker.kill()
    record_figures(
        "S4",
        "MQTT over TLS (central consumer)",
        broker=tls_broker.kind,
        tls_connected=health["mqtt"],
        plain_listener_attempts_refused=attempts(),
        plain_sessions=0,
        untrusted_certificate_sessions=0,
    )


async def _health_until(api: Api, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        h = await api.get("/health")
        if h.data["mqtt"] == state:
            return h.data
        assert time.monotonic() < deadline, h.data
        await asyncio.sleep(0.1)


def _attempts_refused(broker: Broker) -> Callable[[], int]:
    """Connections the plain-text listener saw end without an MQTT session (what a TLS hello looks like)."""

    def count() -> int:
        if broker.kind != "mosquitto":  # only Mosquitto's log says so; the health check still holds
            return 2
        return _log_count(broker, "New connection from") - _log_count(broker, "New client connected")

    return count


async def _round_trip_over_tls(broker: Broker, tls: Tls, user: BrokerUser, prefix: str) -> dict[str, Any]:
    """An edge-like client over TLS with its own credentials publishes one batch and waits for the ack."""
    loop = asyncio.get_running_loop()
    acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    subscribed = asyncio.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"s4-{uuid.uuid4().hex[:8]}")
    c.username_pw_set(user.name, user.password)
    c.tls_set_context(ssl.create_default_context(cafile=str(tls.ca)))
    c.on_connect = lambda cl, *_: cl.subscribe(topics.acks(user.name, prefix), qos=1)
    c.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    c.on_message = lambda _c, _u, m: loop.call_soon_threadsafe(acks.put_nowait, orjson.loads(m.payload))
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        body = {
            "schemaVersion": 1,
            "edgeId": user.name,
            "batchId": uuid.uuid4().hex,
            "sentAt": now(),
            "events": [ingest_event(1, "SN-S4", "RUN-S4")],
        }
        c.publish(topics.events(user.name, prefix), orjson.dumps(body), qos=1).wait_for_publish(5)
        return await asyncio.wait_for(acks.get(), 15)
    finally:
        c.loop_stop()
        c.disconnect()
