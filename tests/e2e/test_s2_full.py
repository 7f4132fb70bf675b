"""S2 end to end over HTTP on the demo plant, every step through the API: compile, work order, run, units,
loading with a wrong and a right lot, FORMAL readiness with 12 items, FAI with a trial, sign, authorize,
execution through the five LINE-A stations, trace and close-out (no OQC rule: OQC is its own issue)."""

from __future__ import annotations

import time

from central.db.engine import Database
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, Q, seed

M = "material@example.com"


async def test_s2_smt_happy_path_end_to_end(api: Api, database: Database) -> None:
    await seed(database)
    ts = int(time.time() * 1000)
    assert (await api.post("/routes/PCBA-STD-V1/compile", EN)).data["status"] == "READY"
    wo = "WO-S2-FULL"
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={
            "woNo": wo,
            "productCode": "P-1001",
            "plannedQty": 100,
            "routingCode": "PCBA-STD-V1",
            "pickStatus": "2",
        },
    )
    assert r.data["status"] == "RECEIVED"
    assert (await api.post(f"/work-orders/{wo}/release", PL, json={"lineCode": "LINE-A"})).data[
        "status"
    ] == "RELEASED"
    run = await api.post(f"/work-orders/{wo}/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    run_no = run.data["runNo"]
    assert run.data["status"] == "PREP"
    # The asynchronous-in-the-reference PRECHECK is recorded with the run.
    pre = await api.get(f"/runs/{run_no}/readiness/latest", Q, params={"type": "PRECHECK"})
    assert pre.status == 200
    units = await api.post(
        f"/runs/{run_no}/generate-units", PL, json={"quantity": 1, "snPrefix": f"SN-{run_no}-"}
    )
    sn = units.data["units"][0]["sn"]

    # Loading: one PENDING expectation, a wrong lot (200 FAIL), then the right one.
    table = await api.post(f"/runs/{run_no}/loading/load-table", M)
    assert table.status == 200 and table.data["created"] == 1
    wrong = await api.post(
        "/loading/verify",
        M,
        json={
            "runNo": run_no,
            "slotCode": "SLOT-01",
            "materialLotBarcode": f"WRONG-MAT|LOT-{ts}",
            "operatorId": "OP-01",
        },
    )
    assert wrong.status == 200 and wrong.data["verifyResult"] == "FAIL" and wrong.data["status"] == "UNLOADED"
    assert wrong.data["failReason"]
    exp = (await api.get(f"/runs/{run_no}/loading/expectations", M)).data
    exp_items = exp["items"] if isinstance(exp, dict) else exp
    assert exp_items[0]["status"] == "MISMATCH"
    right = await api.post(
        "/loading/verify",
        M,
        json={
            "runNo": run_no,
            "slotCode": "SLOT-01",
            "materialLotBarcode": f"MAT-001|LOT-{ts}",
            "operatorId": "OP-01",
        },
    )
    assert right.data["verifyResult"] == "PASS" and right.data["status"] == "LOADED"

    # Readiness: 12 items, all PASSED.
    check = await api.post(f"/runs/{run_no}/readiness/check", Q)
    assert check.data["type"] == "FORMAL" and check.data["status"] == "PASSED"
    assert check.data["summary"] == {"total": 12, "passed": 12, "failed": 0, "waived": 0}
    kinds = [i["itemType"] for i in check.data["items"]]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "EQUIPMENT": 5,
        "MATERIAL": 3,
        "ROUTE": 1,
        "STENCIL": 1,
        "SOLDER_PASTE": 1,
        "LOADING": 1,
    }
    refused = await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert (refused.status, refused.code) == (400, "FAI_NOT_PASSED")

    # FAI with a trial at the first station.
    gate = (await api.get(f"/fai/run/{run_no}/gate", Q)).data
    assert gate["requiresFai"] is True and gate["faiPassed"] is False and gate["faiSigned"] is False
    fai = await api.post(f"/fai/run/{run_no}", Q, json={"sampleQty": 1})
    assert fai.status == 201 and fai.data["status"] == "PENDING"
    fai_id = fai.data["id"]
    assert (await api.post(f"/fai/{fai_id}/start", Q)).data["status"] == "INSPECTING"
    tin = await api.post("/stations/ST-PRINT-01/track-in", OP, json={"sn": sn, "woNo": wo, "runNo": run_no})
    assert tin.data["status"] == "IN_STATION"
    tout = await api.post(
        "/stations/ST-PRINT-01/track-out",
        OP,
        json={"sn": sn, "runNo": run_no, "result": "PASS", "operatorId": "OP-01"},
    )
    assert tout.data["status"] == "QUEUED"
    item = await api.post(
        f"/fai/{fai_id}/items", Q, json={"unitSn": sn, "itemName": "Visual Inspection", "result": "PASS"}
    )
    assert item.status == 201
    done = await api.post(f"/fai/{fai_id}/complete", Q, json={"decision": "PASS"})
    assert done.data["status"] == "PASS" and done.data["passedQty"] == 1
    signed = await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "Auto sign"})
    assert signed.data["signedBy"] and signed.data["signedAt"]
    auth = await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert auth.data["status"] == "AUTHORIZED"

    # Execution: the unit continues at step 2 through the remaining four stations.
    for i, station in enumerate(SMT_STATIONS[1:]):
        r = await api.post(f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": wo, "runNo": run_no})
        assert r.data["status"] == "IN_STATION", r.body
        r = await api.post(
            f"/stations/{station}/track-out",
            OP,
            json={"sn": sn, "runNo": run_no, "result": "PASS", "operatorId": "OP-01"},
        )
        assert r.data["status"] == ("DONE" if i == 3 else "QUEUED")
    detail = (await api.get(f"/runs/{run_no}", PL)).data
    assert detail["status"] == "COMPLETED" and detail["startedAt"] and detail["endedAt"]
    assert (await api.post(f"/runs/{run_no}/close", PL)).data["status"] == "COMPLETED"

    t = (await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})).data
    assert t["route"]["code"] == "PCBA-STD-V1" and len(t["steps"]) == 5 and t["unit"]["status"] == "DONE"
    assert [x["result"] for x in t["tracks"]] == ["PASS"] * 5
    assert any(i["type"] == "FAI" and i["status"] == "PASS" for i in t["inspections"])
    assert any(
        x["slotCode"] == "SLOT-01" and x["materialCode"] == "MAT-001" and x["verifyResult"] == "PASS"
        for x in t["loadingRecords"]
    )
    assert t["readiness"]["status"] == "PASSED"
    assert (await api.post(f"/work-orders/{wo}/close", PL)).data["status"] == "COMPLETED"
