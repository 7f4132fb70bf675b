"""Unit trace and reverse lot trace over HTTP (domain.md §8)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from central.db.engine import Database
from central.db.models import (
    FeederSlot,
    IngestEvent,
    Inspection,
    InspectionItem,
    LoadingRecord,
    MaterialLot,
    ReadinessCheck,
    ReadinessCheckItem,
    Run,
    Unit,
    WorkOrder,
)
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, Q, authorized_run, move, released_run, seed

TRACE = "trace@example.com"
MAT = "material@example.com"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def lot_id(database: Database, material: str, lot_no: str) -> int:
    """The lot's id, created when missing (lots normally arrive through loading verify)."""
    async with database.writer() as s, s.begin():
        lot = await s.scalar(
            select(MaterialLot).where(MaterialLot.material_code == material, MaterialLot.lot_no == lot_no)
        )
        if lot is None:
            lot = MaterialLot(material_code=material, lot_no=lot_no, meta={})
            s.add(lot)
            await s.flush()
        return lot.id


async def load(
    database: Database,
    run_no: str,
    lot_no: str,
    loaded_at: datetime,
    *,
    status: str = "LOADED",
    verify: str = "PASS",
    unloaded_at: datetime | None = None,
    material: str = "MAT-001",
) -> int:
    """A LoadingRecord on the demo's SLOT-01 (the loading workflow has its own tests)."""
    lid = await lot_id(database, material, lot_no)
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        slot_id = await s.scalar(select(FeederSlot.id).where(FeederSlot.slot_code == "SLOT-01"))
        rec = LoadingRecord(
            run_id=run_id,
            slot_id=slot_id,
            material_lot_id=lid,
            material_code=material,
            expected_code="MAT-001",
            status=status,
            verify_result=verify,
            loaded_at=loaded_at,
            loaded_by="material",
            unloaded_at=unloaded_at,
            unloaded_by="material" if unloaded_at else None,
            meta={},
        )
        s.add(rec)
        await s.flush()
        return rec.id


async def produced(api: Api, database: Database) -> dict[str, Any]:
    """Run of two units on PCBA-STD-V1: the first goes through all five steps and FAILs at AOI, with
    a data value at REFLOW; loading, FAI items, a waived FORMAL check and an ingest event of the
    second unit are added through the ORM."""
    spec = await api.post(
        "/data-collection-specs",
        EN,
        json={"operationCode": "REFLOW", "name": "PEAK_TEMP", "dataType": "NUMBER", "spec": {"unit": "C"}},
    )
    assert spec.status == 201, spec.body
    flow = await authorized_run(api, database, qty=2)
    sn, sn2 = flow["sns"]
    now = utcnow()
    flow["records"] = {
        # replaced before the unit started: outside its production window
        "old": await load(
            database,
            flow["runNo"],
            "LOT-OLD",
            now - timedelta(hours=3),
            status="REPLACED",
            unloaded_at=now - timedelta(hours=2),
        ),
        "used": await load(database, flow["runNo"], "LOT-2024-001", now - timedelta(hours=1)),
        # a FAIL scan (stored UNLOADED) is no loading
        "fail": await load(
            database, flow["runNo"], "LOT-BAD", now - timedelta(minutes=50), status="UNLOADED", verify="FAIL"
        ),
    }
    for station in SMT_STATIONS[:3]:
        assert (await move(api, station, sn, flow)).status == 200
    r = await move(api, "ST-REFLOW-01", sn, flow, data=[{"specName": "PEAK_TEMP", "valueNumber": 245}])
    assert r.status == 200, r.body
    r = await move(api, "ST-AOI-01", sn, flow, result="FAIL", defectCode="SOLDER_BRIDGE", defectLocation="U7")
    assert r.status == 200 and r.data["status"] == "OUT_FAILED", r.body
    # loaded after the unit's last track-out: outside its window too
    flow["records"]["late"] = await load(database, flow["runNo"], "LOT-LATE", utcnow() + timedelta(hours=1))

    later = utcnow() + timedelta(seconds=5)
    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == flow["runNo"]))
        assert run is not None
        fai = await s.scalar(select(Inspection).where(Inspection.run_id == run.id, Inspection.type == "FAI"))
        assert fai is not None
        flow["faiId"] = fai.id
        for result in ("PASS", "PASS", "FAIL", "NA"):
            s.add(InspectionItem(inspection_id=fai.id, unit_sn=sn, item_name=f"item {result}", result=result))
        s.add(InspectionItem(inspection_id=fai.id, unit_sn=sn2, item_name="other unit", result="PASS"))
        check = ReadinessCheck(
            run_id=run.id, type="FORMAL", status="PASSED", checked_at=later, checked_by="quality"
        )
        check.items = [
            ReadinessCheckItem(item_type="ROUTE", item_key="ROUTE", status="PASSED"),
            ReadinessCheckItem(
                item_type="LOADING",
                item_key="SLOT-01",
                status="WAIVED",
                fail_reason="SLOT_TABLE_MISSING",
                waived_at=later,
                waived_by="quality",
                waive_reason="Feeder checked by hand",
            ),
        ]
        s.add(check)
        # A newer PRECHECK is not the latest FORMAL and must not show.
        s.add(
            ReadinessCheck(
                run_id=run.id, type="PRECHECK", status="FAILED", checked_at=later + timedelta(seconds=5)
            )
        )
        unit2 = await s.scalar(select(Unit).where(Unit.sn == sn2))
        assert unit2 is not None
        event = IngestEvent(
            source_system="EDGE",
            dedupe_key="evt-trace-1",
            event_type="AUTO",
            occurred_at=later,
            received_at=later,
            run_id=run.id,
            unit_id=unit2.id,
            line_id=run.line_id,
            sn=sn2,
            result="PASS",
            payload={"sn": sn2},
            meta={},
        )
        s.add(event)
        await s.flush()
        flow["eventId"] = event.id
    return flow


async def test_unit_trace_has_the_full_shape(demo: Api, database: Database) -> None:
    api = demo
    flow = await produced(api, database)
    sn, sn2 = flow["sns"]
    r = await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})
    assert r.status == 200, r.body
    t = r.data
    assert t["unit"] == {
        "sn": sn,
        "status": "OUT_FAILED",
        "currentStepNo": 5,
        "woNo": flow["woNo"],
        "runNo": flow["runNo"],
    }
    assert t["route"] == {"code": "PCBA-STD-V1", "sourceSystem": "MES", "sourceKey": None}
    v1 = (await api.get("/routes/PCBA-STD-V1/versions/1", EN)).data
    assert t["routeVersion"] == {"id": v1["id"], "versionNo": 1, "compiledAt": v1["compiledAt"]}
    assert [s["stepNo"] for s in t["steps"]] == [1, 2, 3, 4, 5]
    assert [s["operationCode"] for s in t["steps"]] == ["PRINTING", "SPI", "MOUNTING", "REFLOW", "AOI"]
    for step, snap in zip(t["steps"], v1["snapshot"]["steps"], strict=True):
        assert {k: step[k] for k in snap} == snap  # snapshot semantics
        assert step["requiresAuthorization"] is False

    ops = ["PRINTING", "SPI", "MOUNTING", "REFLOW", "AOI"]
    assert [(x["stepNo"], x["operation"], x["result"]) for x in t["tracks"]] == [
        (i + 1, op, "FAIL" if op == "AOI" else "PASS") for i, op in enumerate(ops)
    ]
    assert [x["stationCode"] for x in t["tracks"]] == SMT_STATIONS
    for x in t["tracks"]:
        assert ts(x["inAt"]) <= ts(x["outAt"])
    assert [
        (d["stepNo"], d["name"], d["value"], d["valueNumber"], d["valueText"]) for d in t["dataValues"]
    ] == [(4, "PEAK_TEMP", 245, 245, None)]
    assert t["dataValues"][0]["judge"] is None and t["dataValues"][0]["source"] == "MANUAL"
    assert [(d["code"], d["location"], d["qty"], d["status"], d["disposition"]) for d in t["defects"]] == [
        ("SOLDER_BRIDGE", "U7", 1, "RECORDED", None)
    ]
    assert [(i["id"], i["type"], i["status"], i["unitItems"]) for i in t["inspections"]] == [
        (flow["faiId"], "FAI", "PASS", {"pass": 2, "fail": 1, "na": 1})
    ]
    assert set(t["inspections"][0]) >= {"startedAt", "inspectorId", "decidedAt", "decidedBy", "remark"}

    assert [x["id"] for x in t["loadingRecords"]] == [flow["records"]["used"]]
    rec = t["loadingRecords"][0]
    assert {k: rec[k] for k in rec if k not in ("id", "loadedAt")} == {
        "slotCode": "SLOT-01",
        "slotName": "Feeder Slot 01",
        "position": 1,
        "materialCode": "MAT-001",
        "lotNo": "LOT-2024-001",
        "status": "LOADED",
        "verifyResult": "PASS",
        "loadedBy": "material",
        "unloadedAt": None,
        "unloadedBy": None,
    }
    assert ts(rec["loadedAt"]) < ts(t["tracks"][0]["inAt"])
    assert {"position": 1, "materialCode": "MAT-001", "lotNo": "LOT-2024-001", "isKeyPart": False} in t[
        "materials"
    ]
    assert "LOT-BAD" not in {m["lotNo"] for m in t["materials"]}  # a FAIL scan was never on the feeder

    readiness = t["readiness"]
    assert (readiness["status"], readiness["checkedBy"]) == ("PASSED", "quality")
    assert readiness["checkedAt"].endswith("Z")
    assert [
        (w["itemType"], w["itemKey"], w["waivedBy"], w["waiveReason"], w["source"])
        for w in readiness["waivedItems"]
    ] == [("LOADING", "SLOT-01", "quality", "Feeder checked by hand", "WAIVE")]
    assert readiness["waivedItems"][0]["waivedAt"].endswith("Z")

    # A manual unit has no ingest or carrier history.
    for key in ("ingestEvents", "carrierTracks", "carrierLoads", "carrierDataValues"):
        assert t[key] == [], key
    assert t["snapshot"] == {}

    # The second unit: its ingest event (linked by unit_id) is listed; only its own FAI items count.
    t2 = (await api.get(f"/trace/units/{sn2}", TRACE)).data
    assert [
        (e["id"], e["eventType"], e["sourceSystem"], e["dedupeKey"], e["sn"], e["result"])
        for e in t2["ingestEvents"]
    ] == [(flow["eventId"], "AUTO", "EDGE", "evt-trace-1", sn2, "PASS")]
    assert t2["ingestEvents"][0]["lineCode"] == "LINE-A" and t2["ingestEvents"][0]["stationCode"] is None
    assert (t2["tracks"], t2["defects"], t2["dataValues"]) == ([], [], [])
    assert t2["inspections"][0]["unitItems"] == {"pass": 1, "fail": 0, "na": 0}
    assert t2["unit"]["status"] == "QUEUED"


async def test_trace_mode_run_keeps_the_frozen_version_and_latest_follows_ready(
    demo: Api, database: Database
) -> None:
    api = demo
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    for station in SMT_STATIONS[:2]:
        assert (await move(api, station, sn, flow)).status == 200
    before = (await api.get(f"/trace/units/{sn}", Q)).data  # default mode = run

    cfg = await api.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 3, "requiresAuthorization": True},
    )
    assert cfg.status == 200, cfg.body
    v2 = (await api.post("/routes/PCBA-STD-V1/compile", EN)).data
    assert (v2["versionNo"], v2["status"]) == (2, "READY")
    # A newer INVALID version is never the "latest" of a trace.
    bad = await api.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 5, "stationType": "AUTO"},
    )
    assert bad.status == 200
    assert (await api.post("/routes/PCBA-STD-V1/compile", EN)).data["status"] == "INVALID"

    run_mode = (await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})).data
    latest = (await api.get(f"/trace/units/{sn}", Q, params={"mode": "latest"})).data
    assert run_mode == before  # history never changes after recompiles
    assert run_mode["routeVersion"]["versionNo"] == 1
    assert {s["stepNo"]: s["requiresAuthorization"] for s in run_mode["steps"]}[3] is False
    assert latest["routeVersion"] == {"id": v2["id"], "versionNo": 2, "compiledAt": v2["compiledAt"]}
    assert {s["stepNo"]: s["requiresAuthorization"] for s in latest["steps"]}[3] is True
    assert latest["tracks"] == run_mode["tracks"] and len(latest["tracks"]) == 2


async def test_trace_refusals(demo: Api, database: Database) -> None:
    api = demo
    expect(await api.get("/trace/units/SN-NOPE", Q), 404, "UNIT_NOT_FOUND")
    expect(await api.get("/trace/units/SN-NOPE", Q, params={"mode": "latest"}), 404, "UNIT_NOT_FOUND")
    expect(
        await api.get("/trace/units/SN-DEMO-SMT-0001", Q, params={"mode": "other"}), 422, "VALIDATION_FAILED"
    )
    expect(await api.get("/trace/units/SN-DEMO-SMT-0001", MAT), 403, "FORBIDDEN")
    assert (await api.get("/trace/units/SN-DEMO-SMT-0001", OP)).status == 200  # operators hold trace:read
    assert (await api.get("/trace/units/SN-DEMO-SMT-0001", PL)).status == 200

    # A unit that was never put into a run has no frozen version; "latest" still traces it by its WO routing.
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": "WO-NO-ROUTE", "productCode": "P-NONE", "plannedQty": 1},
    )
    assert r.status == 200, r.body
    async with database.writer() as s, s.begin():
        for wo_no, sn in (("WO-DEMO-SMT-001", "SN-ORPHAN-1"), ("WO-NO-ROUTE", "SN-ORPHAN-2")):
            wo_id = await s.scalar(select(WorkOrder.id).where(WorkOrder.wo_no == wo_no))
            s.add(Unit(sn=sn, wo_id=wo_id, run_id=None, status="QUEUED", current_step_no=1, meta={}))
    expect(await api.get("/trace/units/SN-ORPHAN-1", Q), 404, "ROUTE_VERSION_NOT_READY")
    latest = await api.get("/trace/units/SN-ORPHAN-1", Q, params={"mode": "latest"})
    assert latest.status == 200, latest.body
    d = latest.data
    assert (d["unit"]["runNo"], d["routeVersion"]["versionNo"], d["readiness"]) == (None, 1, None)
    assert (d["inspections"], d["loadingRecords"], d["materials"], d["tracks"]) == ([], [], [], [])
    expect(await api.get("/trace/units/SN-ORPHAN-2", Q, params={"mode": "latest"}), 404, "ROUTE_NOT_FOUND")

    # "latest" needs a READY version: a routing that only ever compiled INVALID has none.
    r = await api.post(
        "/routes",
        EN,
        json={
            "code": "R-BAD",
            "name": "R-BAD",
            "processType": "SMT",
            "steps": [{"stepNo": 1, "operationCode": "AOI"}],
        },
    )
    assert r.status == 200, r.body
    assert (await api.post("/routes/R-BAD/compile", EN)).data["status"] == "INVALID"
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": "WO-BAD-ROUTE", "productCode": "P-1001", "plannedQty": 1, "routingCode": "R-BAD"},
    )
    assert r.status == 200, r.body
    async with database.writer() as s, s.begin():
        wo_id = await s.scalar(select(WorkOrder.id).where(WorkOrder.wo_no == "WO-BAD-ROUTE"))
        s.add(Unit(sn="SN-ORPHAN-3", wo_id=wo_id, run_id=None, status="QUEUED", current_step_no=1, meta={}))
    expect(
        await api.get("/trace/units/SN-ORPHAN-3", Q, params={"mode": "latest"}),
        404,
        "ROUTE_VERSION_NOT_READY",
    )


async def test_loading_window_of_a_unit_still_in_a_station_is_open_ended(
    demo: Api, database: Database
) -> None:
    api = demo
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    assert (await move(api, "ST-PRINT-01", sn, flow)).status == 200
    r = await api.post(
        "/stations/ST-SPI-01/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200, r.body
    now = utcnow()
    gone = await load(
        database,
        flow["runNo"],
        "LOT-GONE",
        now - timedelta(hours=2),
        status="REPLACED",
        unloaded_at=now - timedelta(hours=1),
    )
    during = await load(database, flow["runNo"], "LOT-2024-001", now + timedelta(seconds=1))
    t = (await api.get(f"/trace/units/{sn}", Q)).data
    assert t["tracks"][-1]["outAt"] is None
    ids = [x["id"] for x in t["loadingRecords"]]
    assert during in ids and gone not in ids


# ---- reverse lot trace ------------------------------------------------------------------------------------


async def test_reverse_lot_trace_lists_units_of_runs_that_loaded_the_lot(
    demo: Api, database: Database
) -> None:
    api = demo
    a = await released_run(api, qty=2)
    b = await released_run(api)
    c = await released_run(api)
    untouched = await released_run(api)
    now = utcnow()
    await load(database, a["runNo"], "LOT-2024-001", now)
    await load(
        database, b["runNo"], "LOT-2024-001", now - timedelta(hours=2), status="REPLACED", unloaded_at=now
    )
    await load(database, c["runNo"], "LOT-2024-001", now, status="UNLOADED", verify="FAIL")  # a failed scan
    await load(database, untouched["runNo"], "LOT-OTHER", now)
    await lot_id(database, "MAT-002", "LOT-NEVER-LOADED")

    r = await api.get("/trace/material-lots/MAT-001/LOT-2024-001/units", Q)
    assert r.status == 200, r.body
    assert (r.data["materialCode"], r.data["lotNo"]) == ("MAT-001", "LOT-2024-001")
    expected = sorted([(sn, "QUEUED", a["runNo"]) for sn in a["sns"]] + [(b["sns"][0], "QUEUED", b["runNo"])])
    assert [(u["sn"], u["status"], u["runNo"]) for u in r.data["units"]] == expected
    assert (await api.get("/trace/material-lots/MAT-001/LOT-2024-001/units", TRACE)).data == r.data

    never = await api.get("/trace/material-lots/MAT-002/LOT-NEVER-LOADED/units", Q)
    assert never.status == 200 and never.data["units"] == []
    expect(
        await api.get("/trace/material-lots/MAT-001/LOT-NOPE/units", Q), 404, "TRACE_MATERIAL_LOT_NOT_FOUND"
    )
    expect(
        await api.get("/trace/material-lots/MAT-002/LOT-2024-001/units", Q),
        404,
        "TRACE_MATERIAL_LOT_NOT_FOUND",
    )
    expect(await api.get("/trace/material-lots/%20/LOT-2024-001/units", Q), 400, "TRACE_MATERIAL_LOT_INVALID")
    expect(await api.get("/trace/material-lots/MAT-001/%20%20/units", Q), 400, "TRACE_MATERIAL_LOT_INVALID")
    expect(await api.get("/trace/material-lots/MAT-001/LOT-2024-001/units", MAT), 403, "FORBIDDEN")
