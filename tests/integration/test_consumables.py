"""Stencil / solder-paste status pushes and line bindings (domain.md §9, §2, §1, §11; S14 steps 9–12)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import consumables as handler
from central.config import Settings
from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    IntegrationMessage,
    Line,
    LineSolderPaste,
    LineStencil,
    MesEvent,
    StencilStatusRecord,
)
from central.domain.clock import iso, utcnow
from central.services import consumables
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import EN, OP, PL, A, M, Q, released_run, seed

STENCIL = "/integration/stencil-status"
PASTE = "/integration/solder-paste-status"
_ids = itertools.count(1)


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The demo plant and the app with this router (added here only while it is not yet in ROUTERS)."""
    await seed(database)
    extra = [] if handler.router in ROUTERS else [handler.router]
    return Api(await aiohttp_client(create_app(settings, database=database, extra_routers=extra)))


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


def stencil_event(stencil_id: str, status: str = "READY", ago: int = 0, **kw: Any) -> dict[str, Any]:
    at = utcnow() - timedelta(minutes=ago)
    return {
        "eventId": f"st-evt-{next(_ids)}",
        "eventTime": iso(at),
        "stencilId": stencil_id,
        "status": status,
        "source": "AUTO",
        **kw,
    }


def paste_event(lot_id: str, status: str = "COMPLIANT", ago: int = 0, **kw: Any) -> dict[str, Any]:
    at = utcnow() - timedelta(minutes=ago)
    return {
        "eventId": f"sp-evt-{next(_ids)}",
        "eventTime": iso(at),
        "lotId": lot_id,
        "status": status,
        "source": "AUTO",
        **kw,
    }


async def _rows(database: Database, stmt: Any) -> list[Any]:
    async with database.reader() as s:
        return list((await s.scalars(stmt)).all())


async def _line_id(database: Database, code: str) -> int:
    async with database.reader() as s:
        line_id = await s.scalar(select(Line.id).where(Line.code == code))
    assert line_id is not None
    return int(line_id)


async def test_s14_stencil_bind_status_replay_and_manual_needs_operator(
    demo: Api, database: Database
) -> None:
    r = await demo.post("/integration/lines/LINE-A/stencil/bind", EN, json={"stencilId": "STENCIL-S14"})
    assert r.status == 200, r.body
    assert {k: r.data[k] for k in ("lineCode", "stencilId", "isCurrent", "boundBy")} == {
        "lineCode": "LINE-A",
        "stencilId": "STENCIL-S14",
        "isCurrent": True,
        "boundBy": r.data["boundBy"],
    }
    assert r.data["boundAt"].endswith("Z") and r.data["boundBy"]

    event = stencil_event("STENCIL-S14", tensionValue=42.5)
    first = await demo.post(STENCIL, A, json=event)
    assert first.status == 200, first.body
    assert first.data["isDuplicate"] is False
    assert (first.data["eventId"], first.data["stencilId"], first.data["status"]) == (
        event["eventId"],
        "STENCIL-S14",
        "READY",
    )
    replay = await demo.post(STENCIL, A, json=event)
    assert replay.status == 200, replay.body
    assert replay.data["isDuplicate"] is True
    assert (replay.data["id"], replay.data["receivedAt"]) == (first.data["id"], first.data["receivedAt"])
    rows = await _rows(
        database, select(StencilStatusRecord).where(StencilStatusRecord.stencil_id == "STENCIL-S14")
    )
    assert len(rows) == 1 and rows[0].tension_value == 42.5

    manual = stencil_event("STENCIL-S14", "NOT_READY", source="MANUAL")
    expect(await demo.post(STENCIL, A, json=manual), 400, "OPERATOR_REQUIRED")
    r = await demo.post(STENCIL, Q, json={**manual, "operatorId": "SUP-01"})  # degraded-mode SOP
    assert r.status == 200 and r.data["source"] == "MANUAL", r.body
    fails = await _rows(database, select(AuditEvent).where(AuditEvent.error_code == "OPERATOR_REQUIRED"))
    assert [(f.status, f.action) for f in fails] == [("FAIL", "STENCIL_STATUS_RECEIVE")]


async def test_s14_solder_paste_bind_status_replay_and_manual_needs_operator(
    demo: Api, database: Database
) -> None:
    r = await demo.post("/integration/lines/LINE-A/solder-paste/bind", EN, json={"lotId": "SP-S14"})
    assert r.status == 200, r.body
    assert (r.data["lineCode"], r.data["lotId"], r.data["isCurrent"]) == ("LINE-A", "SP-S14", True)
    expires = iso(utcnow() + timedelta(days=2))
    event = paste_event("SP-S14", expiresAt=expires, thawedAt=iso(utcnow() - timedelta(hours=2)))
    first = await demo.post(PASTE, EN, json=event)
    assert first.status == 200 and first.data["isDuplicate"] is False, first.body
    assert (first.data["lotId"], first.data["status"]) == ("SP-S14", "COMPLIANT")
    replay = await demo.post(PASTE, EN, json=event)
    assert replay.data["isDuplicate"] is True and replay.data["id"] == first.data["id"]
    expect(
        await demo.post(PASTE, A, json=paste_event("SP-S14", "EXPIRED", source="MANUAL")),
        400,
        "OPERATOR_REQUIRED",
    )
    view = await demo.get("/integration/lines/LINE-A/consumables", PL)
    paste = view.data["solderPaste"]
    assert (paste["binding"]["lotId"], paste["latestStatus"]["eventId"]) == ("SP-S14", event["eventId"])
    assert paste["latestStatus"]["expiresAt"] == expires and paste["effectiveStatus"] == "COMPLIANT"


async def _formal(database: Database, run_no: str) -> dict[str, str]:
    from central.services.readiness import run_check

    async with UnitOfWork(database.writer) as uow:
        check = await run_check(uow, run_no, "FORMAL")
    return {i["itemType"]: i["status"] for i in check["items"]} | {"_check": check["status"]}


async def test_s14_readiness_passes_only_for_ready_and_compliant(demo: Api, database: Database) -> None:
    flow = await released_run(demo, product="P-2001", routing="PCBA-AUTO-V1", line="LINE-B")
    seeded = await _formal(database, flow["runNo"])
    assert (seeded["STENCIL"], seeded["SOLDER_PASTE"]) == ("PASSED", "PASSED"), seeded

    assert (await demo.post(STENCIL, A, json=stencil_event("STENCIL-B-01", "NOT_READY"))).status == 200
    items = await _formal(database, flow["runNo"])
    assert (items["STENCIL"], items["SOLDER_PASTE"], items["_check"]) == ("FAILED", "PASSED", "FAILED")
    r = await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    expect(r, 400, "READINESS_CHECK_FAILED")

    assert (await demo.post(STENCIL, A, json=stencil_event("STENCIL-B-01", "READY"))).status == 200
    assert (await demo.post(PASTE, A, json=paste_event("SP-LOT-B-001", "NON_COMPLIANT"))).status == 200
    items = await _formal(database, flow["runNo"])
    assert (items["STENCIL"], items["SOLDER_PASTE"], items["_check"]) == ("PASSED", "FAILED", "FAILED")


async def test_binding_history_and_unbind_without_current(demo: Api, database: Database) -> None:
    base = "/integration/lines/LINE-DIP-A"
    a = await demo.post(f"{base}/stencil/bind", EN, json={"stencilId": "ST-HIST-A"})
    b = await demo.post(f"{base}/stencil/bind", EN, json={"stencilId": "ST-HIST-B"})
    assert a.status == b.status == 200, (a.body, b.body)
    line_id = await _line_id(database, "LINE-DIP-A")
    rows = await _rows(
        database, select(LineStencil).where(LineStencil.line_id == line_id).order_by(LineStencil.id)
    )
    assert [(x.stencil_id, x.is_current, x.unbound_at is not None) for x in rows] == [
        ("ST-HIST-A", False, True),
        ("ST-HIST-B", True, False),
    ]
    again = await demo.post(f"{base}/stencil/bind", EN, json={"stencilId": "ST-HIST-B"})
    assert again.data["id"] == b.data["id"]  # binding the current stencil again is a no-op

    closed = await demo.post(f"{base}/stencil/unbind", EN)
    assert closed.status == 200, closed.body
    assert (closed.data["id"], closed.data["isCurrent"]) == (b.data["id"], False)
    assert closed.data["unboundAt"] and closed.data["unboundBy"]
    expect(await demo.post(f"{base}/stencil/unbind", EN), 400, "NO_CURRENT_STENCIL")

    assert (await demo.post(f"{base}/solder-paste/bind", EN, json={"lotId": "SP-HIST-A"})).status == 200
    assert (await demo.post(f"{base}/solder-paste/bind", EN, json={"lotId": "SP-HIST-B"})).status == 200
    pastes = await _rows(
        database,
        select(LineSolderPaste).where(LineSolderPaste.line_id == line_id).order_by(LineSolderPaste.id),
    )
    assert [(x.lot_id, x.is_current) for x in pastes] == [("SP-HIST-A", False), ("SP-HIST-B", True)]
    assert (await demo.post(f"{base}/solder-paste/unbind", EN)).data["lotId"] == "SP-HIST-B"
    expect(await demo.post(f"{base}/solder-paste/unbind", EN), 400, "NO_CURRENT_SOLDER_PASTE")
    view = await demo.get(f"/integration/lines/{line_id}/consumables", PL)  # id or code
    assert (view.data["lineCode"], view.data["stencil"], view.data["solderPaste"]) == (
        "LINE-DIP-A",
        None,
        None,
    )


async def test_a_stencil_is_current_on_one_line_only(demo: Api) -> None:
    r = await demo.post("/integration/lines/LINE-DIP-A/stencil/bind", EN, json={"stencilId": "STENCIL-001"})
    expect(r, 409, "STENCIL_ALREADY_BOUND")
    assert r.body["error"]["details"] == {"lineCode": "LINE-A"}


async def test_line_not_found(demo: Api) -> None:
    expect(
        await demo.post("/integration/lines/NOPE/stencil/bind", EN, json={"stencilId": "X"}),
        404,
        "LINE_NOT_FOUND",
    )
    expect(await demo.post("/integration/lines/99999/solder-paste/unbind", EN), 404, "LINE_NOT_FOUND")
    expect(await demo.get("/integration/lines/NOPE/consumables", PL), 404, "LINE_NOT_FOUND")


async def test_integration_messages_success_then_duplicate(demo: Api, database: Database) -> None:
    event = stencil_event("STENCIL-001", "MAINTENANCE")
    for _ in range(2):
        assert (await demo.post(STENCIL, A, json=event)).status == 200
    paste = paste_event("SP-LOT-001")
    for _ in range(2):
        assert (await demo.post(PASTE, A, json=paste)).status == 200
    msgs = await _rows(
        database,
        select(IntegrationMessage)
        .where(
            IntegrationMessage.dedupe_key.in_(
                [f"stencil-status:{event['eventId']}", f"solder-paste-status:{paste['eventId']}"]
            )
        )
        .order_by(IntegrationMessage.id),
    )
    assert [(m.direction, m.system, m.entity_type, m.business_key, m.status) for m in msgs] == [
        ("IN", "STENCIL", "STENCIL_STATUS", "STENCIL-001", "SUCCESS"),
        ("IN", "STENCIL", "STENCIL_STATUS", "STENCIL-001", "DUPLICATE"),
        ("IN", "SOLDER_PASTE", "SOLDER_PASTE_STATUS", "SP-LOT-001", "SUCCESS"),
        ("IN", "SOLDER_PASTE", "SOLDER_PASTE_STATUS", "SP-LOT-001", "DUPLICATE"),
    ]
    assert msgs[0].payload["eventId"] == event["eventId"] and msgs[1].meta["payloadDiffers"] is False


async def test_concurrent_duplicates_store_one_record(demo: Api, database: Database) -> None:
    event = stencil_event("STENCIL-RACE")
    results = await asyncio.gather(*(demo.post(STENCIL, A, json=event) for _ in range(4)))
    assert [r.status for r in results] == [200] * 4, [r.body for r in results]
    assert sorted(r.data["isDuplicate"] for r in results) == [False, True, True, True]
    assert len({r.data["id"] for r in results}) == 1
    rows = await _rows(
        database, select(StencilStatusRecord).where(StencilStatusRecord.event_id == event["eventId"])
    )
    assert len(rows) == 1


async def test_paste_bind_and_unbind_emit_usage_events(demo: Api, database: Database) -> None:
    seeded = (await demo.get("/integration/lines/LINE-A/consumables", PL)).data["solderPaste"]["binding"]
    x = (await demo.post("/integration/lines/LINE-A/solder-paste/bind", EN, json={"lotId": "SP-EV-X"})).data
    closed = (await demo.post("/integration/lines/LINE-A/solder-paste/unbind", EN)).data
    assert closed["id"] == x["id"]
    await demo.post("/integration/lines/LINE-A/stencil/unbind", EN)  # stencils emit nothing
    events = await _rows(database, select(MesEvent).order_by(MesEvent.id))
    assert [(e.event_type, e.idempotency_key, e.status) for e in events] == [
        (
            "SOLDER_PASTE_USAGE_UNBIND",
            f"mes-event:SOLDER_PASTE_USAGE_UNBIND:{seeded['id']}",
            "PENDING",
        ),  # the replaced seed lot
        ("SOLDER_PASTE_USAGE_CREATE", f"mes-event:SOLDER_PASTE_USAGE_CREATE:{x['id']}", "PENDING"),
        ("SOLDER_PASTE_USAGE_UNBIND", f"mes-event:SOLDER_PASTE_USAGE_UNBIND:{x['id']}", "PENDING"),
    ]
    assert events[1].payload["lotId"] == "SP-EV-X" and events[1].payload["lineCode"] == "LINE-A"
    assert events[2].payload["unboundAt"] == closed["unboundAt"]


async def test_permissions(demo: Api) -> None:
    expect(await demo.post(STENCIL, OP, json=stencil_event("STENCIL-001")), 403, "FORBIDDEN")
    expect(await demo.post(PASTE, M, json=paste_event("SP-LOT-001")), 403, "FORBIDDEN")
    # readiness:check alone (quality) may key MANUAL statuses only
    expect(await demo.post(STENCIL, Q, json=stencil_event("STENCIL-001")), 403, "FORBIDDEN")
    r = await demo.post(PASTE, Q, json=paste_event("SP-LOT-001", source="MANUAL", operatorId="SUP-01"))
    assert r.status == 200, r.body
    for path, body in (("stencil/bind", {"stencilId": "S"}), ("solder-paste/unbind", None)):
        expect(await demo.post(f"/integration/lines/LINE-A/{path}", Q, json=body), 403, "FORBIDDEN")
        expect(await demo.post(f"/integration/lines/LINE-A/{path}", A, json=body), 403, "FORBIDDEN")
    # the material user sees its bound lines only
    assert (await demo.get("/integration/lines/LINE-A/consumables", M)).status == 200
    expect(await demo.get("/integration/lines/LINE-B/consumables", M), 403, "LINE_NOT_ASSIGNED")


async def test_bad_input_is_422_or_400_never_500(demo: Api) -> None:
    for body in (
        stencil_event("STENCIL-001", "BROKEN"),
        paste_event("SP-LOT-001", "READY"),
    ):
        path = STENCIL if "stencilId" in body else PASTE
        r = await demo.post(path, A, json=body)
        expect(r, 422, "VALIDATION_FAILED")
        assert r.body["error"]["details"][0]["loc"] == ["body", "status"]
    naive = {**stencil_event("STENCIL-001"), "eventTime": "2024-05-01T08:00:00"}
    expect(await demo.post(STENCIL, A, json=naive), 422, "VALIDATION_FAILED")
    missing = {k: v for k, v in stencil_event("STENCIL-001").items() if k != "eventId"}
    expect(await demo.post(STENCIL, A, json=missing), 422, "VALIDATION_FAILED")
    expect(
        await demo.post(STENCIL, A, json={**stencil_event("S"), "source": "PUSH"}), 422, "VALIDATION_FAILED"
    )
    expect(
        await demo.post(STENCIL, A, json={**stencil_event("S"), "tensionValue": -1}), 422, "VALIDATION_FAILED"
    )
    future = stencil_event("STENCIL-001", ago=-60)
    expect(await demo.post(STENCIL, A, json=future), 400, "EVENT_TIME_IN_FUTURE")
    expect(
        await demo.post("/integration/lines/LINE-A/stencil/bind", EN, json={"stencilId": ""}),
        422,
        "VALIDATION_FAILED",
    )


async def test_exported_status_is_latest_by_event_time(demo: Api, database: Database) -> None:
    line_id = await _line_id(database, "LINE-DIP-A")

    async def current() -> tuple[tuple[str | None, str | None], tuple[str | None, str | None]]:
        async with UnitOfWork(database.reader) as uow:
            return (
                await consumables.current_stencil_status(uow, line_id),
                await consumables.current_paste_status(uow, line_id),
            )

    assert await current() == ((None, None), (None, None))
    await demo.post("/integration/lines/LINE-DIP-A/stencil/bind", EN, json={"stencilId": "ST-ORDER"})
    await demo.post("/integration/lines/LINE-DIP-A/solder-paste/bind", EN, json={"lotId": "SP-ORDER"})
    assert await current() == (("ST-ORDER", None), ("SP-ORDER", None))
    # the newer event arrives first; the older one, replayed late, must not win
    await demo.post(STENCIL, A, json=stencil_event("ST-ORDER", "READY", ago=5))
    await demo.post(STENCIL, A, json=stencil_event("ST-ORDER", "MAINTENANCE", ago=30))
    await demo.post(PASTE, A, json=paste_event("SP-ORDER", "COMPLIANT", ago=5))
    await demo.post(PASTE, A, json=paste_event("SP-ORDER", "NON_COMPLIANT", ago=30))
    assert await current() == (("ST-ORDER", "READY"), ("SP-ORDER", "COMPLIANT"))
    # a COMPLIANT record past its expiresAt counts as EXPIRED
    stale = paste_event("SP-ORDER", "COMPLIANT", ago=1, expiresAt=iso(utcnow() - timedelta(minutes=1)))
    await demo.post(PASTE, A, json=stale)
    assert (await current())[1] == ("SP-ORDER", "EXPIRED")
    view = (await demo.get("/integration/lines/LINE-DIP-A/consumables", PL)).data
    assert view["stencil"]["latestStatus"]["status"] == "READY"
    assert (view["solderPaste"]["latestStatus"]["status"], view["solderPaste"]["effectiveStatus"]) == (
        "COMPLIANT",
        "EXPIRED",
    )
