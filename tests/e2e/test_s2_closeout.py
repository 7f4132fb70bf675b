"""S2 step 7 and steps 21–29 (close-out with OQC) and the S6 close-out, over HTTP on the demo plant.

The run is authorized through tests/flows.py (loading, readiness and FAI have their own scenario tests); a
2-unit run gives the OQC one sampled and one unsampled unit."""

from __future__ import annotations

from typing import Any

from central.db.engine import Database
from tests.client import Api
from tests.flows import DIP_STATIONS, OP, PL, SMT_STATIONS, Q, authorized_run
from tests.integration.test_oqc import demo, expect

__all__ = ["demo"]
RULE_S2 = {
    "productCode": "P-1001",
    "samplingType": "FIXED",
    "sampleValue": 1,
    "priority": 100,
    "isActive": True,
}


async def step_7_rules(api: Api) -> int:
    """Q creates the S2 rule (201) and deactivates another one with DELETE (200)."""
    r = await api.post("/oqc/sampling-rules", Q, json=RULE_S2)
    assert r.status == 201 and r.data["id"], r.body
    spare = await api.post("/oqc/sampling-rules", Q, json={**RULE_S2, "lineCode": "LINE-A", "priority": 999})
    assert spare.status == 201, spare.body
    d = await api.delete(f"/oqc/sampling-rules/{spare.data['id']}", Q)
    assert d.status == 200 and d.data["isActive"] is False, d.body
    return int(r.data["id"])


async def produce(api: Api, flow: dict[str, Any], stations: list[str]) -> None:
    """Step 21: every unit through every station; QUEUED between steps, DONE after the last one."""
    for n, sn in enumerate(flow["sns"]):
        for i, station in enumerate(stations):
            r = await api.post(
                f"/stations/{station}/track-in",
                OP,
                json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]},
            )
            assert r.status == 200 and r.data["status"] == "IN_STATION", r.body
            if n == 0 and i == 0:
                run = (await api.get(f"/runs/{flow['runNo']}", PL)).data
                assert run["status"] == "IN_PROGRESS" and run["startedAt"]
            r = await api.post(
                f"/stations/{station}/track-out",
                OP,
                json={"sn": sn, "runNo": flow["runNo"], "result": "PASS", "operatorId": "OP-01"},
            )
            assert r.status == 200, r.body
            assert r.data["status"] == ("DONE" if i == len(stations) - 1 else "QUEUED")
        if n < len(flow["sns"]) - 1:  # units still open: no OQC yet
            expect(await api.get(f"/oqc/run/{flow['runNo']}", Q), 404, "OQC_NOT_FOUND")


async def inspect_and_pass(api: Api, flow: dict[str, Any], oqc_id: int, sampled: str) -> dict[str, Any]:
    """Steps 24–26."""
    s = await api.post(f"/oqc/{oqc_id}/start", Q)
    assert s.status == 200 and s.data["status"] == "INSPECTING", s.body
    item = {"unitSn": sampled, "itemName": "OQC Visual", "result": "PASS"}
    for sn in flow["sns"]:
        if sn != sampled:
            expect(
                await api.post(f"/oqc/{oqc_id}/items", Q, json={**item, "unitSn": sn}),
                400,
                "UNIT_NOT_IN_SAMPLE",
            )
    r = await api.post(f"/oqc/{oqc_id}/items", Q, json=item)
    assert r.status == 201 and r.data["itemId"], r.body
    c = await api.post(f"/oqc/{oqc_id}/complete", Q, json={"decision": "PASS"})
    assert c.status == 200 and c.data["status"] == "PASS" and c.data["passedQty"] == 1, c.body
    run = (await api.get(f"/runs/{flow['runNo']}", PL)).data
    assert run["status"] == "COMPLETED" and run["endedAt"]
    return dict(run)


async def test_s2_closeout_with_oqc(demo: Api, database: Database) -> None:
    api = demo
    rule_id = await step_7_rules(api)
    flow = await authorized_run(api, database, qty=2)
    run_no = flow["runNo"]
    await produce(api, flow, SMT_STATIONS)  # 21: the last track-out creates the OQC

    close = await api.post(f"/runs/{run_no}/close", PL)  # 22
    expect(close, 409, "OQC_REQUIRED")
    expect(await api.post(f"/work-orders/{flow['woNo']}/close", PL), 409, "WORK_ORDER_RUNS_NOT_TERMINAL")
    assert (await api.get(f"/runs/{run_no}", PL)).data["status"] == "IN_PROGRESS"

    oqc = await api.get(f"/oqc/run/{run_no}", Q)  # 23
    assert oqc.status == 200 and oqc.data["status"] == "PENDING" and oqc.data["sampleQty"] == 1, oqc.body
    assert oqc.data["samplingRuleId"] == rule_id and close.body["error"]["details"]["oqcId"] == oqc.data["id"]
    [sampled] = oqc.data["sampledSns"]
    gate = (await api.get(f"/oqc/run/{run_no}/gate", Q)).data
    assert gate == {"requiresOqc": True, "oqcPassed": False, "oqcId": oqc.data["id"], "oqcStatus": "PENDING"}

    done = await inspect_and_pass(api, flow, oqc.data["id"], sampled)  # 24–26
    again = await api.post(f"/runs/{run_no}/close", PL)  # 27: a terminal run closes as a no-op
    assert (
        again.status == 200
        and again.data["status"] == "COMPLETED"
        and again.data["endedAt"] == done["endedAt"]
    )
    assert (await api.get(f"/oqc/run/{run_no}/gate", Q)).data["oqcPassed"] is True

    t = await api.get(f"/trace/units/{sampled}", Q, params={"mode": "run"})  # 28
    assert t.status == 200, t.body
    tr = t.data
    assert tr["route"]["code"] == "PCBA-STD-V1" and len(tr["steps"]) == 5 and tr["unit"]["status"] == "DONE"
    assert [x["result"] for x in tr["tracks"]] == ["PASS"] * 5
    kinds = {(i["type"], i["status"]) for i in tr["inspections"]}
    assert {("FAI", "PASS"), ("OQC", "PASS")} <= kinds
    [oqc_trace] = [i for i in tr["inspections"] if i["type"] == "OQC"]
    assert oqc_trace["unitItems"]["pass"] == 1

    wo = await api.post(f"/work-orders/{flow['woNo']}/close", PL)  # 29
    assert wo.status == 200 and wo.data["status"] == "COMPLETED", wo.body


async def test_s6_seeded_dip_rule_wins_over_the_product_rule(demo: Api, database: Database) -> None:
    api = demo
    await step_7_rules(api)  # the SMT product rule, priority 100
    dip = await api.get("/oqc/sampling-rules", Q, params={"routingCode": "PCBA-DIP-V1"})
    [seeded] = dip.data["items"]
    assert seeded["specificity"] == 3 and seeded["priority"] == 10 and seeded["samplingType"] == "FIXED"
    flow = await authorized_run(api, database, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    await produce(api, flow, DIP_STATIONS)

    expect(await api.post(f"/runs/{flow['runNo']}/close", PL), 409, "OQC_REQUIRED")
    oqc = (await api.get(f"/oqc/run/{flow['runNo']}", Q)).data
    assert oqc["samplingRuleId"] == seeded["id"] and oqc["sampleQty"] == 1
    [sampled] = oqc["sampledSns"]
    await inspect_and_pass(api, flow, oqc["id"], sampled)
    assert (await api.post(f"/runs/{flow['runNo']}/close", PL)).data["status"] == "COMPLETED"
    tr = (await api.get(f"/trace/units/{sampled}", Q, params={"mode": "run"})).data
    assert len(tr["steps"]) == 4 and [x["result"] for x in tr["tracks"]] == ["PASS"] * 4
    assert {("FAI", "PASS"), ("OQC", "PASS")} <= {(i["type"], i["status"]) for i in tr["inspections"]}
