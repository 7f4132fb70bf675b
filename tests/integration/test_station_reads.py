"""Station-side reads (domain.md §4 "Helper reads"): queue, resolve-unit, data specs of a step (S10)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import Station, Track, Unit, WorkOrder
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, Q, authorized_run, move, released_run, seed

AOI_OP = "operator.aoi@example.com"
MAT = "material@example.com"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def track_in(api: Api, station: str, sn: str, flow: dict[str, Any]) -> None:
    r = await api.post(
        f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200, r.body


async def orphan_unit(database: Database, sn: str) -> None:
    """A unit of a work order that was never put into a run (run_id null): no API makes one."""
    async with database.writer() as s, s.begin():
        wo_id = await s.scalar(select(WorkOrder.id).where(WorkOrder.wo_no == "WO-DEMO-SMT-001"))
        s.add(Unit(sn=sn, wo_id=wo_id, run_id=None, status="QUEUED", current_step_no=1, meta={}))


# ---- queue ----------------------------------------------------------------------------------------------


async def test_queue_lists_units_with_an_open_track_at_that_station_only(
    demo: Api, database: Database
) -> None:
    api = demo
    flow = await authorized_run(api, database, qty=3)
    sn1, sn2, _queued = flow["sns"]
    await track_in(api, "ST-PRINT-01", sn1, flow)
    await track_in(api, "ST-MOUNT-01", sn2, flow)  # every LINE-A station fits every SMT step

    q = await api.get("/stations/ST-PRINT-01/queue", OP)
    assert q.status == 200
    assert [(u["sn"], u["status"], u["stepNo"], u["runNo"], u["woNo"]) for u in q.data] == [
        (sn1, "IN_STATION", 1, flow["runNo"], flow["woNo"])
    ]
    assert q.data[0]["inAt"].endswith("Z")
    assert [u["sn"] for u in (await api.get("/stations/ST-MOUNT-01/queue", OP)).data] == [sn2]
    assert (await api.get("/stations/ST-SPI-01/queue", OP)).data == []  # sn3 is queued but in no station

    out = await api.post(
        "/stations/ST-PRINT-01/track-out", OP, json={"sn": sn1, "runNo": flow["runNo"], "result": "PASS"}
    )
    assert out.status == 200, out.body
    assert (await api.get("/stations/ST-PRINT-01/queue", OP)).data == []  # the track is closed
    assert (await api.get("/stations/ST-MOUNT-01/queue", Q)).status == 200  # exec:read suffices


async def test_queue_scope_permissions_and_unknown_station(demo: Api, database: Database) -> None:
    api = demo
    flow = await authorized_run(api, database)
    await track_in(api, "ST-PRINT-01", flow["sns"][0], flow)
    expect(await api.get("/stations/ST-PRINT-01/queue", AOI_OP), 403, "STATION_NOT_ASSIGNED")
    own = await api.get("/stations/ST-AOI-01/queue", AOI_OP)
    assert own.status == 200 and own.data == []
    expect(await api.get("/stations/ST-NOPE/queue", OP), 404, "STATION_NOT_FOUND")
    expect(await api.get("/stations/ST-PRINT-01/queue", EN), 403, "FORBIDDEN")  # no exec permission
    expect(await api.get("/stations/ST-PRINT-01/queue", MAT), 403, "FORBIDDEN")
    assert (await api.get("/stations/ST-PRINT-01/queue")).status == 401


async def test_queue_is_oldest_first_and_capped_at_50(demo: Api, database: Database) -> None:
    api = demo
    flow = await released_run(api, qty=55)
    start = utcnow() - timedelta(hours=2)
    async with database.writer() as s, s.begin():
        station_id = await s.scalar(select(Station.id).where(Station.code == "ST-PRINT-01"))
        units = (await s.scalars(select(Unit).where(Unit.sn.in_(flow["sns"])))).all()
        by_sn = {u.sn: u for u in units}
        # Open tracks: the last SN entered first, the first SN last.
        for i, sn in enumerate(reversed(flow["sns"])):
            s.add(
                Track(
                    unit_id=by_sn[sn].id,
                    step_no=1,
                    station_id=station_id,
                    source="MANUAL",
                    in_at=start + timedelta(seconds=i),
                    meta={},
                )
            )
            by_sn[sn].status = "IN_STATION"
    q = await api.get("/stations/ST-PRINT-01/queue", OP)
    assert q.status == 200 and len(q.data) == 50
    assert [u["sn"] for u in q.data] == list(reversed(flow["sns"]))[:50]


# ---- resolve-unit ---------------------------------------------------------------------------------------


async def test_resolve_unit(demo: Api, database: Database) -> None:
    api = demo
    r = await api.get("/stations/resolve-unit/SN-DEMO-SMT-0001", OP)
    assert r.status == 200
    assert (r.data["sn"], r.data["woNo"], r.data["runNo"]) == (
        "SN-DEMO-SMT-0001",
        "WO-DEMO-SMT-RUN-001",
        "RUN-DEMO-SMT-001",
    )
    await orphan_unit(database, "SN-ORPHAN-1")
    orphan = await api.get("/stations/resolve-unit/SN-ORPHAN-1", Q)
    assert orphan.status == 200
    assert (orphan.data["woNo"], orphan.data["runNo"]) == ("WO-DEMO-SMT-001", None)
    expect(await api.get("/stations/resolve-unit/SN-NOPE", OP), 404, "UNIT_NOT_FOUND")
    expect(await api.get("/stations/resolve-unit/SN-DEMO-SMT-0001", PL), 403, "FORBIDDEN")


# ---- data specs of the unit's step (S10 step 5) ---------------------------------------------------------


async def _spec(api: Api, name: str, **extra: Any) -> dict[str, Any]:
    r = await api.post(
        "/data-collection-specs",
        EN,
        json={
            "operationCode": "REFLOW",
            "name": name,
            "itemType": "KEY",
            "dataType": "NUMBER",
            "method": "MANUAL",
            "triggerType": "EACH_UNIT",
            **extra,
        },
    )
    assert r.status == 201, r.body
    return r.data


async def test_data_specs_lists_only_the_specs_bound_to_the_current_step(
    demo: Api, database: Database
) -> None:
    api = demo
    peak = await _spec(api, "PEAK_TEMP", isRequired=True, spec={"min": 240, "max": 260, "unit": "°C"})
    await _spec(api, "TIME_ABOVE_LIQUIDUS", spec={"min": 45, "max": 90, "unit": "s"})  # active, never bound
    old = await released_run(api)  # frozen on version 1: nothing bound anywhere

    r = await api.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 4, "dataSpecIds": [peak["id"]]},
    )
    assert r.status == 200, r.body
    assert (await api.post("/routes/PCBA-STD-V1/compile", EN)).data["versionNo"] == 2
    flow = await authorized_run(api, database, qty=2)
    sn, sn_first = flow["sns"]
    for station in SMT_STATIONS[:3]:
        assert (await move(api, station, sn, flow)).status == 200

    d = await api.get(f"/stations/ST-REFLOW-01/unit/{sn}/data-specs", OP)
    assert d.status == 200, d.body
    assert {k: d.data[k] for k in ("sn", "stepNo", "operationCode", "operationName")} == {
        "sn": sn,
        "stepNo": 4,
        "operationCode": "REFLOW",
        "operationName": "Reflow Soldering",
    }
    assert d.data["specs"] == [
        {
            "id": peak["id"],
            "name": "PEAK_TEMP",
            "itemType": "KEY",
            "dataType": "NUMBER",
            "method": "MANUAL",
            "triggerType": "EACH_UNIT",
            "isRequired": True,
            "spec": {"min": 240, "max": 260, "target": None, "lsl": None, "usl": None, "unit": "°C"},
        }
    ]
    # A step with nothing bound lists nothing (any active spec of its operation is still accepted).
    first = (await api.get(f"/stations/ST-PRINT-01/unit/{sn_first}/data-specs", OP)).data
    assert (first["stepNo"], first["operationCode"], first["specs"]) == (1, "PRINTING", [])
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn == old["sns"][0]).values(current_step_no=4))
    unbound = (await api.get(f"/stations/ST-REFLOW-01/unit/{old['sns'][0]}/data-specs", Q)).data
    assert (unbound["stepNo"], unbound["operationCode"], unbound["specs"]) == (4, "REFLOW", [])

    # An inactive bound spec is ignored at track-out, so it is not listed either.
    assert (
        await api.patch(f"/data-collection-specs/{peak['id']}", EN, json={"isActive": False})
    ).status == 200
    assert (await api.get(f"/stations/ST-REFLOW-01/unit/{sn}/data-specs", OP)).data["specs"] == []


async def test_data_specs_refusals(demo: Api, database: Database) -> None:
    api = demo
    await orphan_unit(database, "SN-ORPHAN-2")
    expect(await api.get("/stations/ST-PRINT-01/unit/SN-ORPHAN-2/data-specs", OP), 400, "UNIT_NO_RUN")
    expect(await api.get("/stations/ST-PRINT-01/unit/SN-NOPE/data-specs", OP), 404, "UNIT_NOT_FOUND")
    expect(await api.get("/stations/ST-NOPE/unit/SN-DEMO-SMT-0001/data-specs", OP), 404, "STATION_NOT_FOUND")
    r = await api.get("/stations/ST-PRINT-01/unit/SN-DEMO-SMT-0001/data-specs", AOI_OP)
    expect(r, 403, "STATION_NOT_ASSIGNED")
    own = await api.get("/stations/ST-AOI-01/unit/SN-DEMO-SMT-0001/data-specs", AOI_OP)
    assert own.status == 200 and (own.data["stepNo"], own.data["specs"]) == (1, [])
    expect(await api.get("/stations/ST-PRINT-01/unit/SN-DEMO-SMT-0001/data-specs", EN), 403, "FORBIDDEN")
