"""Runs over HTTP (domain.md §3 Run and Unit ∅→QUEUED, §4 helper reads): creation guards in order, the frozen
route version, lists and detail, unit generation and deletion, authorize/revoke gates, the state machine."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from central.db.engine import Database
from central.db.models import Inspection, ReadinessCheck, Run, Unit, WorkOrder
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import (
    EN,
    OP,
    PL,
    SMT_STATIONS,
    A,
    M,
    Q,
    authorized_run,
    move,
    pass_fai,
    pass_readiness,
    released_run,
    seed,
    set_run_status,
)

PRINT = "ST-PRINT-01"
_seq = itertools.count(1)


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def released_wo(
    api: Api, *, routing: str = "PCBA-STD-V1", line: str | None = "LINE-A", product: str = "P-1001"
) -> str:
    wo_no = f"WO-RN-{next(_seq):04d}"
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": wo_no, "productCode": product, "plannedQty": 100, "routingCode": routing},
    )
    assert r.status == 200, r.body
    if line:
        r = await api.post(f"/work-orders/{wo_no}/release", PL, json={"lineCode": line})
        assert r.status == 200, r.body
    return wo_no


async def create_run(api: Api, wo_no: str, line: str = "LINE-A", qty: int = 3, **extra: Any) -> Any:
    return await api.post(f"/work-orders/{wo_no}/runs", PL, json={"lineCode": line, "planQty": qty, **extra})


async def prep_run(api: Api, qty: int = 3, **kw: Any) -> dict[str, Any]:
    """A PREP run without units."""
    wo_no = await released_wo(api, **kw)
    r = await create_run(api, wo_no, kw.get("line") or "LINE-A", qty)
    assert r.status == 200, r.body
    return {"woNo": wo_no, "runNo": r.data["runNo"], "id": r.data["id"]}


async def generate(api: Api, run_no: str, quantity: int, **extra: Any) -> Any:
    return await api.post(f"/runs/{run_no}/generate-units", PL, json={"quantity": quantity, **extra})


async def new_routing(api: Api, code: str, steps: list[tuple[int, str, str]], *, compile: bool) -> None:
    """An SMT routing created by the engineer: steps = [(stepNo, operationCode, stationGroupCode)]."""
    r = await api.post(
        "/routes",
        EN,
        json={
            "code": code,
            "name": code,
            "processType": "SMT",
            "steps": [
                {"stepNo": n, "operationCode": op, "stationGroupCode": grp, "stationType": "MANUAL"}
                for n, op, grp in steps
            ],
        },
    )
    assert r.status == 200, r.body
    if compile:
        c = await api.post(f"/routes/{code}/compile", EN)
        assert c.data["status"] == "READY", c.body


async def detail(api: Api, run_no: str, who: str = PL) -> dict[str, Any]:
    r = await api.get(f"/runs/{run_no}", who)
    assert r.status == 200, r.body
    return r.data


async def track_in(api: Api, flow: dict[str, Any], sn: str, station: str = PRINT) -> Any:
    r = await api.post(
        f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200, r.body
    return r


async def run_count(database: Database, wo_no: str) -> int:
    async with database.reader() as s:
        return (
            await s.scalar(select(func.count(Run.id)).join(WorkOrder).where(WorkOrder.wo_no == wo_no))
        ) or 0


async def add_fai(database: Database, run_no: str, status: str, *, signed: bool = False, **kw: Any) -> None:
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        s.add(
            Inspection(
                run_id=run_id,
                type="FAI",
                status=status,
                sample_qty=1,
                started_at=utcnow(),
                signed_by="quality" if signed else None,
                signed_at=utcnow() if signed else None,
                data={},
                **kw,
            )
        )


async def add_check(database: Database, run_no: str, type_: str, status: str, at: Any = None) -> None:
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        s.add(ReadinessCheck(run_id=run_id, type=type_, status=status, checked_at=at or utcnow()))


async def authorize(api: Api, run_no: str, action: str = "AUTHORIZE", who: str = PL) -> Any:
    return await api.post(f"/runs/{run_no}/authorize", who, json={"action": action})


# ---- creation guards, in the documented order ----------------------------------------------------


async def test_create_refused_when_the_work_order_is_not_released(demo: Api, database: Database) -> None:
    wo_no = await released_wo(demo, line=None)
    expect(await create_run(demo, wo_no, "LINE-NOPE"), 400, "WORK_ORDER_NOT_RELEASED")
    expect(await create_run(demo, "WO-NOPE"), 404, "WORK_ORDER_NOT_FOUND")
    assert await run_count(database, wo_no) == 0


async def test_create_refused_when_the_work_order_has_no_routing(demo: Api, database: Database) -> None:
    wo_no = await released_wo(demo)
    async with database.writer() as s, s.begin():  # a released WO cannot lose its routing over HTTP
        await s.execute(update(WorkOrder).where(WorkOrder.wo_no == wo_no).values(routing_id=None))
    expect(await create_run(demo, wo_no, "LINE-NOPE"), 404, "ROUTE_NOT_FOUND")
    assert await run_count(database, wo_no) == 0


async def test_create_refused_for_an_unknown_line(demo: Api, database: Database) -> None:
    wo_no = await released_wo(demo)
    expect(await create_run(demo, wo_no, "LINE-NOPE"), 404, "LINE_NOT_FOUND")
    assert await run_count(database, wo_no) == 0


async def test_create_refused_on_another_line_than_the_dispatched_one(demo: Api, database: Database) -> None:
    wo_no = await released_wo(demo)  # dispatched to LINE-A
    # Also point the WO at an uncompiled routing: the line mismatch must still be the answer.
    await new_routing(demo, "ROUTE-NOT-COMPILED", [(10, "PRINTING", "SMT-LINE-A")], compile=False)
    r = await demo.patch(f"/work-orders/{wo_no}/routing", PL, json={"routingCode": "ROUTE-NOT-COMPILED"})
    assert r.status == 200, r.body
    expect(await create_run(demo, wo_no, "LINE-DIP-A"), 400, "WORK_ORDER_DISPATCH_LINE_MISMATCH")
    expect(await create_run(demo, wo_no, "LINE-ING"), 400, "WORK_ORDER_DISPATCH_LINE_MISMATCH")
    assert await run_count(database, wo_no) == 0


async def test_create_refused_when_the_routing_has_no_ready_version(demo: Api, database: Database) -> None:
    wo_no = await released_wo(demo)
    # The override points a released WO at a routing never compiled; its step would not fit LINE-A either.
    await new_routing(demo, "ROUTE-NOT-COMPILED", [(10, "DIP_INSERT", "DIP-LINE-A")], compile=False)
    await demo.patch(f"/work-orders/{wo_no}/routing", PL, json={"routingCode": "ROUTE-NOT-COMPILED"})
    expect(await create_run(demo, wo_no), 404, "ROUTE_VERSION_NOT_READY")
    assert await run_count(database, wo_no) == 0
    assert (await demo.get(f"/work-orders/{wo_no}", PL)).data["status"] == "RELEASED"


async def test_create_refused_when_a_step_has_no_fitting_station_on_the_line(
    demo: Api, database: Database
) -> None:
    # An SMT routing whose step 20 wants the DIP station group: no LINE-A station fits it.
    await new_routing(
        demo,
        "SMT-WITH-DIP-STEP",
        [(10, "PRINTING", "SMT-LINE-A"), (20, "DIP_INSERT", "DIP-LINE-A")],
        compile=True,
    )
    wo_no = await released_wo(demo, routing="SMT-WITH-DIP-STEP")
    r = await create_run(demo, wo_no)
    expect(r, 400, "RUN_LINE_INCOMPATIBLE_WITH_ROUTE")
    assert r.body["error"]["details"] == {"stepNos": [20]}
    assert await run_count(database, wo_no) == 0
    assert (await demo.get(f"/work-orders/{wo_no}", PL)).data["status"] == "RELEASED"


async def test_create_needs_run_create_and_validates_the_body(demo: Api) -> None:
    wo_no = await released_wo(demo)
    for who in (EN, Q, M):
        r = await demo.post(f"/work-orders/{wo_no}/runs", who, json={"lineCode": "LINE-A", "planQty": 1})
        expect(r, 403, "FORBIDDEN")
    expect(await create_run(demo, wo_no, qty=0), 422, "VALIDATION_FAILED")
    expect(await demo.post(f"/work-orders/{wo_no}/runs", PL, json={"planQty": 1}), 422, "VALIDATION_FAILED")


async def test_create_makes_a_prep_run_and_starts_the_work_order(demo: Api) -> None:
    wo_no = await released_wo(demo)
    r = await create_run(demo, wo_no, qty=5, shiftCode="D1", changeoverNo="CO-9")
    assert r.status == 200, r.body
    d = r.data
    assert d["runNo"].startswith(f"RUN-{wo_no}-") and d["status"] == "PREP"
    assert (d["woNo"], d["productCode"], d["lineCode"], d["planQty"]) == (wo_no, "P-1001", "LINE-A", 5)
    assert (d["shiftCode"], d["changeoverNo"]) == ("D1", "CO-9")
    assert d["routingCode"] == "PCBA-STD-V1" and d["routeVersionNo"] == 1 and d["routeVersionId"]
    assert d["authorizationType"] == "NORMAL" and d["mrbFaiWaiver"] is False
    assert d["startedAt"] is None and d["endedAt"] is None and d["authorizedBy"] is None
    assert (await demo.get(f"/work-orders/{wo_no}", PL)).data["status"] == "IN_PROGRESS"
    second = await create_run(demo, wo_no)
    assert second.status == 200 and second.data["runNo"] != d["runNo"]


async def test_run_freezes_the_highest_ready_version_and_recompiling_affects_only_new_runs(demo: Api) -> None:
    old = await released_run(demo)
    assert (await detail(demo, old["runNo"]))["routeVersion"]["versionNo"] == 1
    cfg = await demo.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 2, "requiresFai": True},
    )
    assert cfg.status == 200, cfg.body
    c = await demo.post("/routes/PCBA-STD-V1/compile", EN)
    assert (c.data["status"], c.data["versionNo"]) == ("READY", 2)
    new = await create_run(demo, old["woNo"], qty=1)
    assert new.data["routeVersionNo"] == 2
    await generate(demo, new.data["runNo"], 1)
    new_sn = f"SN-{new.data['runNo']}-0001"

    before = await detail(demo, old["runNo"])
    assert before["routeVersion"]["versionNo"] == 1 and before["routeVersionNo"] == 1
    assert [s["requiresFAI"] for s in before["routeSteps"]] == [True, False, False, False, False]
    after = await detail(demo, new.data["runNo"])
    assert after["routeVersion"]["versionNo"] == 2
    assert [s["requiresFAI"] for s in after["routeSteps"]] == [True, True, False, False, False]

    trace = await demo.get(f"/trace/units/{old['sns'][0]}", PL, params={"mode": "run"})
    assert trace.data["routeVersion"]["versionNo"] == 1
    assert trace.data["steps"][1]["requiresFAI"] is False
    latest = await demo.get(f"/trace/units/{old['sns'][0]}", PL, params={"mode": "latest"})
    assert latest.data["routeVersion"]["versionNo"] == 2 and latest.data["steps"][1]["requiresFAI"] is True
    assert (await demo.get(f"/trace/units/{new_sn}", PL)).data["routeVersion"]["versionNo"] == 2

    # A newer INVALID version is never frozen: runs keep taking the highest READY one.
    bad = await demo.post("/routes/PCBA-STD-V1/execution-config", EN, json={"stationType": "AUTO"})
    assert bad.status == 200, bad.body
    c3 = await demo.post("/routes/PCBA-STD-V1/compile", EN)
    assert (c3.data["status"], c3.data["versionNo"]) == ("INVALID", 3)
    third = await create_run(demo, old["woNo"], qty=1)
    assert third.data["routeVersionNo"] == 2
    assert (await detail(demo, old["runNo"]))["routeVersion"]["versionNo"] == 1


# ---- list and detail -----------------------------------------------------------------------------


async def ing_run(api: Api) -> dict[str, Any]:
    """A PREP run on LINE-ING (ROUTE-AUTO-V1 belongs to product P-ING-AUTO)."""
    wo_no = await released_wo(api, routing="ROUTE-AUTO-V1", line="LINE-ING", product="P-ING-AUTO")
    r = await create_run(api, wo_no, "LINE-ING", 1)
    assert r.status == 200, r.body
    return {"woNo": wo_no, "runNo": r.data["runNo"]}


async def test_run_list_filters(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    ing = await ing_run(demo)
    r = await demo.get("/runs", PL)
    assert r.status == 200 and r.data["total"] == 4
    assert {x["runNo"] for x in r.data["items"]} == {
        "RUN-DEMO-SMT-001",
        "RUN-DEMO-DIP-001",
        flow["runNo"],
        ing["runNo"],
    }
    auth = await demo.get("/runs", PL, params={"status": "AUTHORIZED"})
    assert [x["runNo"] for x in auth.data["items"]] == [flow["runNo"]]
    both = await demo.get("/runs", PL, params={"status": "AUTHORIZED,PREP"})
    assert both.data["total"] == 4
    assert (await demo.get("/runs", PL, params={"status": "COMPLETED"})).data["total"] == 0
    by_wo = await demo.get("/runs", PL, params={"woNo": flow["woNo"]})
    assert [(x["runNo"], x["woNo"]) for x in by_wo.data["items"]] == [(flow["runNo"], flow["woNo"])]
    by_line = await demo.get("/runs", PL, params={"lineCode": "LINE-DIP-A"})
    assert [x["runNo"] for x in by_line.data["items"]] == ["RUN-DEMO-DIP-001"]
    page = await demo.get("/runs", PL, params={"pageSize": 1, "page": 2, "sort": "runNo.asc"})
    assert page.data["total"] == 4 and len(page.data["items"]) == 1
    expect(await demo.get("/runs", PL, params={"sort": "bogus.asc"}), 422, "VALIDATION_FAILED")


async def test_line_scoped_user_sees_only_runs_of_bound_lines(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    ing = await ing_run(demo)
    assert (await demo.get("/runs", PL, params={"lineCode": "LINE-ING"})).data["total"] == 1
    r = await demo.get("/runs", M, params={"pageSize": 100})
    assert r.status == 200, r.body
    assert {x["lineCode"] for x in r.data["items"]} == {"LINE-A", "LINE-DIP-A"}
    assert ing["runNo"] not in {x["runNo"] for x in r.data["items"]} and r.data["total"] == 3
    hidden = await demo.get("/runs", M, params={"lineCode": "LINE-ING"})
    assert hidden.data["total"] == 0 and hidden.data["items"] == []
    assert (await demo.get("/runs", M, params={"search": ing["woNo"]})).data["total"] == 0
    expect(await demo.get(f"/runs/{ing['runNo']}", M), 404, "RUN_NOT_FOUND")
    expect(await demo.get(f"/runs/{ing['runNo']}/units", M), 404, "RUN_NOT_FOUND")  # same scope as the detail
    assert (await demo.get(f"/runs/{flow['runNo']}/units", M)).data["total"] == 1
    assert (await detail(demo, flow["runNo"], M))["lineCode"] == "LINE-A"
    expect(await demo.get("/runs", OP), 403, "FORBIDDEN")


async def test_run_detail_shape(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    await move(demo, PRINT, a, flow)
    await move(demo, "ST-SPI-01", a, flow)
    await move(demo, PRINT, b, flow)
    await track_in(demo, flow, c)
    d = await detail(demo, flow["runNo"])
    assert d["runNo"] == flow["runNo"] and d["status"] == "IN_PROGRESS" and d["startedAt"]
    assert d["workOrder"] == {
        "woNo": flow["woNo"],
        "productCode": "P-1001",
        "plannedQty": 100,
        "status": "IN_PROGRESS",
    }
    assert d["line"]["code"] == "LINE-A" and d["line"]["processType"] == "SMT"
    assert d["line"]["name"] == "SMT Production Line A" and isinstance(d["line"]["id"], int)
    rv = d["routeVersion"]
    assert (rv["versionNo"], rv["status"], rv["id"]) == (1, "READY", d["routeVersionId"]) and rv["compiledAt"]
    steps = d["routeSteps"]
    assert [s["stepNo"] for s in steps] == [1, 2, 3, 4, 5]
    assert [s["operationCode"] for s in steps] == ["PRINTING", "SPI", "MOUNTING", "REFLOW", "AOI"]
    assert steps[0]["operationName"] == "Solder Paste Printing" and steps[0]["requiresFAI"] is True
    assert {s["stationGroupCode"] for s in steps} == {"SMT-LINE-A"} and {s["stationType"] for s in steps} == {
        "MANUAL"
    }
    assert [(s["completed"], s["total"]) for s in steps] == [(2, 3), (1, 3), (0, 3), (0, 3), (0, 3)]
    assert d["unitStats"] == {
        "total": 3,
        "queued": 2,
        "inStation": 1,
        "done": 0,
        "failed": 0,
        "onHold": 0,
        "scrapped": 0,
    }
    assert d["faiTrial"] is None  # only for PREP runs
    recent = d["recentUnits"]
    assert {u["sn"] for u in recent} == {a, b, c}
    assert recent[0] == {
        "sn": c,
        "status": "IN_STATION",
        "currentStepNo": 1,
        "updatedAt": recent[0]["updatedAt"],
    }
    assert {u["sn"]: u["currentStepNo"] for u in recent} == {a: 3, b: 2, c: 1}
    expect(await demo.get("/runs/RUN-NOPE", PL), 404, "RUN_NOT_FOUND")


async def test_run_detail_fai_trial_while_prep(demo: Api, database: Database) -> None:
    flow = await released_run(demo, qty=2)
    await pass_readiness(database, flow["runNo"])  # the trial is gated by readiness like authorization
    assert (await detail(demo, flow["runNo"]))["faiTrial"] is None
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        fai = Inspection(
            run_id=run_id,
            type="FAI",
            status="INSPECTING",
            sample_qty=2,
            started_at=utcnow() - timedelta(seconds=1),
            active_key=f"{run_id}:FAI",
            data={},
        )
        s.add(fai)
        await s.flush()
        fai_id = fai.id
    trial = (await detail(demo, flow["runNo"]))["faiTrial"]
    assert trial == {"faiId": fai_id, "status": "INSPECTING", "sampleQty": 2, "trackedQty": 0}
    r = await move(demo, PRINT, flow["sns"][0], flow)
    assert r.status == 200, r.body
    d = await detail(demo, flow["runNo"])
    assert d["status"] == "PREP" and d["faiTrial"]["trackedQty"] == 1


# ---- units list ----------------------------------------------------------------------------------


async def test_units_list_current_and_next_step_and_filters(demo: Api, database: Database) -> None:
    # One station per step (step-scoped allowed stations), so stations tell the steps apart.
    for n, station in enumerate(SMT_STATIONS, start=1):
        r = await demo.post(
            "/routes/PCBA-STD-V1/execution-config",
            EN,
            json={"scopeType": "STEP", "stepNo": n, "allowedStationCodes": [station]},
        )
        assert r.status == 200, r.body
    assert (await demo.post("/routes/PCBA-STD-V1/compile", EN)).data["versionNo"] == 2
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    await move(demo, PRINT, a, flow)
    await track_in(demo, flow, b)
    for station in SMT_STATIONS:
        await move(demo, station, c, flow)

    r = await demo.get(f"/runs/{flow['runNo']}/units", PL)
    assert r.status == 200, r.body
    assert r.data["total"] == 3 and [u["sn"] for u in r.data["items"]] == [a, b, c]
    ua, ub, uc = r.data["items"]
    assert (ua["status"], ua["currentStepNo"], ua["runNo"], ua["woNo"]) == (
        "QUEUED",
        2,
        flow["runNo"],
        flow["woNo"],
    )
    assert ua["currentStep"] == {
        "stepNo": 2,
        "operationCode": "SPI",
        "operationName": "Solder Paste Inspection",
        "stationType": "MANUAL",
        "stationGroup": "SMT-LINE-A",
        "stationCodes": ["ST-SPI-01"],
    }
    assert ua["nextStep"]["stepNo"] == 3 and ua["nextStep"]["stationCodes"] == ["ST-MOUNT-01"]
    assert ub["status"] == "IN_STATION" and ub["currentStep"]["stationCodes"] == [PRINT]
    assert ub["nextStep"]["operationCode"] == "SPI"
    assert uc["status"] == "DONE" and uc["currentStep"]["stepNo"] == 5 and uc["nextStep"] is None

    async def sns(**params: Any) -> list[str]:
        got = await demo.get(f"/runs/{flow['runNo']}/units", PL, params=params)
        assert got.status == 200, got.body
        return [u["sn"] for u in got.data["items"]]

    assert await sns(status="IN_STATION") == [b]
    assert await sns(status="QUEUED,DONE") == [a, c]
    assert await sns(stationCode="ST-SPI-01") == [a]
    assert await sns(stationCode=PRINT) == [b]
    assert await sns(stationCode="ST-AOI-01") == [c]
    assert await sns(stationCode="ST-MOUNT-01") == []
    assert await sns(stationCode="ST-DIP-INS-01") == []  # another line's station fits nothing
    assert await sns(stationCode="ST-NOPE") == []
    assert await sns(stationCode="ST-AOI-01", status="QUEUED") == []
    expect(await demo.get("/runs/RUN-NOPE/units", PL), 404, "RUN_NOT_FOUND")


async def test_units_list_page_size_up_to_200(demo: Api) -> None:
    flow = await released_run(demo, qty=201)
    r = await demo.get(f"/runs/{flow['runNo']}/units", PL, params={"pageSize": 200})
    assert r.status == 200, r.body
    assert (r.data["total"], r.data["pageSize"], len(r.data["items"])) == (201, 200, 200)
    # Without a per-step station constraint, every LINE-A station fits every SMT step.
    assert r.data["items"][0]["currentStep"]["stationCodes"] == sorted(SMT_STATIONS)
    rest = await demo.get(f"/runs/{flow['runNo']}/units", PL, params={"pageSize": 200, "page": 2})
    assert [u["sn"] for u in rest.data["items"]] == [f"SN-{flow['runNo']}-0201"]
    expect(
        await demo.get(f"/runs/{flow['runNo']}/units", PL, params={"pageSize": 201}), 422, "VALIDATION_FAILED"
    )
    expect(
        await demo.get(f"/runs/{flow['runNo']}/units", PL, params={"pageSize": 0}), 422, "VALIDATION_FAILED"
    )


# ---- generate units ------------------------------------------------------------------------------


async def test_generate_units_with_the_default_prefix(demo: Api) -> None:
    run = await prep_run(demo, qty=3)
    r = await generate(demo, run["runNo"], 2)
    assert r.status == 200, r.body
    assert r.data["generated"] == 2
    assert [u["sn"] for u in r.data["units"]] == [f"SN-{run['runNo']}-0001", f"SN-{run['runNo']}-0002"]
    u = r.data["units"][0]
    assert (u["status"], u["currentStepNo"], u["runNo"], u["woNo"]) == (
        "QUEUED",
        1,
        run["runNo"],
        run["woNo"],
    )
    more = await generate(demo, run["runNo"], 1)  # numbering continues
    assert [u["sn"] for u in more.data["units"]] == [f"SN-{run['runNo']}-0003"]
    assert (await detail(demo, run["runNo"]))["unitStats"]["queued"] == 3


async def test_generate_units_queue_at_the_first_snapshot_step(demo: Api) -> None:
    await new_routing(
        demo, "SPARSE-V1", [(30, "SPI", "SMT-LINE-A"), (10, "PRINTING", "SMT-LINE-A")], compile=True
    )
    run = await prep_run(demo, qty=1, routing="SPARSE-V1")
    r = await generate(demo, run["runNo"], 1)
    assert r.data["units"][0]["currentStepNo"] == 10


async def test_generate_units_with_a_custom_prefix(demo: Api) -> None:
    run = await prep_run(demo, qty=2)
    r = await generate(demo, run["runNo"], 2, snPrefix="PCB-2026-")
    assert [u["sn"] for u in r.data["units"]] == ["PCB-2026-0001", "PCB-2026-0002"]
    expect(await generate(demo, run["runNo"], 1, snPrefix="bad prefix"), 422, "VALIDATION_FAILED")


async def test_generate_units_refused_unless_prep_or_authorized(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=1, units=1)
    extra = await create_run(demo, flow["woNo"], qty=5)
    assert (await generate(demo, extra.data["runNo"], 1)).status == 200  # PREP
    await track_in(demo, flow, flow["sns"][0])
    assert (await detail(demo, flow["runNo"]))["status"] == "IN_PROGRESS"
    expect(await generate(demo, flow["runNo"], 1), 400, "INVALID_RUN_STATUS")
    for status in ("ON_HOLD", "COMPLETED", "SCRAPPED"):
        await set_run_status(database, flow["runNo"], status)
        expect(await generate(demo, flow["runNo"], 1), 400, "INVALID_RUN_STATUS")
    expect(await generate(demo, "RUN-NOPE", 1), 404, "RUN_NOT_FOUND")


async def test_generate_units_on_an_authorized_run(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2, units=1)
    r = await generate(demo, flow["runNo"], 1)
    assert r.status == 200 and r.data["units"][0]["sn"] == f"SN-{flow['runNo']}-0002"


async def test_generate_units_refused_beyond_the_plan(demo: Api) -> None:
    run = await prep_run(demo, qty=3)
    expect(await generate(demo, run["runNo"], 4), 400, "QUANTITY_EXCEEDS_PLAN")
    assert (await generate(demo, run["runNo"], 2)).status == 200
    expect(await generate(demo, run["runNo"], 2), 400, "QUANTITY_EXCEEDS_PLAN")
    assert (await generate(demo, run["runNo"], 1)).status == 200
    expect(await generate(demo, run["runNo"], 1), 400, "QUANTITY_EXCEEDS_PLAN")
    assert (await detail(demo, run["runNo"]))["unitStats"]["total"] == 3


async def test_generate_units_refused_on_a_duplicate_sn(demo: Api) -> None:
    one = await prep_run(demo, qty=2)
    two = await prep_run(demo, qty=2)
    assert (await generate(demo, one["runNo"], 1, snPrefix="DUP-")).status == 200
    r = await generate(demo, two["runNo"], 2, snPrefix="DUP-")
    expect(r, 409, "UNIT_SN_DUPLICATE")
    assert r.body["error"]["details"] == {"sns": ["DUP-0001"]}
    assert (await detail(demo, two["runNo"]))["unitStats"]["total"] == 0  # nothing half-written


async def test_generate_units_quantity_bounds(demo: Api) -> None:
    run = await prep_run(demo, qty=3)
    expect(await generate(demo, run["runNo"], 0), 422, "VALIDATION_FAILED")
    expect(await generate(demo, run["runNo"], 10001), 422, "VALIDATION_FAILED")
    expect(await demo.post(f"/runs/{run['runNo']}/generate-units", PL, json={}), 422, "VALIDATION_FAILED")
    expect(await demo.post(f"/runs/{run['runNo']}/generate-units", Q, json={"quantity": 1}), 403, "FORBIDDEN")


async def test_generate_units_keeps_a_four_digit_running_number(demo: Api, database: Database) -> None:
    run = await prep_run(demo, qty=10000)
    r = await generate(demo, run["runNo"], 10000)
    assert r.status == 200 and r.data["generated"] == 10000
    sns = [u["sn"] for u in r.data["units"]]
    assert sns[0] == f"SN-{run['runNo']}-0001" and sns[9998] == f"SN-{run['runNo']}-9999"
    assert sns[-1] == f"SN-{run['runNo']}-10000"


# ---- delete units --------------------------------------------------------------------------------


async def test_delete_units_of_untracked_queued_units(demo: Api) -> None:
    run = await prep_run(demo, qty=3)
    await generate(demo, run["runNo"], 3)
    r = await demo.delete(f"/runs/{run['runNo']}/units", PL)
    assert r.status == 200 and r.data == {"deleted": 3}, r.body
    assert (await demo.get(f"/runs/{run['runNo']}/units", PL)).data["total"] == 0
    again = await demo.delete(f"/runs/{run['runNo']}/units", PL)
    assert again.status == 200 and again.data == {"deleted": 0}
    regenerated = await generate(demo, run["runNo"], 3)  # the plan is free again
    assert regenerated.data["units"][0]["sn"] == f"SN-{run['runNo']}-0001"


async def test_delete_units_refused_after_a_track_in(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    await track_in(demo, flow, flow["sns"][0])
    expect(await demo.delete(f"/runs/{flow['runNo']}/units", PL), 400, "UNITS_CANNOT_BE_DELETED")
    r = await demo.post(
        f"/stations/{PRINT}/track-out",
        OP,
        json={"sn": flow["sns"][0], "runNo": flow["runNo"], "result": "PASS"},
    )
    assert r.data["status"] == "QUEUED"  # queued again, but tracked
    expect(await demo.delete(f"/runs/{flow['runNo']}/units", PL), 400, "UNITS_CANNOT_BE_DELETED")
    assert (await demo.get(f"/runs/{flow['runNo']}/units", PL)).data["total"] == 2


async def test_delete_units_refused_on_a_terminal_run(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    for station in SMT_STATIONS:
        await move(demo, station, flow["sns"][0], flow)
    assert (await detail(demo, flow["runNo"]))["status"] == "COMPLETED"
    expect(await demo.delete(f"/runs/{flow['runNo']}/units", PL), 400, "RUN_IN_TERMINAL_STATUS")
    other = await released_run(demo)
    for status in ("SCRAPPED", "CLOSED_REWORK"):
        await set_run_status(database, other["runNo"], status)
        expect(await demo.delete(f"/runs/{other['runNo']}/units", PL), 400, "RUN_IN_TERMINAL_STATUS")
    expect(await demo.delete("/runs/RUN-NOPE/units", PL), 404, "RUN_NOT_FOUND")


# ---- authorize / revoke --------------------------------------------------------------------------


async def test_authorize_on_an_authorized_run_is_a_no_op(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    first = await detail(demo, flow["runNo"])
    r = await authorize(demo, flow["runNo"])
    assert r.status == 200 and r.data["status"] == "AUTHORIZED"
    assert (r.data["authorizedBy"], r.data["authorizedAt"]) == (first["authorizedBy"], first["authorizedAt"])


async def test_revoke_on_a_prep_run_is_a_no_op(demo: Api) -> None:
    flow = await released_run(demo)
    r = await authorize(demo, flow["runNo"], "REVOKE")
    assert r.status == 200 and r.data["status"] == "PREP" and r.data["authorizedBy"] is None


async def test_revoke_returns_an_authorized_run_to_prep(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    assert (await detail(demo, flow["runNo"]))["authorizedBy"]
    r = await authorize(demo, flow["runNo"], "REVOKE")
    assert r.status == 200, r.body
    assert r.data["status"] == "PREP" and r.data["authorizedBy"] is None and r.data["authorizedAt"] is None
    expect(
        await demo.post(
            f"/stations/{PRINT}/track-in",
            OP,
            json={"sn": flow["sns"][0], "woNo": flow["woNo"], "runNo": flow["runNo"]},
        ),
        400,
        "RUN_NOT_AUTHORIZED",  # back in PREP with a PASS FAI: no trial, no production
    )


async def test_authorize_refused_unless_prep(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    await track_in(demo, flow, flow["sns"][0])
    expect(await authorize(demo, flow["runNo"]), 400, "RUN_NOT_READY")
    await add_check(database, flow["runNo"], "FORMAL", "FAILED")  # RUN_NOT_READY comes first
    expect(await authorize(demo, flow["runNo"]), 400, "RUN_NOT_READY")
    await set_run_status(database, flow["runNo"], "ON_HOLD")
    expect(await authorize(demo, flow["runNo"]), 400, "RUN_NOT_READY")
    expect(await authorize(demo, "RUN-NOPE"), 404, "RUN_NOT_FOUND")


async def test_authorize_refused_when_the_latest_formal_readiness_check_failed(
    demo: Api, database: Database
) -> None:
    flow = await released_run(demo)  # no FAI either: readiness must be reported first
    await add_check(database, flow["runNo"], "FORMAL", "PASSED", utcnow() - timedelta(minutes=5))
    await add_check(database, flow["runNo"], "FORMAL", "FAILED", utcnow() - timedelta(minutes=1))
    expect(await authorize(demo, flow["runNo"]), 400, "READINESS_CHECK_FAILED")
    await pass_fai(database, flow["runNo"])
    expect(await authorize(demo, flow["runNo"]), 400, "READINESS_CHECK_FAILED")
    # A newer failed PRECHECK is advisory; a newer PASSED FORMAL lifts the gate.
    await add_check(database, flow["runNo"], "PRECHECK", "FAILED")
    await add_check(database, flow["runNo"], "FORMAL", "PASSED")
    r = await authorize(demo, flow["runNo"])
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body


async def test_authorize_refused_without_a_passed_fai(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    await add_check(database, flow["runNo"], "PRECHECK", "FAILED")  # advisory only
    await add_check(database, flow["runNo"], "FORMAL", "PASSED")
    expect(await authorize(demo, flow["runNo"]), 400, "FAI_NOT_PASSED")
    for status in ("PENDING", "INSPECTING", "FAIL"):
        async with database.writer() as s, s.begin():
            await s.execute(update(Inspection).values(status="CANCELLED"))
        await add_fai(database, flow["runNo"], status)
        expect(await authorize(demo, flow["runNo"]), 400, "FAI_NOT_PASSED")
    # The latest FAI decides: an older PASS does not count after a newer FAIL.
    other = await released_run(demo)
    await pass_readiness(database, other["runNo"])
    await pass_fai(database, other["runNo"])
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == other["runNo"]))
        older = utcnow() - timedelta(hours=1)
        await s.execute(update(Inspection).where(Inspection.run_id == run_id).values(created_at=older))
    await add_fai(database, other["runNo"], "FAIL")
    expect(await authorize(demo, other["runNo"]), 400, "FAI_NOT_PASSED")
    assert (await detail(demo, other["runNo"]))["status"] == "PREP"


async def test_authorize_refused_when_the_fai_is_not_signed(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    await pass_readiness(database, flow["runNo"])
    await add_fai(database, flow["runNo"], "PASS", passed_qty=1, failed_qty=0)
    expect(await authorize(demo, flow["runNo"]), 400, "FAI_NOT_SIGNED")
    async with database.writer() as s, s.begin():
        await s.execute(update(Inspection).values(signed_at=utcnow(), signed_by="quality"))
    assert (await authorize(demo, flow["runNo"])).data["status"] == "AUTHORIZED"


async def test_mrb_override_run_with_fai_waiver_bypasses_the_fai_gate(demo: Api, database: Database) -> None:
    flows = [await released_run(demo) for _ in range(3)]
    for flow in flows:
        await pass_readiness(database, flow["runNo"])

    async def mark(run_no: str, **values: Any) -> None:
        async with database.writer() as s, s.begin():  # rework runs come from the MRB workflow (own tests)
            await s.execute(
                update(Run).where(Run.run_no == run_no).values(authorization_type="MRB_OVERRIDE", **values)
            )

    await mark(flows[0]["runNo"], mrb_fai_waiver=True, mrb_waiver_reason="same lot, FAI passed on parent")
    await mark(flows[1]["runNo"], mrb_fai_waiver=True, mrb_waiver_reason=None)
    await mark(flows[2]["runNo"], mrb_fai_waiver=False, mrb_waiver_reason="no waiver")
    r = await authorize(demo, flows[0]["runNo"])
    assert (
        r.status == 200 and r.data["status"] == "AUTHORIZED" and r.data["authorizationType"] == "MRB_OVERRIDE"
    )
    assert r.data["mrbFaiWaiver"] is True
    expect(await authorize(demo, flows[1]["runNo"]), 400, "FAI_NOT_PASSED")  # a waiver needs its reason
    expect(await authorize(demo, flows[2]["runNo"]), 400, "FAI_NOT_PASSED")
    # The waiver skips FAI only, never readiness.
    await set_run_status(database, flows[0]["runNo"], "PREP")
    await add_check(database, flows[0]["runNo"], "FORMAL", "FAILED")
    expect(await authorize(demo, flows[0]["runNo"]), 400, "READINESS_CHECK_FAILED")


async def test_authorize_without_fai_steps_needs_no_fai(demo: Api) -> None:
    ing = await ing_run(demo)  # ROUTE-AUTO-V1 has no requiresFAI step
    r = await authorize(demo, ing["runNo"])
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body


async def test_revoke_and_authorize_need_their_own_permission(demo: Api, database: Database) -> None:
    roles = [
        ("revoker", ["run:revoke", "run:read"]),
        ("authorizer", ["run:authorize", "run:read"]),
    ]
    for code, perms in roles:
        r = await demo.post(
            "/roles", A, json={"code": code, "name": code, "permissions": perms, "dataScope": "ALL"}
        )
        assert r.status in (200, 201), r.body
        u = await demo.post(
            "/users",
            A,
            json={"email": f"{code}@example.com", "name": code, "password": "Test123!", "roles": [code]},
        )
        assert u.status in (200, 201), u.body
    flow = await authorized_run(demo, database)
    expect(await authorize(demo, flow["runNo"], "AUTHORIZE", "revoker@example.com"), 403, "FORBIDDEN")
    expect(await authorize(demo, flow["runNo"], "REVOKE", "authorizer@example.com"), 403, "FORBIDDEN")
    r = await authorize(demo, flow["runNo"], "REVOKE", "revoker@example.com")
    assert r.status == 200 and r.data["status"] == "PREP", r.body
    expect(await authorize(demo, flow["runNo"], "AUTHORIZE", "revoker@example.com"), 403, "FORBIDDEN")
    r = await authorize(demo, flow["runNo"], "AUTHORIZE", "authorizer@example.com")
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body
    expect(await authorize(demo, flow["runNo"], "REVOKE", Q), 403, "FORBIDDEN")
    bad = await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "APPROVE"})
    expect(bad, 422, "VALIDATION_FAILED")


# ---- the state machine ---------------------------------------------------------------------------


async def test_run_state_machine_over_http(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no, sn = flow["runNo"], flow["sns"][0]
    assert (await detail(demo, run_no))["status"] == "PREP"
    await pass_readiness(database, run_no)
    await pass_fai(database, run_no)
    assert (await authorize(demo, run_no)).data["status"] == "AUTHORIZED"
    assert (await authorize(demo, run_no, "REVOKE")).data["status"] == "PREP"
    auth = await authorize(demo, run_no)
    assert auth.data["status"] == "AUTHORIZED" and auth.data["authorizedBy"]
    await track_in(demo, flow, sn)
    d = await detail(demo, run_no)
    assert d["status"] == "IN_PROGRESS" and d["startedAt"] and d["endedAt"] is None
    # Disallowed moves from IN_PROGRESS: authorize refused, revoke a no-op.
    expect(await authorize(demo, run_no), 400, "RUN_NOT_READY")
    assert (await authorize(demo, run_no, "REVOKE")).data["status"] == "IN_PROGRESS"
    await demo.post(f"/stations/{PRINT}/track-out", OP, json={"sn": sn, "runNo": run_no, "result": "PASS"})
    for station in SMT_STATIONS[1:]:
        await move(demo, station, sn, flow)
    done = await detail(demo, run_no)
    assert done["status"] == "COMPLETED" and done["endedAt"] and done["startedAt"] == d["startedAt"]
    expect(await authorize(demo, run_no), 400, "RUN_NOT_READY")
    assert (await authorize(demo, run_no, "REVOKE")).data["status"] == "COMPLETED"
    r = await demo.get(
        "/audit-logs", A, params={"entityType": "RUN", "entityId": str(done["id"]), "pageSize": 100}
    )
    actions = [x["action"] for x in r.data["items"] if x["status"] == "SUCCESS"]
    for action in ("RUN_CREATE", "RUN_AUTHORIZE", "RUN_REVOKE", "RUN_COMPLETE"):
        assert action in actions, actions
    async with database.reader() as s:
        statuses = set(await s.scalars(select(Unit.status).where(Unit.sn == sn)))
    assert statuses == {"DONE"}
