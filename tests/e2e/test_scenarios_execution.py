"""Scenarios over HTTP on the demo plant: S2 execution part (compile, WO, run, units, authorize, five
stations, trace, close) and S10 (track-out data collection)."""

from __future__ import annotations

from typing import Any

import pytest

from central.db.engine import Database
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, Q, move, pass_fai, pass_readiness, seed


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


async def test_s2_smt_execution_path(demo: Api, database: Database) -> None:
    api = demo
    c1 = await api.post("/routes/PCBA-STD-V1/compile", EN)
    assert c1.status == 200 and c1.data["status"] == "READY"
    c2 = await api.post("/routes/PCBA-STD-V1/compile", EN)
    assert c2.data["id"] == c1.data["id"] and c2.data["versionNo"] == c1.data["versionNo"]

    wo = {
        "woNo": "WO-S2-1",
        "productCode": "P-1001",
        "plannedQty": 100,
        "routingCode": "PCBA-STD-V1",
        "pickStatus": "2",
    }
    r = await api.post("/integration/work-orders", PL, json=wo)
    assert r.status == 200 and r.data["status"] == "RECEIVED"
    r = await api.post("/work-orders/WO-S2-1/release", PL, json={"lineCode": "LINE-A"})
    assert r.data["status"] == "RELEASED" and r.data["meta"]["dispatch"]["lineCode"] == "LINE-A"
    again = await api.post("/work-orders/WO-S2-1/release", PL, json={"lineCode": "LINE-A"})
    assert again.status == 400 and again.code == "WORK_ORDER_NOT_RECEIVED"
    r = await api.post("/integration/work-orders", PL, json=wo)  # re-receive never resets the status
    assert r.data["status"] == "RELEASED"

    r = await api.post("/work-orders/WO-S2-1/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    assert r.status == 200 and r.data["status"] == "PREP" and r.data["runNo"].startswith("RUN-WO-S2-1-")
    run_no = r.data["runNo"]
    assert (await api.get("/work-orders/WO-S2-1", PL)).data["status"] == "IN_PROGRESS"
    g = await api.post(
        f"/runs/{run_no}/generate-units", PL, json={"quantity": 1, "snPrefix": f"SN-{run_no}-"}
    )
    assert g.data["generated"] == 1
    sn = g.data["units"][0]["sn"]
    assert sn == f"SN-{run_no}-0001" and g.data["units"][0]["status"] == "QUEUED"

    await pass_readiness(database, run_no)  # loading and the real readiness check: tests/e2e/test_s2_full.py
    refused = await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert refused.status == 400 and refused.code == "FAI_NOT_PASSED"
    await pass_fai(database, run_no)
    ok = await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert ok.data["status"] == "AUTHORIZED"

    flow = {"woNo": "WO-S2-1", "runNo": run_no}
    for i, station in enumerate(SMT_STATIONS):
        r = await move(api, station, sn, flow)
        assert r.status == 200, r.body
        assert r.data["status"] == ("DONE" if i == len(SMT_STATIONS) - 1 else "QUEUED")
        if i == 0:
            detail = (await api.get(f"/runs/{run_no}", PL)).data
            assert detail["status"] == "IN_PROGRESS" and detail["startedAt"]
    detail = (await api.get(f"/runs/{run_no}", PL)).data
    # No sampling rule for P-1001: the last unit turning DONE completes the run by itself.
    assert detail["status"] == "COMPLETED" and detail["endedAt"]
    assert detail["unitStats"]["done"] == 1 and all(s["completed"] == 1 for s in detail["routeSteps"])
    closed = await api.post(f"/runs/{run_no}/close", PL)
    assert closed.status == 200 and closed.data["status"] == "COMPLETED"

    t = (await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})).data
    assert t["route"]["code"] == "PCBA-STD-V1" and len(t["steps"]) == 5
    assert [x["result"] for x in t["tracks"]] == ["PASS"] * 5 and t["unit"]["status"] == "DONE"
    assert [x["operation"] for x in t["tracks"]] == ["PRINTING", "SPI", "MOUNTING", "REFLOW", "AOI"]
    assert any(i["type"] == "FAI" and i["status"] == "PASS" for i in t["inspections"])

    wo_closed = await api.post("/work-orders/WO-S2-1/close", PL)
    assert wo_closed.status == 200 and wo_closed.data["status"] == "COMPLETED"


async def test_s2_close_refused_while_a_run_is_open(demo: Api) -> None:
    api = demo
    await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": "WO-S2-2", "productCode": "P-1001", "plannedQty": 5, "routingCode": "PCBA-STD-V1"},
    )
    none = await api.post("/work-orders/WO-S2-2/close", PL)
    assert none.status == 400 and none.code == "WORK_ORDER_HAS_NO_RUNS"
    await api.post("/work-orders/WO-S2-2/release", PL, json={"lineCode": "LINE-A"})
    await api.post("/work-orders/WO-S2-2/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    r = await api.post("/work-orders/WO-S2-2/close", PL)
    assert r.status == 409 and r.code == "WORK_ORDER_RUNS_NOT_TERMINAL"


async def _bind_spec(api: Api, spec_id: int) -> dict[str, Any]:
    r = await api.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 4, "dataSpecIds": [spec_id]},
    )
    assert r.status == 200, r.body
    c = await api.post("/routes/PCBA-STD-V1/compile", EN)
    assert c.data["status"] == "READY" and c.data["versionNo"] == 2
    return c.data


async def test_s10_track_out_data_collection(demo: Api, database: Database) -> None:
    from tests.flows import authorized_run

    api = demo
    spec = await api.post(
        "/data-collection-specs",
        EN,
        json={
            "operationCode": "REFLOW",
            "name": "PEAK_TEMP",
            "itemType": "KEY",
            "dataType": "NUMBER",
            "method": "MANUAL",
            "triggerType": "EACH_UNIT",
            "isRequired": True,
            "spec": {"min": 240, "max": 260, "unit": "°C"},
        },
    )
    assert spec.status == 201, spec.body
    # Unbound: any active spec of the operation is accepted, requiredness not enforced.
    flow = await authorized_run(api, database, qty=2)
    sn, sn2 = flow["sns"]
    for station in SMT_STATIONS[:3]:
        await move(api, station, sn, flow)
    await api.post(
        "/stations/ST-REFLOW-01/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    unknown = await api.post(
        "/stations/ST-REFLOW-01/track-out",
        OP,
        json={
            "sn": sn,
            "runNo": flow["runNo"],
            "result": "PASS",
            "data": [{"specName": "NOPE", "valueNumber": 1}],
        },
    )
    assert unknown.status == 400 and unknown.code == "DATA_SPEC_NOT_FOUND"
    wrong = await api.post(
        "/stations/ST-REFLOW-01/track-out",
        OP,
        json={
            "sn": sn,
            "runNo": flow["runNo"],
            "result": "PASS",
            "data": [{"specName": "PEAK_TEMP", "valueText": "x"}],
        },
    )
    assert wrong.status == 400 and wrong.code == "DATA_VALUE_INVALID"
    ds = (await api.get(f"/stations/ST-REFLOW-01/unit/{sn}/data-specs", OP)).data
    assert ds["operationCode"] == "REFLOW" and ds["specs"] == []  # nothing bound to the step
    ok = await api.post(
        "/stations/ST-REFLOW-01/track-out",
        OP,
        json={
            "sn": sn,
            "runNo": flow["runNo"],
            "result": "PASS",
            "data": [{"specName": "PEAK_TEMP", "valueNumber": 245}],
        },
    )
    assert ok.status == 200 and ok.data["status"] == "QUEUED"
    t = (await api.get(f"/trace/units/{sn}", Q)).data
    assert [(v["stepNo"], v["name"], v["valueNumber"], v["judge"], v["source"]) for v in t["dataValues"]] == [
        (4, "PEAK_TEMP", 245, "PASS", "MANUAL")
    ]

    # Bound: only runs created after the recompile see the binding; then PASS needs the value.
    await _bind_spec(api, spec.data["id"])
    for station in SMT_STATIONS[:3]:
        await move(api, station, sn2, flow)
    await api.post(
        "/stations/ST-REFLOW-01/track-in", OP, json={"sn": sn2, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    old_run = await api.post(
        "/stations/ST-REFLOW-01/track-out", OP, json={"sn": sn2, "runNo": flow["runNo"], "result": "PASS"}
    )
    assert old_run.status == 200  # the frozen version of the old run has no binding

    bound = await authorized_run(api, database, qty=2)
    b1, b2 = bound["sns"]
    for station in SMT_STATIONS[:3]:
        await move(api, station, b1, bound)
        await move(api, station, b2, bound)
    ds = (await api.get(f"/stations/ST-REFLOW-01/unit/{b1}/data-specs", OP)).data
    assert [s["name"] for s in ds["specs"]] == ["PEAK_TEMP"] and ds["specs"][0]["spec"]["min"] == 240
    await api.post(
        "/stations/ST-REFLOW-01/track-in", OP, json={"sn": b1, "woNo": bound["woNo"], "runNo": bound["runNo"]}
    )
    missing = await api.post(
        "/stations/ST-REFLOW-01/track-out", OP, json={"sn": b1, "runNo": bound["runNo"], "result": "PASS"}
    )
    assert missing.status == 400 and missing.code == "REQUIRED_DATA_MISSING"
    fail_ok = await api.post(
        "/stations/ST-REFLOW-01/track-out", OP, json={"sn": b1, "runNo": bound["runNo"], "result": "FAIL"}
    )
    assert fail_ok.status == 200 and fail_ok.data["status"] == "OUT_FAILED"
    r = await move(api, "ST-REFLOW-01", b2, bound, data=[{"specName": "PEAK_TEMP", "valueNumber": 270}])
    assert r.status == 200
    t = (await api.get(f"/trace/units/{b2}", Q)).data
    assert t["dataValues"][0]["judge"] == "FAIL"  # outside 240..260, recorded and judged, not blocking
