"""First-article inspection (domain.md §7.1): scenario S2 steps 12–20, S6 (DIP), every refusal, aliases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import fai as fai_handlers
from central.config import Settings
from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    Inspection,
    InspectionResultRecord,
    ReadinessCheck,
    Run,
    TpmEquipment,
)
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import DIP_STATIONS, EN, OP, PL, Q, move, released_run, seed, set_run_status

PRINT = "ST-PRINT-01"


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The demo plant and the app with the FAI router (added here only while it is not yet in ROUTERS)."""
    extra = [] if fai_handlers.router in ROUTERS else [fai_handlers.router]
    api = Api(await aiohttp_client(create_app(settings, database=database, extra_routers=extra)))
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def _run_id(database: Database, run_no: str) -> int:
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
    assert run_id is not None
    return int(run_id)


async def readiness(database: Database, run_no: str, status: str = "PASSED") -> None:
    """A recorded FORMAL check: stands in for S2 step 11 (loading and readiness have their own tests)."""
    run_id = await _run_id(database, run_no)
    async with database.writer() as s, s.begin():
        s.add(
            ReadinessCheck(run_id=run_id, type="FORMAL", status=status, checked_at=utcnow(), checked_by="q")
        )


async def ready_run(api: Api, database: Database, **kw: Any) -> dict[str, Any]:
    flow = await released_run(api, **kw)
    await readiness(database, flow["runNo"])
    return flow


async def create(api: Api, run_no: str, sample_qty: int = 1, **extra: Any) -> Any:
    return await api.post(f"/fai/run/{run_no}", Q, json={"sampleQty": sample_qty, **extra})


async def started(api: Api, flow: dict[str, Any], sample_qty: int = 1) -> int:
    r = await create(api, flow["runNo"], sample_qty)
    assert r.status == 201, r.body
    s = await api.post(f"/fai/{r.data['id']}/start", Q)
    assert s.status == 200 and s.data["status"] == "INSPECTING", s.body
    return int(r.data["id"])


async def trial(api: Api, flow: dict[str, Any], sn: str, station: str = PRINT, **extra: Any) -> Any:
    r = await move(api, station, sn, flow, **extra)
    assert r.status == 200, r.body
    return r


async def complete(api: Api, fai_id: int, decision: str = "PASS", **extra: Any) -> Any:
    return await api.post(f"/fai/{fai_id}/complete", Q, json={"decision": decision, **extra})


async def authorize(api: Api, run_no: str) -> Any:
    return await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})


async def passed_and_signed(api: Api, flow: dict[str, Any], sn: str, station: str = PRINT) -> int:
    fai_id = await started(api, flow)
    await trial(api, flow, sn, station)
    assert (await complete(api, fai_id)).status == 200
    assert (await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "ok"})).status == 200
    return fai_id


# ---- scenarios ---------------------------------------------------------------------------------------


async def test_s2_steps_12_to_20_fai_then_authorized(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database)
    run_no, sn = flow["runNo"], flow["sns"][0]
    expect(await authorize(api, run_no), 400, "FAI_NOT_PASSED")  # 12

    gate = await api.get(f"/fai/run/{run_no}/gate", Q)  # 13
    assert gate.status == 200
    assert gate.data == {"requiresFai": True, "faiPassed": False, "faiSigned": False, "faiWaived": False}

    r = await create(api, run_no)  # 14
    assert r.status == 201 and r.data["status"] == "PENDING" and r.data["sampleQty"] == 1, r.body
    assert r.data["runNo"] == run_no and r.data["items"] == [] and r.data["startedAt"] is None
    fai_id = r.data["id"]

    s = await api.post(f"/fai/{fai_id}/start", Q)  # 15
    assert s.status == 200 and s.data["status"] == "INSPECTING"
    assert s.data["inspectorId"] and s.data["startedAt"]

    r_in = await api.post(  # 16: the trial, run still PREP
        f"/stations/{PRINT}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": run_no}
    )
    assert r_in.status == 200 and r_in.data["status"] == "IN_STATION", r_in.body
    r_out = await api.post(
        f"/stations/{PRINT}/track-out",
        OP,
        json={"sn": sn, "runNo": run_no, "result": "PASS", "operatorId": "OP-01"},
    )
    assert r_out.status == 200 and r_out.data["status"] == "QUEUED", r_out.body

    item = await api.post(  # 17
        f"/fai/{fai_id}/items", Q, json={"unitSn": sn, "itemName": "Visual Inspection", "result": "PASS"}
    )
    assert item.status == 201 and item.data["itemId"] and item.data["result"] == "PASS", item.body

    done = await complete(api, fai_id)  # 18
    assert done.status == 200 and done.data["status"] == "PASS", done.body
    assert (done.data["passedQty"], done.data["failedQty"]) == (1, 0)
    assert done.data["decidedBy"] and done.data["decidedAt"] and done.data["runStatus"] == "PREP"

    signed = await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "Auto sign"})  # 19
    assert signed.status == 200 and signed.data["signedBy"] and signed.data["signedAt"]
    assert signed.data["signatureRemark"] == "Auto sign" and signed.data["status"] == "PASS"
    gate = (await api.get(f"/fai/run/{run_no}/gate", Q)).data
    assert gate["faiPassed"] and gate["faiSigned"] and gate["faiId"] == fai_id

    ok = await authorize(api, run_no)  # 20
    assert ok.status == 200 and ok.data["status"] == "AUTHORIZED", ok.body

    async with database.reader() as db:
        actions = set(
            await db.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.entity_type == "INSPECTION",
                    AuditEvent.entity_id == str(fai_id),
                    AuditEvent.status == "SUCCESS",
                )
            )
        )
    assert actions == {"FAI_CREATE", "FAI_START", "FAI_ITEM_ADD", "FAI_COMPLETE", "FAI_SIGN"}


async def test_s6_dip_trial_at_insertion_then_four_stations(demo: Api, database: Database) -> None:
    api = demo
    flow = await released_run(api, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    run_no, sn = flow["runNo"], flow["sns"][0]
    # S6: loading is off on LINE-DIP-A, so the real FORMAL check passes (ROUTE, EQUIPMENT×4, MATERIAL×3).
    check = (await api.post(f"/runs/{run_no}/readiness/check", Q)).data
    assert check["status"] == "PASSED" and check["summary"]["total"] == 8
    expect(await authorize(api, run_no), 400, "FAI_NOT_PASSED")
    assert (await api.get(f"/fai/run/{run_no}/gate", Q)).data["requiresFai"] is True
    fai_id = await started(api, flow)
    assert (await trial(api, flow, sn, "ST-DIP-INS-01")).data["status"] == "QUEUED"
    assert (await complete(api, fai_id)).data["status"] == "PASS"
    assert (await api.post(f"/fai/{fai_id}/sign", Q)).status == 200  # the sign body is optional
    assert (await authorize(api, run_no)).data["status"] == "AUTHORIZED"

    for i, station in enumerate(DIP_STATIONS[1:]):
        r = await move(api, station, sn, flow)
        assert r.status == 200, r.body
        assert r.data["status"] == ("DONE" if i == 2 else "QUEUED")
    # The seeded DIP rule (product + line + routing, FIXED 1) asks for OQC.
    closed = await api.post(f"/runs/{run_no}/close", PL)
    expect(closed, 409, "OQC_REQUIRED")

    t = (await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})).data
    assert t["route"]["code"] == "PCBA-DIP-V1" and len(t["steps"]) == 4
    assert [x["result"] for x in t["tracks"]] == ["PASS"] * 4 and t["unit"]["status"] == "DONE"
    assert any(i["type"] == "FAI" and i["status"] == "PASS" for i in t["inspections"])


# ---- reads ------------------------------------------------------------------------------------------------


async def test_detail_trial_summary_list_and_latest(demo: Api, database: Database) -> None:
    api = demo
    spec = {
        "operationCode": "PRINTING",
        "name": "PASTE_THICKNESS",
        "itemType": "KEY",
        "dataType": "NUMBER",
        "method": "MANUAL",
        "triggerType": "EACH_UNIT",
    }
    assert (await api.post("/data-collection-specs", EN, json=spec)).status == 201
    flow = await ready_run(api, database, qty=2)
    a, b = flow["sns"]
    fai_id = await started(api, flow)
    await trial(api, flow, a, data=[{"specName": "PASTE_THICKNESS", "valueNumber": 0.12}])
    async with database.writer() as s, s.begin():
        s.add(
            InspectionResultRecord(
                event_id="evt-spi-1",
                event_time=utcnow(),
                run_id=await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"])),
                run_no=flow["runNo"],
                station_code="ST-SPI-01",
                unit_sn=a,
                step_no=2,
                inspection_type="SPI",
                result="PASS",
                defects=[],
                source="AUTO",
                received_at=utcnow(),
                meta={},
            )
        )
    d = (await api.get(f"/fai/{fai_id}", Q)).data
    summary = d["trialSummary"]
    assert (summary["sampleQty"], summary["trackedQty"], summary["finishedQty"], summary["done"]) == (
        1,
        1,
        1,
        True,
    )
    [unit] = summary["units"]
    assert unit["sn"] == a and b not in str(summary)
    [out] = unit["trackOuts"]
    assert (out["stepNo"], out["stationCode"], out["result"]) == (1, PRINT, "PASS") and out["outAt"]
    assert [(v["name"], v["value"]) for v in out["dataValues"]] == [("PASTE_THICKNESS", 0.12)]
    assert [(i["inspectionType"], i["result"], i["eventId"]) for i in unit["inspections"]] == [
        ("SPI", "PASS", "evt-spi-1")
    ]

    latest = await api.get(f"/fai/run/{flow['runNo']}", Q)
    assert latest.status == 200 and latest.data["id"] == fai_id
    other = await released_run(api)
    expect(await api.get(f"/fai/run/{other['runNo']}", Q), 404, "FAI_NOT_FOUND")
    expect(await api.get("/fai/run/RUN-NOPE/gate", Q), 404, "RUN_NOT_FOUND")
    expect(await api.get("/fai/999999", Q), 404, "FAI_NOT_FOUND")
    expect(await api.get("/fai/abc", Q), 404, "FAI_NOT_FOUND")

    page = (await api.get("/fai", Q, params={"runNo": flow["runNo"]})).data
    assert (
        page["total"] == 1 and page["items"][0]["id"] == fai_id and page["items"][0]["runNo"] == flow["runNo"]
    )
    assert (await api.get("/fai", Q, params={"status": "PASS"})).data["total"] == 0
    assert (await api.get("/fai", Q, params={"status": "INSPECTING,PASS"})).data["total"] == 1


async def test_gate_of_a_route_without_fai(demo: Api, database: Database) -> None:
    flow = await released_run(demo, product="P-ING-AUTO", routing="ROUTE-AUTO-V1", line="LINE-ING")
    gate = (await demo.get(f"/fai/run/{flow['runNo']}/gate", Q)).data
    assert gate == {"requiresFai": False, "faiPassed": False, "faiSigned": False, "faiWaived": False}


async def test_permissions(demo: Api, database: Database) -> None:
    flow = await ready_run(demo, database)
    expect(await demo.post(f"/fai/run/{flow['runNo']}", OP, json={"sampleQty": 1}), 403, "FORBIDDEN")
    expect(await demo.get("/fai", PL), 403, "FORBIDDEN")
    expect(await demo.get(f"/fai/run/{flow['runNo']}/gate", OP), 403, "FORBIDDEN")


# ---- create -----------------------------------------------------------------------------------------------


async def test_create_refusals(demo: Api, database: Database) -> None:
    api = demo
    expect(await create(api, "RUN-NOPE"), 404, "RUN_NOT_FOUND")
    flow = await ready_run(api, database, qty=1)
    run_no = flow["runNo"]
    expect(await api.post(f"/fai/run/{run_no}", Q, json={"sampleQty": 0}), 422, "VALIDATION_FAILED")
    expect(await create(api, run_no, 2), 400, "FAI_SAMPLE_UNITS_INSUFFICIENT")
    assert (await create(api, run_no)).status == 201
    expect(await create(api, run_no), 400, "FAI_ALREADY_EXISTS")
    await set_run_status(database, run_no, "AUTHORIZED")
    expect(await create(api, run_no), 400, "INVALID_RUN_STATUS")


async def test_create_refused_when_formal_readiness_has_not_passed(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    # Failing under the recorded check and under a fresh evaluation alike: equipment is down.
    await readiness(database, flow["runNo"], "FAILED")
    async with database.writer() as s, s.begin():
        await s.execute(
            update(TpmEquipment).where(TpmEquipment.equipment_code == "ST-AOI-01").values(status="REPAIR")
        )
    expect(await create(demo, flow["runNo"]), 400, "READINESS_CHECK_NOT_PASSED")
    async with database.reader() as s:
        assert await s.scalar(select(Inspection.id).where(Inspection.type == "FAI")) is None


async def test_items_prefilled_from_the_bound_template(demo: Api, database: Database) -> None:
    api = demo
    old = await ready_run(api, database)
    tpl = await api.post(
        "/fai-templates",
        Q,
        json={
            "code": "FAI-P1001",
            "name": "P-1001 first article",
            "productCode": "P-1001",
            "processType": "SMT",
            "items": [
                {"seq": 2, "itemName": "Silkscreen", "required": False},
                {"seq": 1, "itemName": "Solder joints", "itemSpec": "IPC-A-610 class 2", "required": True},
            ],
        },
    )
    assert tpl.status == 201, tpl.body
    bind = await api.patch("/routes/PCBA-STD-V1/fai-template", EN, json={"faiTemplateId": tpl.data["id"]})
    assert bind.status == 200, bind.body
    compiled = await api.post("/routes/PCBA-STD-V1/compile", EN)
    assert compiled.data["status"] == "READY" and compiled.data["versionNo"] == 2
    flow = await ready_run(api, database)
    r = await create(api, flow["runNo"])
    assert r.status == 201
    items = r.data["items"]
    assert [(i["itemName"], i["itemSpec"], i["result"], i["seq"], i["required"]) for i in items] == [
        ("Solder joints", "IPC-A-610 class 2", "NA", 1, True),
        ("Silkscreen", None, "NA", 2, False),
    ]
    assert r.data["faiTemplate"]["code"] == "FAI-P1001"
    fai_id = r.data["id"]
    assert (await api.post(f"/fai/{fai_id}/start", Q)).status == 200
    await trial(api, flow, flow["sns"][0])
    # Ours: PASS needs every required template item judged, and no FAIL item.
    expect(await complete(api, fai_id), 400, "FAI_REQUIRED_ITEMS_PENDING")
    joints = items[0]["id"]
    p = await api.patch(f"/fai/{fai_id}/items/{joints}", Q, json={"result": "FAIL", "actualValue": "bridge"})
    assert p.status == 200 and (p.data["result"], p.data["actualValue"]) == ("FAIL", "bridge")
    expect(await complete(api, fai_id), 400, "FAI_ITEMS_FAILED")
    p = await api.patch(f"/fai/{fai_id}/items/{joints}", Q, json={"result": "PASS", "actualValue": None})
    assert (p.data["result"], p.data["actualValue"]) == ("PASS", None)
    assert (await complete(api, fai_id)).data["status"] == "PASS"
    # A run created before the recompile keeps its frozen version, without the template.
    assert (await create(api, old["runNo"])).data["items"] == []


# ---- start ------------------------------------------------------------------------------------------------


async def test_start_refusals(demo: Api, database: Database) -> None:
    api = demo
    expect(await api.post("/fai/999999/start", Q), 404, "FAI_NOT_FOUND")
    flow = await ready_run(api, database)
    run_id = await _run_id(database, flow["runNo"])
    async with database.writer() as s, s.begin():
        oqc = Inspection(run_id=run_id, type="OQC", status="PENDING", sample_qty=1, data={})
        s.add(oqc)
        await s.flush()
        oqc_id = oqc.id
    expect(await api.post(f"/fai/{oqc_id}/start", Q), 400, "NOT_FAI_INSPECTION")
    expect(await api.get(f"/fai/{oqc_id}", Q), 400, "NOT_FAI_INSPECTION")

    fai_id = (await create(api, flow["runNo"])).data["id"]
    assert (await api.delete(f"/runs/{flow['runNo']}/units", PL)).status == 200
    expect(await api.post(f"/fai/{fai_id}/start", Q), 400, "FAI_UNITS_REQUIRED")
    assert (await api.post(f"/runs/{flow['runNo']}/generate-units", PL, json={"quantity": 1})).status == 200
    assert (await api.post(f"/fai/{fai_id}/start", Q)).status == 200
    expect(await api.post(f"/fai/{fai_id}/start", Q), 400, "INVALID_FAI_STATUS")


# ---- items / complete: inspecting and a finished trial --------------------------------------------------


async def test_items_and_complete_need_inspecting_and_a_finished_trial(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database, qty=3)
    a, b, c = flow["sns"]
    fai_id = (await create(api, flow["runNo"], 2)).data["id"]
    item = {"unitSn": a, "itemName": "Visual", "result": "PASS"}
    expect(await api.post(f"/fai/{fai_id}/items", Q, json=item), 400, "FAI_NOT_INSPECTING")
    expect(await complete(api, fai_id), 400, "FAI_NOT_INSPECTING")
    assert (await api.post(f"/fai/{fai_id}/start", Q)).status == 200
    expect(await api.post(f"/fai/{fai_id}/items", Q, json=item), 400, "FAI_TRIAL_NOT_STARTED")
    expect(await complete(api, fai_id), 400, "FAI_TRIAL_NOT_STARTED")
    r = await api.post(
        f"/stations/{PRINT}/track-in", OP, json={"sn": a, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200
    expect(await api.post(f"/fai/{fai_id}/items", Q, json=item), 400, "FAI_TRIAL_REQUIRED")  # still inside
    r = await api.post(
        f"/stations/{PRINT}/track-out", OP, json={"sn": a, "runNo": flow["runNo"], "result": "PASS"}
    )
    assert r.status == 200
    expect(await complete(api, fai_id), 400, "FAI_TRIAL_REQUIRED")  # 1 of 2
    await trial(api, flow, b)
    expect(  # the trial is limited to sampleQty units
        await api.post(
            f"/stations/{PRINT}/track-in", OP, json={"sn": c, "woNo": flow["woNo"], "runNo": flow["runNo"]}
        ),
        400,
        "FAI_TRIAL_LIMIT_REACHED",
    )
    added = await api.post(f"/fai/{fai_id}/items", Q, json=item)
    assert added.status == 201 and added.data["unitSn"] == a
    expect(
        await api.post(f"/fai/{fai_id}/items", Q, json={**item, "unitSn": "SN-NOPE"}), 404, "UNIT_NOT_FOUND"
    )
    other = await released_run(api)
    expect(
        await api.post(f"/fai/{fai_id}/items", Q, json={**item, "unitSn": other["sns"][0]}),
        400,
        "UNIT_RUN_MISMATCH",
    )
    expect(
        await api.post(f"/fai/{fai_id}/items", Q, json={**item, "result": "MAYBE"}), 422, "VALIDATION_FAILED"
    )
    item_id = added.data["itemId"]
    expect(await api.patch(f"/fai/{fai_id}/items/999999", Q, json={"remark": "x"}), 404, "FAI_ITEM_NOT_FOUND")
    p = await api.patch(f"/fai/{fai_id}/items/{item_id}", Q, json={"remark": "checked twice"})
    assert p.status == 200 and p.data["remark"] == "checked twice" and p.data["result"] == "PASS"
    assert (await complete(api, fai_id)).data["passedQty"] == 2
    expect(
        await api.patch(f"/fai/{fai_id}/items/{item_id}", Q, json={"remark": "late"}),
        400,
        "FAI_NOT_INSPECTING",
    )
    expect(await api.post(f"/fai/{fai_id}/items", Q, json=item), 400, "FAI_NOT_INSPECTING")
    expect(await complete(api, fai_id), 400, "FAI_NOT_INSPECTING")


async def test_count_rule(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database, qty=2)
    fai_id = await started(api, flow, 2)
    for sn in flow["sns"]:
        await trial(api, flow, sn)
    for decision, extra in [
        ("PASS", {"passedQty": 1}),
        ("PASS", {"failedQty": 1}),
        ("PASS", {"passedQty": 2, "failedQty": 1}),
        ("FAIL", {}),
        ("FAIL", {"failedQty": 0}),
        ("FAIL", {"passedQty": 2, "failedQty": 1}),
        ("FAIL", {"failedQty": 3}),
    ]:
        expect(await complete(api, fai_id, decision, **extra), 400, "INVALID_FAI_COUNTS")
    ok = await complete(api, fai_id, "FAIL", failedQty=1, remark="one bridged joint")
    assert ok.status == 200 and ok.data["status"] == "FAIL", ok.body
    assert (ok.data["passedQty"], ok.data["failedQty"], ok.data["remark"]) == (1, 1, "one bridged joint")


async def test_pass_refused_while_spi_or_aoi_failures_exist(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database)
    sn = flow["sns"][0]
    fai_id = await started(api, flow)
    await trial(api, flow, sn)
    async with database.writer() as s, s.begin():
        s.add(
            InspectionResultRecord(
                event_id="evt-aoi-fail",
                event_time=utcnow(),
                run_id=await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"])),
                run_no=flow["runNo"],
                station_code="ST-AOI-01",
                unit_sn=sn,
                step_no=5,
                inspection_type="AOI",
                result="FAIL",
                defects=[{"code": "AOI-MISSING"}],
                source="AUTO",
                received_at=utcnow(),
                meta={},
            )
        )
    expect(await complete(api, fai_id), 400, "INSPECTION_FAILURES_EXIST")
    assert (await complete(api, fai_id, "FAIL", failedQty=1)).data["status"] == "FAIL"


# ---- sign and the authorization gate ---------------------------------------------------------------------


async def test_sign_refusals_and_fai_not_signed_on_authorize(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database)
    fai_id = await started(api, flow)
    expect(await api.post(f"/fai/{fai_id}/sign", Q, json={}), 400, "FAI_NOT_PASSED")
    await trial(api, flow, flow["sns"][0])
    assert (await complete(api, fai_id)).status == 200
    expect(await authorize(api, flow["runNo"]), 400, "FAI_NOT_SIGNED")
    gate = (await api.get(f"/fai/run/{flow['runNo']}/gate", Q)).data
    assert (gate["faiPassed"], gate["faiSigned"], gate["faiStatus"]) == (True, False, "PASS")
    assert (await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "ok"})).status == 200
    expect(await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "again"}), 400, "FAI_ALREADY_SIGNED")
    assert (await authorize(api, flow["runNo"])).data["status"] == "AUTHORIZED"


async def test_a_failed_fai_then_a_new_one(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database, qty=2)
    a, b = flow["sns"]
    first = await started(api, flow)
    await trial(api, flow, a, result="FAIL")
    failed = await complete(api, first, "FAIL", failedQty=1)
    assert failed.data["status"] == "FAIL" and failed.data["runStatus"] == "PREP"
    expect(await api.post(f"/fai/{first}/sign", Q), 400, "FAI_NOT_PASSED")
    expect(await authorize(api, flow["runNo"]), 400, "FAI_NOT_PASSED")
    async with database.reader() as s:
        assert (await s.get(Inspection, first)).active_key is None  # type: ignore[union-attr]

    second = await passed_and_signed(api, flow, b)
    assert second != first
    assert (await api.get(f"/fai/run/{flow['runNo']}", Q)).data["id"] == second
    assert (await api.get("/fai", Q, params={"runNo": flow["runNo"]})).data["total"] == 2
    assert (await authorize(api, flow["runNo"])).data["status"] == "AUTHORIZED"


# ---- seed-contract aliases ---------------------------------------------------------------------------------


async def test_seed_contract_aliases(demo: Api, database: Database) -> None:
    api = demo
    flow = await ready_run(api, database)
    run_no, sn = flow["runNo"], flow["sns"][0]
    item = {"unitSn": sn, "itemName": "Visual Inspection", "result": "PASS"}
    expect(await api.post(f"/runs/{run_no}/fai/inspect", Q, json=item), 404, "FAI_NOT_FOUND")
    r = await api.post(f"/runs/{run_no}/fai", Q, json={"sampleQty": 1})
    assert r.status == 201 and r.data["status"] == "PENDING"
    expect(await api.post(f"/runs/{run_no}/fai", Q, json={"sampleQty": 1}), 400, "FAI_ALREADY_EXISTS")
    expect(await api.post(f"/runs/{run_no}/fai/inspect", Q, json=item), 400, "FAI_NOT_INSPECTING")
    assert (await api.post(f"/fai/{r.data['id']}/start", Q)).status == 200
    expect(await api.post(f"/runs/{run_no}/fai/inspect", Q, json=item), 400, "FAI_TRIAL_NOT_STARTED")
    await trial(api, flow, sn)
    added = await api.post(f"/runs/{run_no}/fai/inspect", Q, json=item)
    assert added.status == 201 and added.data["faiId"] == r.data["id"] and added.data["itemId"]
    expect(await api.post(f"/runs/{run_no}/fai", OP, json={"sampleQty": 1}), 403, "FORBIDDEN")
