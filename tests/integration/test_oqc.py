"""OQC (domain.md §7.4, §3 Inspection, Run IN_PROGRESS→COMPLETED|ON_HOLD) over HTTP: the automatic OQC of the
close-out, manual creation, start, items against the sample, the count rule, the run transitions and the gate.

The helpers at the top are shared with test_fqc.py, test_sampling_rules.py and e2e/test_s2_closeout.py."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import oqc as oqc_handlers
from central.config import Settings
from central.db.engine import Database
from central.db.models import AuditEvent, Inspection, Run, Unit
from tests.client import Api
from tests.flows import OP, PL, SMT_STATIONS, Q, authorized_run, move, seed, set_run_status

LAST = SMT_STATIONS[-1]


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The demo plant and the app with the quality router (added here only while it is not in ROUTERS)."""
    extra = [] if oqc_handlers.router in ROUTERS else [oqc_handlers.router]
    client: TestClient = await aiohttp_client(create_app(settings, database=database, extra_routers=extra))
    await seed(database)
    return Api(client)


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def add_rule(api: Api, **body: Any) -> int:
    r = await api.post("/oqc/sampling-rules", Q, json={"samplingType": "FIXED", "sampleValue": 1, **body})
    assert r.status == 201, r.body
    return int(r.data["id"])


async def set_units(database: Database, sns: list[str], **values: Any) -> None:
    """Unit states without their workflows (scrap dispositions have their own tests)."""
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn.in_(sns)).values(**values))


async def done_run(api: Api, database: Database, qty: int = 2, scrapped: int = 0) -> dict[str, Any]:
    """An IN_PROGRESS run whose units are all terminal, written directly so that no close-out has run."""
    flow = await authorized_run(api, database, qty=qty)
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    await set_units(database, flow["sns"][:scrapped], status="SCRAPPED", current_step_no=5)
    await set_units(database, flow["sns"][scrapped:], status="DONE", current_step_no=5)
    return flow


async def finish_last(api: Api, database: Database, qty: int = 2, scrapped: int = 0) -> dict[str, Any]:
    """A run whose units but the last are terminal; the last one's track-out at AOI triggers the close-out."""
    flow = await authorized_run(api, database, qty=qty)
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    *others, last = flow["sns"]
    await set_units(database, others[:scrapped], status="SCRAPPED", current_step_no=5)
    await set_units(database, others[scrapped:], status="DONE", current_step_no=5)
    await set_units(database, [last], current_step_no=5)
    r = await move(api, LAST, last, flow)
    assert r.status == 200 and r.data["status"] == "DONE", r.body
    return flow


async def run_of(api: Api, run_no: str) -> dict[str, Any]:
    r = await api.get(f"/runs/{run_no}", PL)
    assert r.status == 200, r.body
    return r.data


async def audit_actions(database: Database, entity_id: int, entity_type: str = "INSPECTION") -> list[str]:
    async with database.reader() as s:
        rows = await s.scalars(
            select(AuditEvent.action)
            .where(
                AuditEvent.entity_type == entity_type,
                AuditEvent.entity_id == str(entity_id),
                AuditEvent.status == "SUCCESS",
            )
            .order_by(AuditEvent.id)
        )
        return list(rows)


async def auto_oqc(
    api: Api, database: Database, qty: int = 2, **rule: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A rule for P-1001 (FIXED 1 by default), then a run whose last track-out creates its OQC."""
    await add_rule(api, productCode="P-1001", **rule)
    flow = await finish_last(api, database, qty=qty)
    r = await api.get(f"/oqc/run/{flow['runNo']}", Q)
    assert r.status == 200, r.body
    return flow, r.data


async def started_oqc(
    api: Api, database: Database, qty: int = 2, **rule: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    flow, oqc = await auto_oqc(api, database, qty, **rule)
    s = await api.post(f"/oqc/{oqc['id']}/start", Q)
    assert s.status == 200 and s.data["status"] == "INSPECTING", s.body
    return flow, s.data


def unsampled(flow: dict[str, Any], oqc: dict[str, Any]) -> list[str]:
    return [sn for sn in flow["sns"] if sn not in oqc["sampledSns"]]


async def complete(api: Api, oqc_id: int, decision: str = "PASS", **extra: Any) -> Any:
    return await api.post(f"/oqc/{oqc_id}/complete", Q, json={"decision": decision, **extra})


# ---- the automatic OQC and reads -----------------------------------------------------------------------


async def test_last_track_out_creates_a_pending_oqc_visible_over_http(demo: Api, database: Database) -> None:
    rule_id = await add_rule(demo, productCode="P-1001", samplingType="PERCENTAGE", sampleValue=50)
    flow = await finish_last(demo, database, qty=3)
    r = await demo.get(f"/oqc/run/{flow['runNo']}", Q)
    assert r.status == 200, r.body
    d = r.data
    assert (d["type"], d["status"], d["sampleQty"], d["runNo"], d["runStatus"]) == (
        "OQC",
        "PENDING",
        2,  # ceil(3 × 50 %)
        flow["runNo"],
        "IN_PROGRESS",
    )
    assert (d["samplingRuleId"], d["samplingType"], d["samplingValue"]) == (rule_id, "PERCENTAGE", 50)
    assert (
        len(d["sampledUnitIds"]) == 2
        and len(d["sampledSns"]) == 2
        and set(d["sampledSns"]) <= set(flow["sns"])
    )
    assert d["items"] == [] and d["inspectorId"] is None and d["data"]["source"] == "AUTO"
    assert (await demo.get(f"/oqc/{d['id']}", Q)).data == d
    page = await demo.get("/oqc", Q, params={"runNo": flow["runNo"]})
    assert page.status == 200 and page.data["total"] == 1 and page.data["items"][0]["id"] == d["id"]
    assert (await demo.get("/oqc", Q, params={"status": "PASS"})).data["total"] == 0
    assert "OQC_CREATE" in await audit_actions(database, d["id"])


async def test_sampled_units_exclude_scrapped_units(demo: Api, database: Database) -> None:
    await add_rule(demo, productCode="P-1001", samplingType="PERCENTAGE", sampleValue=100)
    flow = await finish_last(demo, database, qty=4, scrapped=2)
    d = (await demo.get(f"/oqc/run/{flow['runNo']}", Q)).data
    assert d["sampleQty"] == 2 and sorted(d["sampledSns"]) == sorted(flow["sns"][2:])


async def test_reads_refuse_unknown_and_foreign_inspections(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database)
    expect(await demo.get(f"/oqc/run/{flow['runNo']}", Q), 404, "OQC_NOT_FOUND")
    expect(await demo.get("/oqc/run/RUN-NOPE", Q), 404, "RUN_NOT_FOUND")
    expect(await demo.get("/oqc/999999", Q), 404, "OQC_NOT_FOUND")
    expect(await demo.get("/oqc/abc", Q), 404, "OQC_NOT_FOUND")
    async with database.reader() as s:  # authorized_run recorded an FAI
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        fai_id = await s.scalar(
            select(Inspection.id).where(Inspection.run_id == run_id, Inspection.type == "FAI")
        )
    expect(await demo.get(f"/oqc/{fai_id}", Q), 400, "NOT_OQC_INSPECTION")
    expect(await demo.post(f"/oqc/{fai_id}/start", Q), 400, "NOT_OQC_INSPECTION")
    expect(await demo.post("/oqc/999999/start", Q), 404, "OQC_NOT_FOUND")


async def test_oqc_needs_quality_oqc(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database)
    for who in (PL, OP):
        expect(await demo.get("/oqc", who), 403, "FORBIDDEN")
        expect(await demo.post(f"/oqc/run/{flow['runNo']}", who, json={}), 403, "FORBIDDEN")


# ---- gate ----------------------------------------------------------------------------------------------


async def test_gate_without_rule_with_rule_and_after_pass(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database)
    g = await demo.get(f"/oqc/run/{flow['runNo']}/gate", Q)
    assert g.status == 200 and g.data == {"requiresOqc": False, "oqcPassed": False}
    flow, oqc = await started_oqc(demo, database)
    g = await demo.get(f"/oqc/run/{flow['runNo']}/gate", Q)
    assert g.data == {"requiresOqc": True, "oqcPassed": False, "oqcId": oqc["id"], "oqcStatus": "INSPECTING"}
    assert (await complete(demo, oqc["id"])).status == 200
    g = await demo.get(f"/oqc/run/{flow['runNo']}/gate", Q)
    assert g.data == {"requiresOqc": True, "oqcPassed": True, "oqcId": oqc["id"], "oqcStatus": "PASS"}
    expect(await demo.get("/oqc/run/RUN-NOPE/gate", Q), 404, "RUN_NOT_FOUND")


# ---- start, items --------------------------------------------------------------------------------------


async def test_start_only_from_pending(demo: Api, database: Database) -> None:
    _, oqc = await auto_oqc(demo, database)
    s = await demo.post(f"/oqc/{oqc['id']}/start", Q)
    assert (
        s.status == 200 and s.data["status"] == "INSPECTING" and s.data["inspectorId"] and s.data["startedAt"]
    )
    expect(await demo.post(f"/oqc/{oqc['id']}/start", Q), 400, "INVALID_OQC_STATUS")
    assert "OQC_START" in await audit_actions(database, oqc["id"])


async def test_items_need_an_inspecting_oqc_and_a_sampled_unit_of_the_run(
    demo: Api, database: Database
) -> None:
    flow, oqc = await auto_oqc(demo, database, qty=2)
    [sampled], [other] = oqc["sampledSns"], unsampled(flow, oqc)
    item = {"unitSn": sampled, "itemName": "OQC Visual", "result": "PASS"}
    expect(await demo.post(f"/oqc/{oqc['id']}/items", Q, json=item), 400, "OQC_NOT_INSPECTING")
    assert (await demo.post(f"/oqc/{oqc['id']}/start", Q)).status == 200
    foreign = await authorized_run(demo, database)
    for sn, status, code in (
        ("SN-NOPE", 404, "UNIT_NOT_FOUND"),
        (foreign["sns"][0], 400, "UNIT_RUN_MISMATCH"),
        (other, 400, "UNIT_NOT_IN_SAMPLE"),
    ):
        expect(await demo.post(f"/oqc/{oqc['id']}/items", Q, json={**item, "unitSn": sn}), status, code)
    no_sn = await demo.post(f"/oqc/{oqc['id']}/items", Q, json={"itemName": "x", "result": "PASS"})
    expect(no_sn, 422, "VALIDATION_FAILED")
    r = await demo.post(f"/oqc/{oqc['id']}/items", Q, json={**item, "actualValue": "ok"})
    assert r.status == 201, r.body
    assert (r.data["unitSn"], r.data["result"], r.data["inspectionId"]) == (sampled, "PASS", oqc["id"])
    assert r.data["itemId"] == r.data["id"]
    d = (await demo.get(f"/oqc/{oqc['id']}", Q)).data
    assert [i["id"] for i in d["items"]] == [r.data["id"]]
    assert "OQC_ITEM_ADD" in await audit_actions(database, oqc["id"])


async def test_patch_item(demo: Api, database: Database) -> None:
    flow, oqc = await started_oqc(demo, database, qty=2)
    [sampled], [other] = oqc["sampledSns"], unsampled(flow, oqc)
    r = await demo.post(
        f"/oqc/{oqc['id']}/items", Q, json={"unitSn": sampled, "itemName": "Visual", "result": "NA"}
    )
    item_id = r.data["id"]
    p = await demo.patch(
        f"/oqc/{oqc['id']}/items/{item_id}", Q, json={"result": "PASS", "unitSn": None, "remark": "ok"}
    )
    assert p.status == 200 and (p.data["result"], p.data["unitSn"], p.data["remark"]) == (
        "PASS",
        sampled,
        "ok",
    )
    expect(
        await demo.patch(f"/oqc/{oqc['id']}/items/{item_id}", Q, json={"unitSn": other}),
        400,
        "UNIT_NOT_IN_SAMPLE",
    )
    expect(
        await demo.patch(f"/oqc/{oqc['id']}/items/999999", Q, json={"result": "PASS"}),
        404,
        "OQC_ITEM_NOT_FOUND",
    )
    assert (await complete(demo, oqc["id"])).status == 200
    expect(
        await demo.patch(f"/oqc/{oqc['id']}/items/{item_id}", Q, json={"remark": "x"}),
        400,
        "OQC_NOT_INSPECTING",
    )


# ---- complete ------------------------------------------------------------------------------------------


async def test_count_rule(demo: Api, database: Database) -> None:
    _, oqc = await auto_oqc(demo, database, qty=3, sampleValue=2)
    expect(await complete(demo, oqc["id"]), 400, "OQC_NOT_INSPECTING")
    assert (await demo.post(f"/oqc/{oqc['id']}/start", Q)).status == 200
    for body in (
        {"decision": "PASS", "failedQty": 1},
        {"decision": "PASS", "passedQty": 1},
        {"decision": "FAIL"},
        {"decision": "FAIL", "failedQty": 0},
        {"decision": "FAIL", "failedQty": 1, "passedQty": 2},
        {"decision": "FAIL", "failedQty": 3},
    ):
        expect(await demo.post(f"/oqc/{oqc['id']}/complete", Q, json=body), 400, "INVALID_OQC_COUNTS")
    r = await complete(demo, oqc["id"], "FAIL", failedQty=1)
    assert r.status == 200 and (r.data["passedQty"], r.data["failedQty"]) == (
        1,
        1,
    )  # passed = sample − failed


async def test_pass_completes_the_run_and_clears_the_active_key(demo: Api, database: Database) -> None:
    flow, oqc = await started_oqc(demo, database)
    before = await run_of(demo, flow["runNo"])
    assert before["status"] == "IN_PROGRESS" and before["endedAt"] is None
    r = await complete(demo, oqc["id"], remark="all good")
    assert r.status == 200, r.body
    d = r.data
    assert (d["status"], d["passedQty"], d["failedQty"], d["remark"], d["runStatus"]) == (
        "PASS",
        1,
        0,
        "all good",
        "COMPLETED",
    )
    assert d["decidedBy"] and d["decidedAt"]
    run = await run_of(demo, flow["runNo"])
    assert run["status"] == "COMPLETED" and run["endedAt"]
    async with database.reader() as s:
        assert (await s.get(Inspection, oqc["id"])).active_key is None
    expect(await complete(demo, oqc["id"]), 400, "OQC_NOT_INSPECTING")
    assert (await demo.post(f"/runs/{flow['runNo']}/close", PL)).data["status"] == "COMPLETED"
    assert {"OQC_START", "OQC_COMPLETE"} <= set(await audit_actions(database, oqc["id"]))
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
    assert "RUN_COMPLETE" in await audit_actions(database, run_id, "RUN")


async def test_fail_puts_the_run_on_hold(demo: Api, database: Database) -> None:
    flow, oqc = await started_oqc(demo, database)
    [sampled] = oqc["sampledSns"]
    item = {"unitSn": sampled, "itemName": "Visual", "result": "FAIL", "defectCode": "SCRATCH"}
    assert (await demo.post(f"/oqc/{oqc['id']}/items", Q, json=item)).status == 201
    r = await complete(demo, oqc["id"], "FAIL", failedQty=1)
    assert r.status == 200 and r.data["status"] == "FAIL" and r.data["runStatus"] == "ON_HOLD", r.body
    run = await run_of(demo, flow["runNo"])
    assert run["status"] == "ON_HOLD" and run["endedAt"] is None
    expect(await demo.post(f"/runs/{flow['runNo']}/close", PL), 400, "RUN_NOT_CLOSABLE")
    g = await demo.get(f"/oqc/run/{flow['runNo']}/gate", Q)
    assert g.data["oqcPassed"] is False and g.data["oqcStatus"] == "FAIL"
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
    assert "RUN_HOLD" in await audit_actions(database, run_id, "RUN")


async def test_pass_refused_with_a_failed_item(demo: Api, database: Database) -> None:
    _, oqc = await started_oqc(demo, database)
    [sampled] = oqc["sampledSns"]
    item = {"unitSn": sampled, "itemName": "Visual", "result": "FAIL"}
    assert (await demo.post(f"/oqc/{oqc['id']}/items", Q, json=item)).status == 201
    expect(await complete(demo, oqc["id"]), 400, "OQC_ITEMS_FAILED")


async def test_complete_refused_when_the_run_left_in_progress(demo: Api, database: Database) -> None:
    flow, oqc = await started_oqc(demo, database)
    await set_run_status(database, flow["runNo"], "ON_HOLD")
    expect(await complete(demo, oqc["id"]), 400, "INVALID_RUN_STATUS")
    d = (await demo.get(f"/oqc/{oqc['id']}", Q)).data
    assert d["status"] == "INSPECTING"


# ---- manual create -------------------------------------------------------------------------------------


async def test_manual_create_defaults_to_every_done_unit(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database, qty=3, scrapped=1)
    r = await demo.post(f"/oqc/run/{flow['runNo']}", Q, json={"remark": "customer request"})
    assert r.status == 201, r.body
    d = r.data
    assert (d["status"], d["sampleQty"], d["remark"], d["samplingRuleId"]) == (
        "PENDING",
        2,
        "customer request",
        None,
    )
    assert sorted(d["sampledSns"]) == sorted(flow["sns"][1:]) and d["data"]["source"] == "MANUAL"
    again = await demo.post(f"/oqc/run/{flow['runNo']}", Q)  # no body: the active OQC comes back
    assert again.status == 201 and again.data["id"] == d["id"]
    assert (await demo.get("/oqc", Q, params={"runNo": flow["runNo"]})).data["total"] == 1
    assert await audit_actions(database, d["id"]) == ["OQC_CREATE"]


async def test_manual_create_with_a_sample_qty(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database, qty=3)
    r = await demo.post(f"/oqc/run/{flow['runNo']}", Q, json={"sampleQty": 1})
    assert r.status == 201 and r.data["sampleQty"] == 1 and len(r.data["sampledSns"]) == 1, r.body
    assert (r.data["samplingType"], r.data["samplingValue"]) == ("FIXED", 1)


async def test_manual_create_refusals(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    post = lambda body=None: demo.post(f"/oqc/run/{flow['runNo']}", Q, json=body or {})  # noqa: E731
    expect(await post(), 400, "INVALID_RUN_STATUS")  # AUTHORIZED
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    expect(await post(), 400, "OQC_NOT_READY")  # units QUEUED
    await set_units(database, flow["sns"][:1], status="DONE")
    expect(await post(), 400, "OQC_NOT_READY")  # one still QUEUED
    await set_units(database, flow["sns"], status="SCRAPPED")
    expect(await post(), 400, "NO_ELIGIBLE_UNITS")
    await set_units(database, flow["sns"], status="DONE")
    for qty in (0, -1, 3):
        expect(await post({"sampleQty": qty}), 400, "INVALID_SAMPLE_QTY")
    for status in ("ON_HOLD", "COMPLETED"):
        await set_run_status(database, flow["runNo"], status)
        expect(await post(), 400, "INVALID_RUN_STATUS")
    expect(await demo.post("/oqc/run/RUN-NOPE", Q, json={}), 404, "RUN_NOT_FOUND")
    async with database.reader() as s:
        fails = list(await s.scalars(select(AuditEvent.error_code).where(AuditEvent.action == "OQC_CREATE")))
    assert "OQC_NOT_READY" in fails and "INVALID_SAMPLE_QTY" in fails


async def test_manual_create_without_units_is_not_ready(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn.in_(flow["sns"])).values(run_id=None))
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    expect(await demo.post(f"/oqc/run/{flow['runNo']}", Q, json={}), 400, "OQC_NOT_READY")
