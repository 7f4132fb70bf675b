"""Scenario S9 (scenarios.md): execution FAIL → defect → disposition → rework, with its SCRAP / HOLD variants
and the close refusal, over HTTP on the demo plant. One test per group of steps; each starts from the S9
starting state (an AUTHORIZED SMT run with 2 units, unit U at step 2)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import Defect, Track, Unit
from tests.client import Api
from tests.flows import OP, PL, SMT_STATIONS, Q, authorized_run, move
from tests.integration.test_defects import demo, expect

__all__ = ["demo"]
PRINT, SPI = "ST-PRINT-01", "ST-SPI-01"


async def starting_state(api: Api, database: Database) -> tuple[dict[str, Any], str, str]:
    """An AUTHORIZED run with 2 units; U passed step 1 and is QUEUED at step 2. → (flow, U, other unit)."""
    flow = await authorized_run(api, database, qty=2)
    u, other = flow["sns"]
    r = await move(api, PRINT, u, flow)
    assert r.status == 200 and r.data["status"] == "QUEUED" and r.data["nextStepNo"] == 2, r.body
    return flow, u, other


async def track_in(api: Api, flow: dict[str, Any], sn: str, station: str) -> Any:
    return await api.post(
        f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )


async def steps_1_2(api: Api, flow: dict[str, Any], sn: str) -> int:
    """OP track-in at ST-SPI-01 → 200; track-out FAIL with BRIDGE → OUT_FAILED. → the defect id."""
    r = await track_in(api, flow, sn, SPI)
    assert r.status == 200 and r.data["status"] == "IN_STATION", r.body
    r = await api.post(
        f"/stations/{SPI}/track-out",
        OP,
        json={
            "sn": sn,
            "runNo": flow["runNo"],
            "result": "FAIL",
            "defectCode": "BRIDGE",
            "defectLocation": "U1",
            "defectRemark": "solder bridge between pins",
        },
    )
    assert r.status == 200 and r.data["status"] == "OUT_FAILED", r.body
    return int(r.data["defectId"])


async def step_6_rework(api: Api, defect_id: int) -> int:
    """Q disposition REWORK to step 1 → DISPOSITIONED with an OPEN task 2 → 1. → the task id."""
    r = await api.post(
        f"/defects/{defect_id}/disposition",
        Q,
        json={"type": "REWORK", "toStepNo": 1, "reason": "repair-needed"},
    )
    assert r.status == 200, r.body
    assert r.data["status"] == "DISPOSITIONED" and r.data["disposition"]["type"] == "REWORK"
    task = r.data["disposition"]["reworkTask"]
    assert task["id"] and task["status"] == "OPEN" and (task["fromStepNo"], task["toStepNo"]) == (2, 1)
    return int(task["id"])


async def unit_of(api: Api, flow: dict[str, Any], sn: str) -> dict[str, Any]:
    r = await api.get(f"/runs/{flow['runNo']}/units", PL, params={"pageSize": 200})
    assert r.status == 200, r.body
    return next(u for u in r.data["items"] if u["sn"] == sn)


async def test_s9_steps_1_to_3_fail_records_a_linked_defect_and_blocks_track_in(
    demo: Api, database: Database
) -> None:
    flow, u, _ = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    async with database.reader() as s:
        defect = await s.get(Defect, defect_id)
        assert defect is not None
        track = await s.get(Track, defect.track_id)
        unit = await s.scalar(select(Unit).where(Unit.sn == u))
    assert defect.status == "RECORDED" and defect.code == "BRIDGE" and defect.location == "U1"
    assert track is not None and unit is not None
    assert (track.unit_id, track.step_no, track.result) == (unit.id, 2, "FAIL")
    assert (unit.status, unit.current_step_no) == ("OUT_FAILED", 2)
    expect(await track_in(demo, flow, u, SPI), 400, "UNIT_OUT_FAILED")  # step 3


async def test_s9_steps_4_to_6_list_manual_defect_and_rework_disposition(
    demo: Api, database: Database
) -> None:
    flow, u, _ = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    # 4. list, and a defect recorded by hand
    r = await demo.get("/defects", Q, params={"unitSn": u})
    assert r.status == 200 and set(r.data) == {"items", "total", "page", "pageSize"}
    assert r.data["total"] == 1 and r.data["items"][0]["id"] == defect_id
    assert r.data["items"][0]["failureStep"]["stationCode"] == SPI
    r = await demo.post("/defects", Q, json={"unitSn": u, "code": "DEFECT-REPAIR", "location": "U1"})
    assert r.status == 201 and r.data["status"] == "RECORDED", r.body
    assert (await demo.get("/defects", Q, params={"unitSn": u})).data["total"] == 2
    # 5. beyond the failure step
    r = await demo.post(
        f"/defects/{defect_id}/disposition", Q, json={"type": "REWORK", "toStepNo": 3, "reason": "too far"}
    )
    expect(r, 400, "REWORK_STEP_INVALID")
    # 6. back to step 1: the unit is QUEUED there; a second disposition is refused
    await step_6_rework(demo, defect_id)
    unit = await unit_of(demo, flow, u)
    assert (unit["status"], unit["currentStepNo"]) == ("QUEUED", 1)
    r = await demo.post(f"/defects/{defect_id}/disposition", Q, json={"type": "REWORK", "toStepNo": 1})
    expect(r, 400, "ALREADY_DISPOSITIONED")


async def test_s9_steps_7_to_9_repair_record_auto_close_and_trace(demo: Api, database: Database) -> None:
    flow, u, _ = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    task_id = await step_6_rework(demo, defect_id)
    # 7. repair record
    record = {
        "reason": "Solder bridge",
        "action": "Rework and clean pads",
        "result": "PASS",
        "remark": "x-ray ok",
    }
    r = await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json=record)
    assert r.status == 200 and r.data["repairRecord"]["action"] == record["action"], r.body
    # 8. step 1 again (task stays OPEN: before the failure step), then step 2 PASS closes task and defect
    r = await move(demo, PRINT, u, flow)
    assert r.status == 200 and r.data["status"] == "QUEUED"
    d = (await demo.get(f"/defects/{defect_id}", Q)).data
    assert d["status"] == "DISPOSITIONED" and d["disposition"]["reworkTask"]["status"] == "OPEN"
    r = await move(demo, SPI, u, flow)
    assert r.status == 200 and r.data["status"] == "QUEUED" and r.data["nextStepNo"] == 3
    d = (await demo.get(f"/defects/{defect_id}", Q)).data
    assert d["status"] == "CLOSED" and d["disposition"]["reworkTask"]["status"] == "DONE"
    assert d["disposition"]["reworkTask"]["doneAt"]
    # the repair record can no longer change
    expect(
        await demo.post(f"/rework-tasks/{task_id}/repair-record", Q, json=record), 400, "REWORK_TASK_NOT_OPEN"
    )
    # 9. trace
    r = await demo.get(f"/trace/units/{u}", Q, params={"mode": "run"})
    assert r.status == 200, r.body
    traced = next(x for x in r.data["defects"] if x["id"] == defect_id)
    assert traced["code"] == "BRIDGE" and traced["status"] == "CLOSED"
    disp = traced["disposition"]
    assert disp["type"] == "REWORK" and disp["reason"] == "repair-needed"
    assert disp["reworkTask"]["status"] == "DONE"
    rec = disp["reworkTask"]["repairRecord"]
    assert {k: rec[k] for k in record} == record and rec["recordedAt"] and rec["recordedBy"]
    assert [(t["stepNo"], t["result"]) for t in r.data["tracks"]] == [
        (1, "PASS"),
        (2, "FAIL"),
        (1, "PASS"),
        (2, "PASS"),
    ]


async def test_s9_step_8_manual_completion_then_rework_not_open(demo: Api, database: Database) -> None:
    flow, u, other = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    await step_6_rework(demo, defect_id)
    # another failed unit gets its own task, completed by hand
    assert (await move(demo, PRINT, other, flow)).status == 200
    other_defect = await steps_1_2(demo, flow, other)
    other_task = await step_6_rework(demo, other_defect)
    r = await demo.post(f"/rework-tasks/{other_task}/complete", Q, json={"remark": "repaired at the bench"})
    assert r.status == 200 and r.data["status"] == "DONE" and r.data["defectStatus"] == "CLOSED", r.body
    expect(
        await demo.post(f"/rework-tasks/{other_task}/complete", Q, json={"remark": "again"}),
        400,
        "REWORK_NOT_OPEN",
    )
    assert (await demo.get(f"/defects/{other_defect}", Q)).data["status"] == "CLOSED"
    assert (await demo.get(f"/defects/{defect_id}", Q)).data[
        "status"
    ] == "DISPOSITIONED"  # U's task stays OPEN


async def test_s9_step_10_scrap_makes_the_unit_terminal_and_the_run_completes(
    demo: Api, database: Database
) -> None:
    flow, u, other = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    for i, station in enumerate(SMT_STATIONS):  # every other unit DONE
        r = await move(demo, station, other, flow)
        assert r.data["status"] == ("DONE" if i == len(SMT_STATIONS) - 1 else "QUEUED")
    assert (await demo.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "IN_PROGRESS"
    r = await demo.post(f"/defects/{defect_id}/disposition", Q, json={"type": "SCRAP", "reason": "burnt pad"})
    assert r.status == 200, r.body
    assert r.data["status"] == "CLOSED" and r.data["disposition"]["type"] == "SCRAP"
    assert (await unit_of(demo, flow, u))["status"] == "SCRAPPED"
    run = (await demo.get(f"/runs/{flow['runNo']}", PL)).data
    assert run["status"] == "COMPLETED" and run["endedAt"]  # no SMT sampling rule


async def test_s9_step_10_hold_then_release(demo: Api, database: Database) -> None:
    flow, u, other = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    r = await demo.post(f"/defects/{defect_id}/disposition", Q, json={"type": "HOLD", "reason": "await MRB"})
    assert r.status == 200 and r.data["disposition"]["type"] == "HOLD", r.body
    assert (await unit_of(demo, flow, u))["status"] == "ON_HOLD"
    r = await demo.post(f"/defects/{defect_id}/release", Q, json={"reason": "engineering approved"})
    assert r.status == 200 and r.data["status"] == "CLOSED", r.body
    assert r.data["releasedBy"] and r.data["releaseReason"] == "engineering approved" and r.data["releasedAt"]
    unit = await unit_of(demo, flow, u)
    assert (unit["status"], unit["currentStepNo"]) == ("QUEUED", 2)
    # release on a non-HOLD disposition
    assert (await move(demo, PRINT, other, flow)).status == 200
    other_defect = await steps_1_2(demo, flow, other)
    await step_6_rework(demo, other_defect)
    r = await demo.post(f"/defects/{other_defect}/release", Q, json={"reason": "x"})
    expect(r, 400, "NOT_HOLD_DISPOSITION")


async def test_s9_step_11_close_while_u_is_not_terminal(demo: Api, database: Database) -> None:
    flow, u, other = await starting_state(demo, database)
    defect_id = await steps_1_2(demo, flow, u)
    for i, station in enumerate(SMT_STATIONS):
        r = await move(demo, station, other, flow)
        assert r.data["status"] == ("DONE" if i == len(SMT_STATIONS) - 1 else "QUEUED")
    expect(await demo.post(f"/runs/{flow['runNo']}/close", PL), 400, "RUN_UNITS_NOT_TERMINAL")  # OUT_FAILED
    await demo.post(f"/defects/{defect_id}/disposition", Q, json={"type": "HOLD"})
    expect(await demo.post(f"/runs/{flow['runNo']}/close", PL), 400, "RUN_UNITS_NOT_TERMINAL")  # ON_HOLD
