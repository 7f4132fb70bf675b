"""Defects, dispositions, hold release and rework tasks (domain.md §3 Defect/Disposition/Rework, §7.6), over
HTTP on the demo plant: every refusal code with its status, the unit transitions and the audit rows."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import defects as defect_handlers
from central.config import Settings
from central.db.engine import Database
from central.db.models import AuditEvent, Inspection, OqcSamplingRule, Run, Unit
from tests.client import Api
from tests.flows import OP, PL, SMT_STATIONS, Q, authorized_run, move, seed

PRINT, SPI = "ST-PRINT-01", "ST-SPI-01"


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The demo plant and the app with the defects router (added only while it is not yet in ROUTERS)."""
    extra = [] if defect_handlers.router in ROUTERS else [defect_handlers.router]
    client: TestClient = await aiohttp_client(create_app(settings, database=database, extra_routers=extra))
    await seed(database)
    return Api(client)


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def fail_at_spi(api: Api, flow: dict[str, Any], sn: str, code: str | None = "BRIDGE") -> int:
    """PRINT PASS, then SPI FAIL: the unit is OUT_FAILED at step 2 with a RECORDED defect. → defect id."""
    r = await move(api, PRINT, sn, flow)
    assert r.status == 200 and r.data["status"] == "QUEUED", r.body
    extra = {"defectCode": code, "defectLocation": "U1", "defectRemark": "solder bridge"} if code else {}
    r = await move(api, SPI, sn, flow, "FAIL", **extra)
    assert r.status == 200 and r.data["status"] == "OUT_FAILED", r.body
    return int(r.data["defectId"])


async def unit_state(database: Database, sn: str) -> tuple[str, int]:
    async with database.reader() as s:
        unit = await s.scalar(select(Unit).where(Unit.sn == sn))
    assert unit is not None
    return unit.status, unit.current_step_no


async def run_status(database: Database, run_no: str) -> str:
    async with database.reader() as s:
        return str(await s.scalar(select(Run.status).where(Run.run_no == run_no)))


async def decide(api: Api, defect_id: int, **body: Any) -> Any:
    return await api.post(f"/defects/{defect_id}/disposition", Q, json=body)


async def produce(api: Api, flow: dict[str, Any], sn: str) -> None:
    for i, station in enumerate(SMT_STATIONS):
        r = await move(api, station, sn, flow)
        assert r.status == 200 and r.data["status"] == ("DONE" if i == len(SMT_STATIONS) - 1 else "QUEUED")


async def test_list_shows_failure_step_and_filters(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    sn = flow["sns"][0]
    defect_id = await fail_at_spi(demo, flow, sn)
    r = await demo.get("/defects", Q, params={"unitSn": sn})
    assert r.status == 200 and r.data["total"] == 1 and r.data["page"] == 1 and r.data["pageSize"] == 20
    item = r.data["items"][0]
    assert item["id"] == defect_id and item["code"] == "BRIDGE" and item["status"] == "RECORDED"
    assert item["location"] == "U1" and item["remark"] == "solder bridge" and item["trackId"]
    assert item["unitSn"] == sn and item["runNo"] == flow["runNo"] and item["woNo"] == flow["woNo"]
    step = item["failureStep"]
    assert step["stepNo"] == 2 and step["operationCode"] == "SPI" and step["operationName"]
    assert step["stationCode"] == SPI and step["stationName"]
    assert item["disposition"] is None
    for params, total in (
        ({"runNo": flow["runNo"]}, 1),
        ({"runNo": "RUN-NOPE"}, 0),
        ({"status": "CLOSED"}, 0),
        ({"status": "RECORDED,CLOSED"}, 1),
        ({"code": "OTHER"}, 0),
        ({"code": "OTHER,BRIDGE"}, 1),
        ({"unitSn": flow["sns"][1]}, 0),
    ):
        assert (await demo.get("/defects", Q, params=params)).data["total"] == total, params
    one = await demo.get(f"/defects/{defect_id}", Q)
    assert one.status == 200 and one.data == item
    expect(await demo.get("/defects/999999", Q), 404, "DEFECT_NOT_FOUND")
    expect(await demo.get("/defects/abc", Q), 404, "DEFECT_NOT_FOUND")
    # A FAIL without a code records STATION_FAIL.
    other = await fail_at_spi(demo, flow, flow["sns"][1], code=None)
    assert (await demo.get(f"/defects/{other}", Q)).data["code"] == "STATION_FAIL"


async def test_manual_defect_is_201_with_the_latest_track_as_failure_step(
    demo: Api, database: Database
) -> None:
    flow = await authorized_run(demo, database, qty=2)
    tracked, fresh = flow["sns"]
    assert (await move(demo, PRINT, tracked, flow)).status == 200
    r = await demo.post(
        "/defects",
        Q,
        json={"unitSn": tracked, "code": "DEFECT-REPAIR", "location": "U1", "qty": 2, "remark": "scratch"},
    )
    assert r.status == 201, r.body
    assert r.data["status"] == "RECORDED" and r.data["qty"] == 2 and r.data["remark"] == "scratch"
    assert r.data["recordedBy"] and r.data["failureStep"]["stepNo"] == 1
    assert r.data["failureStep"]["stationCode"] == PRINT
    r = await demo.post("/defects", Q, json={"unitSn": fresh, "code": "COSMETIC"})
    assert r.status == 201 and r.data["qty"] == 1
    assert r.data["trackId"] is None and r.data["failureStep"] is None
    expect(await demo.post("/defects", Q, json={"unitSn": "SN-NOPE", "code": "X"}), 404, "UNIT_NOT_FOUND")
    expect(await demo.post("/defects", Q, json={"unitSn": fresh}), 422, "VALIDATION_FAILED")
    expect(
        await demo.post("/defects", Q, json={"unitSn": fresh, "code": "X", "qty": 0}),
        422,
        "VALIDATION_FAILED",
    )


async def test_disposition_refusals_and_rework_default_step(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    sn, queued = flow["sns"]
    defect_id = await fail_at_spi(demo, flow, sn)
    manual = (await demo.post("/defects", Q, json={"unitSn": queued, "code": "X"})).data["id"]
    expect(await decide(demo, manual, type="HOLD"), 400, "UNIT_NOT_FAILED")
    expect(await decide(demo, 999999, type="SCRAP"), 404, "DEFECT_NOT_FOUND")
    expect(await decide(demo, defect_id, type="REPAIR"), 422, "VALIDATION_FAILED")
    for to in (3, 99, 0, -1):  # after the failure step, not in the snapshot
        expect(await decide(demo, defect_id, type="REWORK", toStepNo=to), 400, "REWORK_STEP_INVALID")
    assert await unit_state(database, sn) == ("OUT_FAILED", 2)
    r = await decide(demo, defect_id, type="REWORK", reason="repair")  # default: the first step
    assert r.status == 200, r.body
    disp = r.data["disposition"]
    assert r.data["status"] == "DISPOSITIONED" and disp["type"] == "REWORK" and disp["reason"] == "repair"
    assert disp["decidedBy"] and disp["decidedAt"]
    task = disp["reworkTask"]
    assert task["status"] == "OPEN" and (task["fromStepNo"], task["toStepNo"]) == (2, 1)
    assert await unit_state(database, sn) == ("QUEUED", 1)
    for kind in ("REWORK", "SCRAP", "HOLD"):
        expect(await decide(demo, defect_id, type=kind), 400, "ALREADY_DISPOSITIONED")


async def test_rework_may_return_to_the_failure_step_itself(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=1)
    defect_id = await fail_at_spi(demo, flow, flow["sns"][0])
    r = await decide(demo, defect_id, type="REWORK", toStepNo=2)
    assert r.status == 200 and r.data["disposition"]["reworkTask"]["toStepNo"] == 2, r.body
    assert await unit_state(database, flow["sns"][0]) == ("QUEUED", 2)
    r = await move(demo, SPI, flow["sns"][0], flow)  # PASS at the failure step completes the task
    assert r.status == 200 and r.data["status"] == "QUEUED"
    d = (await demo.get(f"/defects/{defect_id}", Q)).data
    assert d["status"] == "CLOSED" and d["disposition"]["reworkTask"]["status"] == "DONE"


async def test_scrap_closes_the_defect_cancels_open_rework_and_completes_the_run(
    demo: Api, database: Database
) -> None:
    flow = await authorized_run(demo, database, qty=2)
    sn, good = flow["sns"]
    first = await fail_at_spi(demo, flow, sn)
    task_id = (await decide(demo, first, type="REWORK", toStepNo=1)).data["disposition"]["reworkTask"]["id"]
    r = await move(demo, PRINT, sn, flow, "FAIL", defectCode="SHORT")  # fails again during rework
    assert r.data["status"] == "OUT_FAILED"
    second = r.data["defectId"]
    await produce(demo, flow, good)
    assert await run_status(database, flow["runNo"]) == "IN_PROGRESS"  # sn is not terminal yet
    r = await decide(demo, second, type="SCRAP", reason="not repairable")
    assert r.status == 200, r.body
    assert r.data["status"] == "CLOSED" and r.data["disposition"]["type"] == "SCRAP"
    assert r.data["disposition"]["reworkTask"] is None and r.data["unitStatus"] == "SCRAPPED"
    assert await unit_state(database, sn) == ("SCRAPPED", 1)
    assert await run_status(database, flow["runNo"]) == "COMPLETED"  # no SMT sampling rule
    tasks = (await demo.get("/rework-tasks", Q, params={"unitSn": sn})).data["items"]
    assert [(t["id"], t["status"]) for t in tasks] == [(task_id, "CANCELLED")]
    assert tasks[0]["cancelReason"] and tasks[0]["defectStatus"] == "CLOSED"
    assert (await demo.get(f"/defects/{first}", Q)).data["status"] == "CLOSED"


async def test_scrap_of_the_last_open_unit_samples_only_done_units(demo: Api, database: Database) -> None:
    async with database.writer() as s, s.begin():
        s.add(
            OqcSamplingRule(
                product_code="P-1001", sampling_type="PERCENTAGE", sample_value=100, is_active=True, meta={}
            )
        )
    flow = await authorized_run(demo, database, qty=3)
    scrapped, good1, good2 = flow["sns"]
    defect_id = await fail_at_spi(demo, flow, scrapped)
    await produce(demo, flow, good1)
    await produce(demo, flow, good2)
    assert (await decide(demo, defect_id, type="SCRAP")).status == 200
    async with database.reader() as s:
        oqc = await s.scalar(select(Inspection).where(Inspection.type == "OQC"))
        ids = dict((await s.execute(select(Unit.sn, Unit.id).where(Unit.sn.in_(flow["sns"])))).all())
    assert oqc is not None and oqc.status == "PENDING" and oqc.sample_qty == 2
    assert sorted(oqc.data["sampledUnitIds"]) == sorted([ids[good1], ids[good2]])
    assert await run_status(database, flow["runNo"]) == "IN_PROGRESS"


async def test_hold_and_release(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    sn, other = flow["sns"]
    defect_id = await fail_at_spi(demo, flow, sn)
    expect(
        await demo.post(f"/defects/{defect_id}/release", Q, json={"reason": "ok"}),
        400,
        "NOT_HOLD_DISPOSITION",
    )
    r = await decide(demo, defect_id, type="HOLD", reason="wait for engineering")
    assert r.status == 200 and r.data["status"] == "DISPOSITIONED" and r.data["disposition"]["type"] == "HOLD"
    assert await unit_state(database, sn) == ("ON_HOLD", 2)
    r = await demo.post(
        f"/stations/{SPI}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    expect(r, 400, "UNIT_ON_HOLD")
    expect(await demo.post(f"/defects/{defect_id}/release", Q, json={}), 422, "VALIDATION_FAILED")
    expect(await demo.post("/defects/999999/release", Q, json={"reason": "x"}), 404, "DEFECT_NOT_FOUND")
    r = await demo.post(f"/defects/{defect_id}/release", Q, json={"reason": "engineering ok"})
    assert r.status == 200, r.body
    assert r.data["status"] == "CLOSED" and r.data["releaseReason"] == "engineering ok"
    assert r.data["releasedBy"] and r.data["releasedAt"]
    assert await unit_state(database, sn) == ("QUEUED", 2)
    expect(
        await demo.post(f"/defects/{defect_id}/release", Q, json={"reason": "again"}), 400, "UNIT_NOT_HELD"
    )
    # A REWORK disposition is not a hold.
    reworked = await fail_at_spi(demo, flow, other)
    assert (await decide(demo, reworked, type="REWORK")).status == 200
    expect(
        await demo.post(f"/defects/{reworked}/release", Q, json={"reason": "x"}), 400, "NOT_HOLD_DISPOSITION"
    )


async def test_two_holds_and_a_superseding_rework(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=1)
    sn = flow["sns"][0]
    first = await fail_at_spi(demo, flow, sn)
    assert (await decide(demo, first, type="HOLD")).status == 200
    second = (await demo.post("/defects", Q, json={"unitSn": sn, "code": "CRACK"})).data["id"]
    assert (await decide(demo, second, type="HOLD")).status == 200  # the held unit stays held
    r = await demo.post(f"/defects/{first}/release", Q, json={"reason": "first cleared"})
    assert r.status == 200 and r.data["status"] == "CLOSED"
    assert await unit_state(database, sn) == ("ON_HOLD", 2)  # the second hold is still open
    third = (await demo.post("/defects", Q, json={"unitSn": sn, "code": "LIFTED"})).data["id"]
    r = await decide(demo, third, type="REWORK", toStepNo=1)
    assert r.status == 200 and r.data["disposition"]["reworkTask"]["fromStepNo"] == 2
    assert await unit_state(database, sn) == ("QUEUED", 1)
    superseded = (await demo.get(f"/defects/{second}", Q)).data
    assert superseded["status"] == "CLOSED" and "superseded" in superseded["releaseReason"]


async def test_repair_record_and_manual_completion(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    sn, other = flow["sns"]
    defect_id = await fail_at_spi(demo, flow, sn)
    task_id = (await decide(demo, defect_id, type="REWORK", toStepNo=1)).data["disposition"]["reworkTask"][
        "id"
    ]
    r = await demo.get("/rework-tasks", Q, params={"unitSn": sn})
    assert r.status == 200 and r.data["total"] == 1
    t = r.data["items"][0]
    assert (t["id"], t["status"], t["defectId"], t["defectCode"]) == (task_id, "OPEN", defect_id, "BRIDGE")
    assert (t["unitSn"], t["unitStatus"], t["unitCurrentStepNo"], t["runNo"]) == (
        sn,
        "QUEUED",
        1,
        flow["runNo"],
    )
    assert t["repairRecord"] is None
    body = {"reason": "Solder bridge", "action": "Rework and clean pads", "result": "PASS", "remark": "ok"}
    r = await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json=body)
    assert r.status == 200, r.body
    rec = r.data["repairRecord"]
    assert {k: rec[k] for k in body} == body and rec["recordedBy"] and rec["recordedAt"]
    r = await demo.post(
        f"/rework-tasks/{task_id}/repair-record", Q, json={"action": "Reflow", "result": "PASS"}
    )
    assert r.data["repairRecord"]["action"] == "Reflow"  # the latest record wins
    expect(
        await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json={"result": "PASS"}),
        422,
        "VALIDATION_FAILED",
    )
    r = await demo.post(f"/rework-tasks/{task_id}/complete", Q, json={"remark": "done by hand"})
    assert r.status == 200, r.body
    assert r.data["status"] == "DONE" and r.data["doneBy"] and r.data["doneAt"]
    assert r.data["completeRemark"] == "done by hand" and r.data["defectStatus"] == "CLOSED"
    assert await unit_state(database, sn) == ("QUEUED", 1)  # completion does not move the unit
    expect(await demo.post(f"/rework-tasks/{task_id}/complete", Q, json={}), 400, "REWORK_NOT_OPEN")
    expect(
        await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json={"action": "x", "result": "PASS"}),
        400,
        "REWORK_TASK_NOT_OPEN",
    )
    for path, json in (("complete", {}), ("repair-record", {"action": "x", "result": "PASS"})):
        expect(await demo.post(f"/rework-tasks/999999/{path}", Q, json=json), 404, "REWORK_TASK_NOT_FOUND")
    other_defect = await fail_at_spi(demo, flow, other)
    assert (await decide(demo, other_defect, type="REWORK")).status == 200
    for params, total in (
        ({"status": "DONE"}, 1),
        ({"status": "OPEN,DONE"}, 2),
        ({"runNo": flow["runNo"]}, 2),
        ({"runNo": "RUN-NOPE"}, 0),
        ({"unitSn": other, "status": "OPEN"}, 1),
    ):
        assert (await demo.get("/rework-tasks", Q, params=params)).data["total"] == total, params


async def test_planner_and_operator_are_forbidden(demo: Api, database: Database) -> None:
    calls = [
        ("GET", "/defects", None),
        ("GET", "/defects/1", None),
        ("POST", "/defects", {"unitSn": "X", "code": "X"}),
        ("POST", "/defects/1/disposition", {"type": "SCRAP"}),
        ("POST", "/defects/1/release", {"reason": "x"}),
        ("GET", "/rework-tasks", None),
        ("POST", "/rework-tasks/1/repair-record", {"action": "x", "result": "PASS"}),
        ("POST", "/rework-tasks/1/complete", {}),
    ]
    for who in (PL, OP):
        for method, path, body in calls:
            expect(await demo.call(method, path, who, json=body), 403, "FORBIDDEN")


async def test_every_write_is_audited(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    rework_defect = await fail_at_spi(demo, flow, a)
    task_id = (await decide(demo, rework_defect, type="REWORK")).data["disposition"]["reworkTask"]["id"]
    expect(await decide(demo, rework_defect, type="SCRAP"), 400, "ALREADY_DISPOSITIONED")
    await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json={"action": "x", "result": "PASS"})
    await demo.post(f"/rework-tasks/{task_id}/complete", Q, json={})
    hold = await fail_at_spi(demo, flow, b)
    await decide(demo, hold, type="HOLD")
    await demo.post(f"/defects/{hold}/release", Q, json={"reason": "ok"})
    scrap = (await demo.post("/defects", Q, json={"unitSn": c, "code": "X"})).data["id"]
    await move(demo, PRINT, c, flow, "FAIL")
    await decide(demo, scrap, type="SCRAP")
    async with database.reader() as s:
        rows = (await s.execute(select(AuditEvent.action, AuditEvent.entity_type, AuditEvent.status))).all()
    seen = {(r.action, r.entity_type, r.status) for r in rows}
    for expected in (
        ("DEFECT_CREATE", "DEFECT", "SUCCESS"),
        ("DISPOSITION_REWORK", "DISPOSITION", "SUCCESS"),
        ("DISPOSITION_HOLD", "DISPOSITION", "SUCCESS"),
        ("DISPOSITION_SCRAP", "DISPOSITION", "SUCCESS"),
        ("DEFECT_RELEASE", "DEFECT", "SUCCESS"),
        ("REWORK_REPAIR_RECORD", "REWORK_TASK", "SUCCESS"),
        ("REWORK_COMPLETE", "REWORK_TASK", "SUCCESS"),
        ("DISPOSITION_CREATE", "DISPOSITION", "FAIL"),
    ):
        assert expected in seen, expected
