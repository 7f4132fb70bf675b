"""An Idempotency-Key held by a central process that is killed mid-request: refused while its lease runs, then
run once by the retry — the effect exists exactly once (api.md "Idempotency"; services/idempotency.py).

A real `mes-central serve` on PostgreSQL. The test holds an EXCLUSIVE lock on `api_keys`, so the request
creating an API key claims its key and then waits inside its business transaction; the process is killed
there (`kill -9`), the lock released, the process started again, and the client retries with the same key.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

import aiohttp
import asyncpg
import pytest

from tests.brokers import Broker
from tests.client import Api
from tests.e2e.edge_system import Central, eventually
from tests.reliability.test_r2_concurrency import _api, _Http

ADMIN = "admin@example.com"
LEASE = 4


async def _scalar(dsn: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_a_key_held_by_a_killed_central_is_taken_over_after_its_lease_and_applies_once(
    shared_pg: str, mosquitto: Broker, tmp_path: Path
) -> None:
    dsn = shared_pg.replace("postgresql+asyncpg://", "postgresql://")
    (tmp_path / "central").mkdir()
    c = Central(tmp_path / "central", shared_pg, mosquitto.url)
    c.env["MES_IDEMPOTENCY_LEASE_SECONDS"] = str(LEASE)
    api: Api | None = None
    try:
        await c.prepare()
        await c.start()
        api = _api(c)
        me = (await api.get("/auth/get-session", ADMIN)).data["user"]["id"]
        body, headers = {"name": "crash-held-key", "userId": me}, {"Idempotency-Key": "crash-1"}

        blocker = await asyncpg.connect(dsn)
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE api_keys IN EXCLUSIVE MODE")
        pending = asyncio.create_task(api.post("/api-keys", ADMIN, json=body, headers=headers))

        async def waiting_inside_its_transaction() -> bool:
            state = await _scalar(dsn, "SELECT state FROM idempotency_records WHERE key = 'crash-1'")
            waits = await _scalar(
                dsn,
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'api_keys'::regclass",
            )
            return state == "IN_PROGRESS" and cast(int, waits) > 0

        await eventually(waiting_inside_its_transaction, within=20, what="the request claimed, then blocked")
        claimed_at = time.monotonic()  # the claim is at most one poll older than this
        running = await api.post("/api-keys", ADMIN, json=body, headers=headers)
        assert running.status == 409 and running.code == "IDEMPOTENCY_IN_PROGRESS", running.body

        await c.kill()
        with pytest.raises(aiohttp.ClientError):
            await pending
        await held.rollback()
        await blocker.close()
        await c.start()

        answers: list[str] = []
        while True:
            r = await api.post("/api-keys", ADMIN, json=body, headers=headers)
            if r.status == 200:
                break
            assert r.status == 409 and r.code == "IDEMPOTENCY_IN_PROGRESS", r.body
            assert r.body["error"].get("details") is None, r.body  # not APPLIED: nothing was committed
            answers.append(r.code)
            assert time.monotonic() - claimed_at < LEASE + 30, "the dead request's claim was never taken over"
            await asyncio.sleep(0.25)
        taken_over_after = time.monotonic() - claimed_at
        assert r.headers.get("Idempotency-Replayed") is None  # run by the retry, not replayed
        assert taken_over_after >= LEASE - 0.5, taken_over_after  # not before the claim's lease ran out
        again = await api.post("/api-keys", ADMIN, json=body, headers=headers)
        assert again.status == 200 and again.headers.get("Idempotency-Replayed") == "true"
        assert again.body == r.body
        created = await _scalar(dsn, "SELECT count(*) FROM api_keys WHERE name = $1", body["name"])
        assert created == 1
        print(f"key taken over {taken_over_after:.1f} s after the claim; {len(answers)} answers 409 before")
    except BaseException:
        print(c.tail())
        raise
    finally:
        if api is not None:
            await cast(_Http, api.client).session.close()
        await c.end()
