"""Idempotency-Key records through a crash: a key whose request died is neither stuck nor run twice.

The middleware's own paths (replay, refusal replay, key reused) are in test_platform.py; the real kill -9 of a
central process holding a key is in tests/e2e/test_idempotency_crash.py. Here the record's states are driven
through the service and the unit of work exactly as a request does, stopping where a dead process would stop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from central.api.app import create_app
from central.config import Settings
from central.db.engine import Database
from central.db.models import IdempotencyRecord, Role
from central.domain.errors import Conflict
from central.schemas.auth import RoleCreate
from central.services import idempotency
from central.services.idempotency import Claim, StoredResponse
from central.services.uow import UnitOfWork
from central.services.users import create_role
from tests.client import Api

TTL = 3600
CALLER, KEY, PATH = "u1", "crash-key", "/api/roles"
BODY = {"code": "line-lead", "name": "Line lead"}


def _hash(body: dict[str, Any] = BODY) -> str:
    return idempotency.request_hash("POST", PATH, json.dumps(body).encode())


async def _begin(database: Database, lease: int) -> Claim | StoredResponse:
    return await idempotency.begin(database.writer, CALLER, KEY, "POST", PATH, _hash(), TTL, lease)


async def _create_role(database: Database, claim: Claim, code: str = "line-lead") -> None:
    """The business transaction of the request that holds `claim` (what Req.write runs)."""
    async with UnitOfWork(database.writer, idempotency=claim) as uow:
        await create_role(uow, RoleCreate(code=code, name="Line lead"))


async def _roles(database: Database, code: str = "line-lead") -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(Role).where(Role.code == code)) or 0)


async def _record(database: Database) -> IdempotencyRecord:
    async with database.reader() as s:
        row = await s.scalar(
            select(IdempotencyRecord).where(IdempotencyRecord.caller == CALLER, IdempotencyRecord.key == KEY)
        )
    assert row is not None
    return row


async def test_a_claim_left_by_a_dead_request_is_held_for_its_lease_then_taken(database: Database) -> None:
    dead = await _begin(database, lease=60)
    assert isinstance(dead, Claim)
    # Its process died before committing anything: within the lease it may still be running.
    with pytest.raises(Conflict) as running:
        await _begin(database, lease=60)
    assert running.value.code == "IDEMPOTENCY_IN_PROGRESS" and running.value.details is None
    # After the lease, a retry owns the key, runs, and its answer is kept.
    retry = await _begin(database, lease=0)
    assert isinstance(retry, Claim) and retry.token != dead.token
    await _create_role(database, retry)
    assert (await _record(database)).state == "APPLIED"
    await idempotency.finish(database.writer, retry, 200, b'{"ok":true}')
    replay = await _begin(database, lease=0)
    assert replay == StoredResponse(200, b'{"ok":true}')
    assert await _roles(database) == 1


async def test_a_slow_request_whose_key_was_taken_over_cannot_commit(database: Database) -> None:
    slow = await _begin(database, lease=60)
    assert isinstance(slow, Claim)
    taker = await _begin(database, lease=0)  # the slow one outran its lease; a retry took the key
    assert isinstance(taker, Claim)
    with pytest.raises(Conflict) as refused:
        await _create_role(database, slow)
    assert refused.value.code == "IDEMPOTENCY_IN_PROGRESS"
    assert await _roles(database) == 0  # rolled back with the refusal
    await _create_role(database, taker)
    # The slow request's late bookkeeping touches nothing that is no longer its own.
    await idempotency.finish(database.writer, slow, 409, b"{}")
    await idempotency.abandon(database.writer, slow)
    row = await _record(database)
    assert (row.state, row.claim, row.status_code) == ("APPLIED", taker.token, None)
    assert await _roles(database) == 1


async def test_a_request_that_died_after_its_commit_is_never_run_again(database: Database) -> None:
    claim = await _begin(database, lease=60)
    assert isinstance(claim, Claim)
    await _create_role(database, claim)  # committed with the effect; the process dies before its answer
    for lease in (60, 0):  # however long the caller waits
        with pytest.raises(Conflict) as refused:
            await _begin(database, lease=lease)
        assert refused.value.code == "IDEMPOTENCY_IN_PROGRESS"
        assert refused.value.details == {"state": "APPLIED"}
    assert await _roles(database) == 1


async def test_an_error_answer_after_a_side_commit_frees_the_key(database: Database) -> None:
    """A request that commits a side record, then answers 5xx/422 (abandon), leaves the key free to retry."""
    claim = await _begin(database, lease=60)
    assert isinstance(claim, Claim)
    await _create_role(database, claim, code="side-record")
    await idempotency.abandon(database.writer, claim)
    again = await _begin(database, lease=60)
    assert isinstance(again, Claim)


async def test_two_retries_taking_over_one_dead_claim_at_once_one_wins(database: Database) -> None:
    dead = await _begin(database, lease=1)
    assert isinstance(dead, Claim)
    await asyncio.sleep(1.1)  # its lease passes; the first taker's claim is fresh for the others
    outcomes = await asyncio.gather(*(_begin(database, lease=1) for _ in range(6)), return_exceptions=True)
    winners = [o for o in outcomes if isinstance(o, Claim)]
    losers = [o for o in outcomes if isinstance(o, Conflict) and o.code == "IDEMPOTENCY_IN_PROGRESS"]
    assert len(winners) == 1 and len(losers) == 5, outcomes
    assert (await _record(database)).claim == winners[0].token


@pytest.fixture
async def short_lease_api(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    short = settings.model_copy(update={"idempotency_lease_seconds": 1})
    client: TestClient = await aiohttp_client(create_app(short, database=database))
    return Api(client)


async def test_over_http_a_dead_requests_key_answers_in_progress_then_runs_once(
    short_lease_api: Api, database: Database, make_user: Any
) -> None:
    api = short_lease_api
    user = await make_user("adm@example.com", "admin")
    h = {"Idempotency-Key": KEY}
    # What the dead request had done: claimed the key for this caller and this exact request.
    dead = await idempotency.begin(
        database.writer, f"u{user['id']}", KEY, "POST", PATH, _hash(), TTL, lease_seconds=1
    )
    assert isinstance(dead, Claim)
    early = await api.post("/roles", "adm@example.com", json=BODY, headers=h)
    assert early.status == 409 and early.code == "IDEMPOTENCY_IN_PROGRESS"
    await asyncio.sleep(1.2)
    first = await api.post("/roles", "adm@example.com", json=BODY, headers=h)
    assert first.status == 200 and first.headers.get("Idempotency-Replayed") is None, first.body
    again = await api.post("/roles", "adm@example.com", json=BODY, headers=h)
    assert again.status == 200 and again.headers.get("Idempotency-Replayed") == "true"
    assert again.body == first.body
    assert await _roles(database) == 1
