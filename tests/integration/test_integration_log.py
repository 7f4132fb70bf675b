"""The integration log: `GET /integration/messages` and `GET /integration/messages/:id` (api.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import outbound as handler
from central.config import Settings
from central.db.engine import Database
from central.db.models import IntegrationMessage
from central.domain.clock import iso, utcnow
from tests.client import Api
from tests.flows import EN, OP, PL, A, seed

MESSAGES = "/integration/messages"
T0 = utcnow().replace(microsecond=0) - timedelta(days=1)

# (direction, system, entityType, businessKey, status, hours after T0)
ROWS = [
    ("OUT", "ERP", "RUN_COMPLETION", "RUN-1", "RETRYING", 0),
    ("OUT", "ERP", "RUN_COMPLETION", "RUN-1", "SUCCESS", 1),
    ("IN", "ERP", "WORK_ORDER", "WO-7", "SUCCESS", 2),
    ("IN", "TPM", "EQUIPMENT", "ST-PRINT-01", "FAILED", 3),
    ("IN", "DEVICE", "DEVICE_DATA", "EVT-9", "DUPLICATE", 4),
]


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The demo plant and the app with this router (added here only while it is not yet in ROUTERS)."""
    await seed(database)
    extra = [] if handler.router in ROUTERS else [handler.router]
    return Api(await aiohttp_client(create_app(settings, database=database, extra_routers=extra)))


@pytest.fixture
async def logged(database: Database) -> list[int]:
    """Five log rows an hour apart, oldest first; returns their ids."""
    ids = []
    async with database.writer() as s, s.begin():
        for direction, system, entity, key, status, hours in ROWS:
            at = T0 + timedelta(hours=hours)
            row = IntegrationMessage(
                direction=direction,
                system=system,
                entity_type=entity,
                business_key=key,
                dedupe_key=f"{system.lower()}:{key}:{hours}",
                status=status,
                payload={"key": key, "n": hours},
                error="HTTP 503: busy" if status in ("RETRYING", "FAILED") else None,
                meta={"hours": hours},
                created_at=at,
                updated_at=at,
            )
            s.add(row)
            await s.flush()
            ids.append(row.id)
    return ids


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def ids_for(api: Api, **params: Any) -> list[int]:
    r = await api.get(MESSAGES, EN, params=params)
    assert r.status == 200, r.body
    return [m["id"] for m in r.data["items"]]


async def test_list_is_newest_first_paginated_and_without_payloads(demo: Api, logged: list[int]) -> None:
    r = await demo.get(MESSAGES, EN, params={"pageSize": "2"})
    assert r.status == 200, r.body
    assert (r.data["total"], r.data["page"], r.data["pageSize"]) == (5, 1, 2)
    assert [m["id"] for m in r.data["items"]] == [logged[4], logged[3]]
    first = r.data["items"][0]
    assert first == {
        "id": logged[4],
        "direction": "IN",
        "system": "DEVICE",
        "entityType": "DEVICE_DATA",
        "businessKey": "EVT-9",
        "dedupeKey": "device:EVT-9:4",
        "status": "DUPLICATE",
        "error": None,
        "meta": {"hours": 4},
        "createdAt": iso(T0 + timedelta(hours=4)),
        "updatedAt": iso(T0 + timedelta(hours=4)),
    }
    assert await ids_for(demo, page="3", pageSize="2") == [logged[0]]
    assert await ids_for(demo, sort="createdAt.asc") == logged


async def test_filters(demo: Api, logged: list[int]) -> None:
    assert await ids_for(demo, direction="OUT") == [logged[1], logged[0]]
    assert await ids_for(demo, direction="in") == [logged[4], logged[3], logged[2]]
    assert await ids_for(demo, system="ERP,TPM") == [logged[3], logged[2], logged[1], logged[0]]
    assert await ids_for(demo, status="FAILED,RETRYING") == [logged[3], logged[0]]
    assert await ids_for(demo, entityType="RUN_COMPLETION", status="SUCCESS") == [logged[1]]
    assert await ids_for(demo, businessKey="WO-7") == [logged[2]]
    assert await ids_for(demo, search="st-print") == [logged[3]]
    window = {"from": iso(T0 + timedelta(hours=1)), "to": iso(T0 + timedelta(hours=3))}
    assert await ids_for(demo, **window) == [logged[3], logged[2], logged[1]]
    assert await ids_for(demo, system="MQTT") == []


async def test_bad_queries_are_422(demo: Api, logged: list[int]) -> None:
    for bad in (
        {"sort": "payload.desc"},
        {"direction": "SIDEWAYS"},
        {"from": "yesterday"},
        {"to": "2024-01-01T00:00:00"},  # no offset: ambiguous
        {"pageSize": "101"},
    ):
        expect(await demo.get(MESSAGES, EN, params=bad), 422, "VALIDATION_FAILED")


async def test_one_message_with_its_payload(demo: Api, logged: list[int]) -> None:
    r = await demo.get(f"{MESSAGES}/{logged[3]}", A)
    assert r.status == 200, r.body
    assert (r.data["system"], r.data["status"], r.data["error"]) == ("TPM", "FAILED", "HTTP 503: busy")
    assert r.data["payload"] == {"key": "ST-PRINT-01", "n": 3}
    expect(await demo.get(f"{MESSAGES}/999999", EN), 404, "INTEGRATION_MESSAGE_NOT_FOUND")
    expect(await demo.get(f"{MESSAGES}/abc", EN), 404, "INTEGRATION_MESSAGE_NOT_FOUND")


async def test_a_real_push_is_logged(demo: Api) -> None:
    event = {
        "eventId": "st-log-1",
        "eventTime": iso(utcnow()),
        "stencilId": "STENCIL-LOG",
        "status": "READY",
        "source": "AUTO",
    }
    assert (await demo.post("/integration/stencil-status", A, json=event)).status == 200
    r = await demo.get(MESSAGES, EN, params={"direction": "IN", "system": "STENCIL"})
    [m] = r.data["items"]
    assert (m["businessKey"], m["dedupeKey"], m["status"]) == (
        "STENCIL-LOG",
        "stencil-status:st-log-1",
        "SUCCESS",
    )
    detail = await demo.get(f"{MESSAGES}/{m['id']}", EN)
    assert detail.data["payload"]["eventId"] == "st-log-1"


async def test_the_log_needs_system_integration(demo: Api, logged: list[int]) -> None:
    for who in (PL, OP):
        expect(await demo.get(MESSAGES, who), 403, "FORBIDDEN")
        expect(await demo.get(f"{MESSAGES}/{logged[0]}", who), 403, "FORBIDDEN")
