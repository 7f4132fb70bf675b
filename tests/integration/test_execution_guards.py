"""Every guard of track-in (domain.md §4.1) and track-out (§4.2), provoked over HTTP with status and code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import (
    ExecutableRouteVersion,
    Inspection,
    InspectionResultRecord,
    ReadinessCheck,
    Run,
    StationGroup,
    TpmEquipment,
    TpmMaintenanceTask,
    Track,
    Unit,
    WorkOrder,
)
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import OP, PL, Q, authorized_run, move, pass_readiness, released_run, seed, set_run_status

PRINT = "ST-PRINT-01"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


async def track_in(api: Api, flow: dict[str, Any], sn: str, station: str = PRINT, who: str = OP) -> Any:
    return await api.post(
        f"/stations/{station}/track-in", who, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )


async def track_out(api: Api, flow: dict[str, Any], sn: str, station: str = PRINT, **kw: Any) -> Any:
    return await api.post(
        f"/stations/{station}/track-out",
        OP,
        json={"sn": sn, "runNo": flow["runNo"], "result": kw.pop("result", "PASS"), **kw},
    )


async def _unit(database: Database, sn: str, **values: Any) -> None:
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn == sn).values(**values))


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def test_station_not_found_and_not_assigned(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    expect(await track_in(demo, flow, flow["sns"][0], "ST-NOPE"), 404, "STATION_NOT_FOUND")
    # operator.aoi is bound to ST-AOI-01 only (Ours: scope is enforced on execution writes).
    expect(
        await track_in(demo, flow, flow["sns"][0], PRINT, "operator.aoi@example.com"),
        403,
        "STATION_NOT_ASSIGNED",
    )
    r = await demo.post(
        f"/stations/{PRINT}/track-out",
        "operator.aoi@example.com",
        json={"sn": flow["sns"][0], "runNo": flow["runNo"], "result": "PASS"},
    )
    expect(r, 403, "STATION_NOT_ASSIGNED")


async def test_tpm_gates(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    async with database.writer() as s, s.begin():
        await s.execute(
            update(TpmEquipment).where(TpmEquipment.equipment_code == PRINT).values(status="REPAIR")
        )
    expect(await track_in(demo, flow, flow["sns"][0]), 400, "TPM_EQUIPMENT_UNAVAILABLE")
    async with database.writer() as s, s.begin():
        await s.execute(
            update(TpmEquipment).where(TpmEquipment.equipment_code == PRINT).values(status="Normal")
        )
        s.add(
            TpmMaintenanceTask(task_no="MT-1", equipment_code=PRINT, type="PM", status="IN_PROGRESS", meta={})
        )
    expect(await track_in(demo, flow, flow["sns"][0]), 400, "TPM_MAINTENANCE_IN_PROGRESS")
    async with database.writer() as s, s.begin():
        await s.execute(update(TpmMaintenanceTask).values(status="COMPLETED"))
    assert (await track_in(demo, flow, flow["sns"][0])).status == 200


async def test_run_guards(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    expect(
        await demo.post(
            f"/stations/{PRINT}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": "RUN-NOPE"}
        ),
        404,
        "RUN_NOT_FOUND",
    )
    expect(await track_in(demo, flow, sn, "ST-DIP-INS-01"), 400, "STATION_LINE_MISMATCH")
    expect(
        await demo.post(
            f"/stations/{PRINT}/track-in", OP, json={"sn": sn, "woNo": "WO-OTHER", "runNo": flow["runNo"]}
        ),
        400,
        "RUN_WORK_ORDER_MISMATCH",
    )
    async with database.writer() as s, s.begin():
        await s.execute(update(WorkOrder).where(WorkOrder.wo_no == flow["woNo"]).values(routing_id=None))
    expect(await track_in(demo, flow, sn), 400, "WORK_ORDER_NO_ROUTING")
    async with database.writer() as s, s.begin():
        await s.execute(update(Run).where(Run.run_no == flow["runNo"]).values(route_version_id=None))
    expect(await track_in(demo, flow, sn), 400, "ROUTE_VERSION_NOT_READY")


async def test_run_status_gate_and_fai_trial(demo: Api, database: Database) -> None:
    flow = await released_run(demo, qty=2)
    a, b = flow["sns"]
    expect(await track_in(demo, flow, a), 400, "READINESS_CHECK_FAILED")  # LINE-A: nothing loaded yet
    await pass_readiness(database, flow["runNo"])
    expect(await track_in(demo, flow, a), 400, "FAI_TRIAL_NOT_READY")
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        s.add(
            Inspection(
                run_id=run_id,
                type="FAI",
                status="INSPECTING",
                sample_qty=1,
                started_at=utcnow(),
                active_key=f"{run_id}:FAI",
                data={},
            )
        )
    # Trial: the first step only, at most sampleQty distinct units.
    r = await move(demo, PRINT, a, flow)
    assert r.data["status"] == "QUEUED"
    expect(await track_in(demo, flow, a, "ST-SPI-01"), 400, "FAI_TRIAL_STEP_NOT_ALLOWED")
    expect(await track_in(demo, flow, b), 400, "FAI_TRIAL_LIMIT_REACHED")
    async with database.writer() as s, s.begin():
        s.add(ReadinessCheck(run_id=run_id, type="FORMAL", status="FAILED", checked_at=utcnow()))
    expect(await track_in(demo, flow, b), 400, "READINESS_CHECK_FAILED")
    async with database.writer() as s, s.begin():
        await s.execute(update(ReadinessCheck).values(status="PASSED"))
        await s.execute(update(Inspection).values(status="PASS", active_key=None))
    expect(await track_in(demo, flow, b), 400, "RUN_NOT_AUTHORIZED")
    await set_run_status(database, flow["runNo"], "COMPLETED")
    expect(await track_in(demo, flow, b), 400, "RUN_NOT_AUTHORIZED")


async def test_unit_guards(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=3)
    other = await authorized_run(demo, database)
    a, b, c = flow["sns"]
    expect(await track_in(demo, flow, "SN-NOPE"), 404, "UNIT_NOT_FOUND")
    expect(await track_in(demo, flow, other["sns"][0]), 400, "UNIT_WORK_ORDER_MISMATCH")
    async with database.writer() as s, s.begin():
        other_run = await s.scalar(select(Run.id).where(Run.run_no == other["runNo"]))
        wo_id = await s.scalar(select(WorkOrder.id).where(WorkOrder.wo_no == flow["woNo"]))
        await s.execute(update(Unit).where(Unit.sn == c).values(run_id=other_run, wo_id=wo_id))
    expect(await track_in(demo, flow, c), 400, "UNIT_RUN_MISMATCH")
    assert (await track_in(demo, flow, a)).status == 200
    expect(await track_in(demo, flow, a), 400, "UNIT_ALREADY_IN_STATION")
    for status, code in (
        ("DONE", "UNIT_ALREADY_DONE"),
        ("OUT_FAILED", "UNIT_OUT_FAILED"),
        ("SCRAPPED", "UNIT_SCRAPPED"),
        ("ON_HOLD", "UNIT_ON_HOLD"),
    ):
        await _unit(database, b, status=status)
        expect(await track_in(demo, flow, b), 400, code)


async def test_step_and_station_guards(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    await _unit(database, a, current_step_no=99)
    expect(await track_in(demo, flow, a), 400, "STEP_MISMATCH")
    # STATION_MISMATCH: a version whose first step wants another station group.
    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == flow["runNo"]))
        old = await s.get(ExecutableRouteVersion, run.route_version_id)
        group = StationGroup(code="GRP-ELSEWHERE", name="x")
        s.add(group)
        await s.flush()
        steps = [
            {**st, "stationGroupId": group.id} if st["stepNo"] == 1 else st
            for st in old.snapshot_json["steps"]
        ]
        v = ExecutableRouteVersion(
            routing_id=old.routing_id,
            version_no=900,
            status="READY",
            signature="t",
            snapshot_json={**old.snapshot_json, "steps": steps},
            errors_json=[],
            compiled_at=utcnow(),
        )
        empty = ExecutableRouteVersion(
            routing_id=old.routing_id,
            version_no=901,
            status="READY",
            signature="e",
            snapshot_json={**old.snapshot_json, "steps": []},
            errors_json=[],
            compiled_at=utcnow(),
        )
        s.add_all([v, empty])
        await s.flush()
        run.route_version_id = v.id
        empty_id = v.id, empty.id
    expect(await track_in(demo, flow, b), 400, "STATION_MISMATCH")
    async with database.writer() as s, s.begin():
        await s.execute(update(Run).where(Run.run_no == flow["runNo"]).values(route_version_id=empty_id[1]))
    expect(await track_in(demo, flow, c), 400, "ROUTING_EMPTY")


async def test_active_track_exists(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    assert (await track_in(demo, flow, sn)).status == 200
    await _unit(database, sn, status="QUEUED")  # an inconsistent unit: queued, yet a track is open
    expect(await track_in(demo, flow, sn), 400, "ACTIVE_TRACK_EXISTS")


async def test_first_track_in_starts_the_run(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    r = await track_in(demo, flow, flow["sns"][0])
    assert r.data == {"status": "IN_STATION", "trackId": r.data["trackId"], "stepNo": 1}
    run = (await demo.get(f"/runs/{flow['runNo']}", PL)).data
    assert run["status"] == "IN_PROGRESS" and run["startedAt"]
    started = run["startedAt"]
    await track_in(demo, flow, flow["sns"][1])
    assert (await demo.get(f"/runs/{flow['runNo']}", PL)).data["startedAt"] == started


async def test_track_out_guards(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    a, b = flow["sns"]
    expect(await track_out(demo, flow, a), 400, "TRACK_NOT_FOUND")
    expect(await track_out(demo, flow, "SN-NOPE"), 404, "UNIT_NOT_FOUND")
    await track_in(demo, flow, a)
    expect(await track_out(demo, flow, a, "ST-SPI-01"), 400, "TRACK_NOT_FOUND")  # open track is elsewhere
    bad = await demo.post(
        f"/stations/{PRINT}/track-out", OP, json={"sn": a, "runNo": flow["runNo"], "result": "MAYBE"}
    )
    expect(bad, 422, "VALIDATION_FAILED")
    await set_run_status(database, flow["runNo"], "ON_HOLD")
    expect(await track_out(demo, flow, a), 400, "RUN_NOT_AUTHORIZED")
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    r = await track_out(demo, flow, a)
    assert r.data["status"] == "QUEUED" and r.data["nextStepNo"] == 2
    assert (await demo.get(f"/runs/{flow['runNo']}/units", PL)).data["items"][0]["currentStepNo"] in (1, 2)
    _ = b


async def test_fail_records_a_defect_in_the_same_transaction(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    a, b = flow["sns"]
    await track_in(demo, flow, a)
    r = await track_out(
        demo, flow, a, result="FAIL", defectCode="BRIDGE", defectLocation="U1", defectRemark="solder bridge"
    )
    assert r.data["status"] == "OUT_FAILED" and r.data["defectId"]
    expect(await track_in(demo, flow, a), 400, "UNIT_OUT_FAILED")
    await track_in(demo, flow, b)
    r2 = await track_out(demo, flow, b, result="FAIL")
    t = (await demo.get(f"/trace/units/{a}", Q)).data
    assert [(d["code"], d["location"], d["status"]) for d in t["defects"]] == [("BRIDGE", "U1", "RECORDED")]
    assert t["tracks"][0]["result"] == "FAIL" and t["unit"]["currentStepNo"] == 1  # no advance
    t2 = (await demo.get(f"/trace/units/{b}", Q)).data
    assert t2["defects"][0]["code"] == "STATION_FAIL" and t2["defects"][0]["id"] == r2.data["defectId"]


async def test_spi_fail_forces_the_track_out_to_fail(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    r = await track_in(demo, flow, sn)
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        s.add(
            InspectionResultRecord(
                event_id="spi-1",
                event_time=utcnow(),
                run_id=run_id,
                run_no=flow["runNo"],
                station_code=PRINT,
                unit_sn=sn,
                step_no=1,
                inspection_type="SPI",
                result="FAIL",
                defects=[{"code": "SPI-BRIDGE"}],
                source="AUTO",
                track_id=r.data["trackId"],
                defect_ids=[],
                received_at=utcnow(),
                meta={},
            )
        )
    out = await track_out(demo, flow, sn)
    assert out.data["status"] == "OUT_FAILED" and out.data["inspectionOverride"] is True


async def test_pass_moves_to_the_next_sorted_step(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    # Sparse step numbers: 1 → 2 in the demo; jump the unit to step 3 and the next is 4, never +1 blindly.
    await _unit(database, sn, current_step_no=3)
    r = await move(demo, "ST-MOUNT-01", sn, flow)
    assert r.data["nextStepNo"] == 4


@pytest.mark.parametrize("n", [8])
async def test_concurrent_track_outs_of_one_unit_have_one_effect(
    demo: Api, database: Database, n: int
) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    await track_in(demo, flow, sn)
    results = await asyncio.gather(*(track_out(demo, flow, sn) for _ in range(n)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200] + [400] * (n - 1), [r.body for r in results]
    assert all(r.code == "TRACK_NOT_FOUND" for r in results if r.status == 400)
    async with database.reader() as s:
        tracks = (
            await s.scalars(select(Track).join(Unit, Unit.id == Track.unit_id).where(Unit.sn == sn))
        ).all()
        unit = await s.scalar(select(Unit).where(Unit.sn == sn))
    assert len(tracks) == 1 and tracks[0].out_at is not None and unit.current_step_no == 2


async def test_concurrent_track_ins_of_one_unit_have_one_effect(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    results = await asyncio.gather(*(track_in(demo, flow, sn) for _ in range(6)))
    assert sorted(r.status for r in results) == [200] + [400] * 5
    async with database.reader() as s:
        n = len(
            (
                await s.scalars(select(Track.id).join(Unit, Unit.id == Track.unit_id).where(Unit.sn == sn))
            ).all()
        )
    assert n == 1
