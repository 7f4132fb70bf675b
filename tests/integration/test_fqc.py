"""FQC, the last-piece inspection (domain.md §7.2, §3 Inspection) over HTTP: create guards, start, items,
count rule, sign, reads; an FQC never changes the run's status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import Inspection, Run, Unit
from tests.client import Api
from tests.flows import OP, PL, Q, authorized_run, set_run_status
from tests.integration.test_oqc import audit_actions, auto_oqc, demo, done_run, expect, run_of, set_units

__all__ = ["demo"]


async def create(api: Api, run_no: str, **body: Any) -> Any:
    return await api.post(f"/fqc/run/{run_no}", Q, json=body)


async def started(
    api: Api, database: Database, qty: int = 2, **body: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    flow = await done_run(api, database, qty=qty)
    r = await create(api, flow["runNo"], **body)
    assert r.status == 201, r.body
    s = await api.post(f"/fqc/{r.data['id']}/start", Q)
    assert s.status == 200 and s.data["status"] == "INSPECTING", s.body
    return flow, s.data


async def complete(api: Api, fqc_id: int, decision: str = "PASS", **extra: Any) -> Any:
    return await api.post(f"/fqc/{fqc_id}/complete", Q, json={"decision": decision, **extra})


# ---- create --------------------------------------------------------------------------------------------


async def test_create_defaults_to_one_unit_and_leaves_the_run_alone(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database, qty=2)
    r = await demo.post(f"/fqc/run/{flow['runNo']}", Q)  # no body at all
    assert r.status == 201, r.body
    d = r.data
    assert (d["type"], d["status"], d["sampleQty"], d["runNo"], d["runStatus"]) == (
        "FQC",
        "PENDING",
        1,
        flow["runNo"],
        "IN_PROGRESS",
    )
    assert d["items"] == [] and d["signedBy"] is None
    assert (await run_of(demo, flow["runNo"]))["status"] == "IN_PROGRESS"
    expect(await create(demo, flow["runNo"]), 400, "FQC_ALREADY_EXISTS")
    assert await audit_actions(database, d["id"]) == ["FQC_CREATE"]


async def test_create_on_finished_and_held_runs(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database, qty=3)
    for status in ("ON_HOLD", "COMPLETED", "CLOSED_REWORK", "SCRAPPED"):
        await set_run_status(database, flow["runNo"], status)
        r = await create(demo, flow["runNo"], sampleQty=3, remark=status)
        assert r.status == 201 and r.data["sampleQty"] == 3 and r.data["runStatus"] == status, r.body
        s = await demo.post(f"/fqc/{r.data['id']}/start", Q)
        assert (await complete(demo, s.data["id"])).status == 200  # clears the active key
        assert (await run_of(demo, flow["runNo"]))["status"] == status


async def test_create_refusals_in_order(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    run_no = flow["runNo"]
    expect(await create(demo, run_no), 400, "INVALID_RUN_STATUS")  # AUTHORIZED
    await set_run_status(database, run_no, "PREP")
    expect(await create(demo, run_no), 400, "INVALID_RUN_STATUS")
    await set_run_status(database, run_no, "IN_PROGRESS")
    expect(await create(demo, run_no), 400, "FQC_NOT_READY")  # QUEUED units
    await set_units(database, flow["sns"][:1], status="DONE")
    await set_units(database, flow["sns"][1:], status="OUT_FAILED")
    expect(await create(demo, run_no), 400, "FQC_NOT_READY")
    await set_units(database, flow["sns"], status="SCRAPPED")
    expect(await create(demo, run_no), 400, "NO_ELIGIBLE_UNITS")
    await set_units(database, flow["sns"][:1], status="DONE")
    for qty in (0, -3, 2):  # one DONE unit
        expect(await create(demo, run_no, sampleQty=qty), 400, "INVALID_SAMPLE_QTY")
    assert (await create(demo, run_no, sampleQty=1)).status == 201
    expect(await create(demo, "RUN-NOPE"), 404, "RUN_NOT_FOUND")
    expect(await demo.post(f"/fqc/run/{run_no}", PL, json={}), 403, "FORBIDDEN")


async def test_create_without_units_is_not_ready(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn.in_(flow["sns"])).values(run_id=None))
    await set_run_status(database, flow["runNo"], "COMPLETED")
    expect(await create(demo, flow["runNo"]), 400, "FQC_NOT_READY")


# ---- start, items, complete, sign ----------------------------------------------------------------------


async def test_start_only_from_pending(demo: Api, database: Database) -> None:
    _, fqc = await started(demo, database)
    assert fqc["inspectorId"] and fqc["startedAt"]
    expect(await demo.post(f"/fqc/{fqc['id']}/start", Q), 400, "INVALID_FQC_STATUS")
    assert "FQC_START" in await audit_actions(database, fqc["id"])


async def test_items(demo: Api, database: Database) -> None:
    flow = await done_run(demo, database, qty=2)
    fqc = (await create(demo, flow["runNo"])).data
    item = {"itemName": "Last piece visual", "result": "PASS"}
    expect(await demo.post(f"/fqc/{fqc['id']}/items", Q, json=item), 400, "FQC_NOT_INSPECTING")
    assert (await demo.post(f"/fqc/{fqc['id']}/start", Q)).status == 200
    r = await demo.post(f"/fqc/{fqc['id']}/items", Q, json=item)  # unitSn optional
    assert r.status == 201 and r.data["unitSn"] is None and r.data["inspectionId"] == fqc["id"], r.body
    with_sn = await demo.post(f"/fqc/{fqc['id']}/items", Q, json={**item, "unitSn": flow["sns"][1]})
    assert with_sn.status == 201 and with_sn.data["unitSn"] == flow["sns"][1]
    other = await authorized_run(demo, database)
    expect(
        await demo.post(f"/fqc/{fqc['id']}/items", Q, json={**item, "unitSn": "SN-NOPE"}),
        404,
        "UNIT_NOT_FOUND",
    )
    r2 = await demo.post(f"/fqc/{fqc['id']}/items", Q, json={**item, "unitSn": other["sns"][0]})
    expect(r2, 400, "UNIT_RUN_MISMATCH")
    p = await demo.patch(
        f"/fqc/{fqc['id']}/items/{r.data['id']}", Q, json={"actualValue": "ok", "result": None}
    )
    assert p.status == 200 and (p.data["actualValue"], p.data["result"]) == ("ok", "PASS")
    expect(
        await demo.patch(f"/fqc/{fqc['id']}/items/999999", Q, json={"remark": "x"}), 404, "FQC_ITEM_NOT_FOUND"
    )
    d = (await demo.get(f"/fqc/{fqc['id']}", Q)).data
    assert [i["id"] for i in d["items"]] == [r.data["id"], with_sn.data["id"]]
    assert {"FQC_ITEM_ADD", "FQC_ITEM_UPDATE"} <= set(await audit_actions(database, fqc["id"]))


async def test_count_rule_and_pass(demo: Api, database: Database) -> None:
    flow, fqc = await started(demo, database, qty=3, sampleQty=2)
    for body in (
        {"decision": "PASS", "failedQty": 1},
        {"decision": "PASS", "passedQty": 3},
        {"decision": "FAIL"},
        {"decision": "FAIL", "failedQty": 2, "passedQty": 1},
    ):
        expect(await demo.post(f"/fqc/{fqc['id']}/complete", Q, json=body), 400, "INVALID_FQC_COUNTS")
    r = await complete(demo, fqc["id"], passedQty=2)
    assert r.status == 200 and (r.data["status"], r.data["passedQty"], r.data["failedQty"]) == ("PASS", 2, 0)
    assert r.data["decidedBy"] and r.data["decidedAt"] and r.data["runStatus"] == "IN_PROGRESS"
    expect(await complete(demo, fqc["id"]), 400, "FQC_NOT_INSPECTING")
    async with database.reader() as s:
        assert (await s.get(Inspection, fqc["id"])).active_key is None
    again = await create(demo, flow["runNo"])  # a new FQC is possible once the last one is decided
    assert again.status == 201 and again.data["id"] != fqc["id"]


async def test_pass_refused_with_a_failed_item_and_fail_kept(demo: Api, database: Database) -> None:
    _, fqc = await started(demo, database)
    item = {"itemName": "Visual", "result": "FAIL", "defectCode": "SCRATCH"}
    assert (await demo.post(f"/fqc/{fqc['id']}/items", Q, json=item)).status == 201
    expect(await complete(demo, fqc["id"]), 400, "FQC_ITEMS_FAILED")
    r = await complete(demo, fqc["id"], "FAIL", failedQty=1)
    assert r.status == 200 and r.data["status"] == "FAIL" and r.data["runStatus"] == "IN_PROGRESS"
    expect(await demo.post(f"/fqc/{fqc['id']}/sign", Q, json={}), 400, "FQC_NOT_PASSED")


async def test_sign_once_after_pass(demo: Api, database: Database) -> None:
    _, fqc = await started(demo, database)
    expect(await demo.post(f"/fqc/{fqc['id']}/sign", Q), 400, "FQC_NOT_PASSED")  # INSPECTING
    assert (await complete(demo, fqc["id"])).status == 200
    r = await demo.post(f"/fqc/{fqc['id']}/sign", Q, json={"remark": "signed off"})
    assert r.status == 200 and r.data["status"] == "PASS", r.body
    assert r.data["signedBy"] and r.data["signedAt"] and r.data["signatureRemark"] == "signed off"
    expect(await demo.post(f"/fqc/{fqc['id']}/sign", Q), 400, "FQC_ALREADY_SIGNED")
    assert "FQC_SIGN" in await audit_actions(database, fqc["id"])


# ---- reads ---------------------------------------------------------------------------------------------


async def test_reads(demo: Api, database: Database) -> None:
    flow, fqc = await started(demo, database)
    latest = await demo.get(f"/fqc/run/{flow['runNo']}", Q)
    assert latest.status == 200 and latest.data["id"] == fqc["id"]
    page = await demo.get("/fqc", Q, params={"runNo": flow["runNo"], "status": "INSPECTING"})
    assert page.data["total"] == 1 and page.data["items"][0]["id"] == fqc["id"]
    assert (await demo.get("/fqc", Q, params={"status": "PASS"})).data["total"] == 0
    expect(await demo.get(f"/fqc/{fqc['id']}", PL), 403, "FORBIDDEN")
    expect(await demo.get("/fqc", OP), 403, "FORBIDDEN")
    expect(await demo.get("/fqc/999999", Q), 404, "FQC_NOT_FOUND")
    bare = await done_run(demo, database)
    expect(await demo.get(f"/fqc/run/{bare['runNo']}", Q), 404, "FQC_NOT_FOUND")
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        fai_id = await s.scalar(
            select(Inspection.id).where(Inspection.run_id == run_id, Inspection.type == "FAI")
        )
    expect(await demo.get(f"/fqc/{fai_id}", Q), 400, "NOT_FQC_INSPECTION")
    _, oqc = await auto_oqc(demo, database)
    expect(await demo.post(f"/fqc/{oqc['id']}/start", Q), 400, "NOT_FQC_INSPECTION")
    expect(await demo.get(f"/oqc/{fqc['id']}", Q), 400, "NOT_OQC_INSPECTION")
