"""Plant master data over HTTP: lines, station groups, stations (data scope), operations, work centers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import (
    FeederSlot,
    Line,
    Operation,
    Run,
    Station,
    Track,
    Unit,
    WorkCenter,
    WorkOrder,
)
from central.domain.clock import utcnow
from tests.client import Api

ENG = "eng@example.com"  # line:config, operation:config, route:*
ADMIN = "adm@example.com"  # system:*, exec:read, route:read — no line:config / operation:config
PLANNER = "plan@example.com"  # route:read only
TRACE = "tr@example.com"  # nothing of the above

LINE_A = {
    "code": "LINE-A",
    "name": "SMT Production Line A",
    "processType": "SMT",
    "readinessChecks": {"enabled": ["ROUTE", "LOADING", "EQUIPMENT", "MATERIAL", "STENCIL", "SOLDER_PASTE"]},
}
LINE_DIP = {
    "code": "LINE-DIP-A",
    "name": "DIP Production Line A",
    "processType": "DIP",
    "readinessChecks": {"enabled": ["ROUTE", "EQUIPMENT", "MATERIAL"]},
}
SMT_STATIONS = [
    ("ST-PRINT-01", "Stencil Printer 01"),
    ("ST-SPI-01", "SPI 01"),
    ("ST-MOUNT-01", "Pick & Place 01"),
]
DIP_STATIONS = [("ST-DIP-INS-01", "DIP Insertion 01"), ("ST-DIP-TEST-01", "Functional Test 01")]


async def users(make_user: Any, *pairs: tuple[str, str]) -> None:
    for email, role in pairs:
        await make_user(email, role)


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params={"pageSize": 100, **params})).data["items"]


async def plant(api: Api) -> dict[str, int]:
    """LINE-A (group SMT-LINE-A, three MANUAL stations) and LINE-DIP-A (group DIP-LINE-A, two stations);
    returns station code → id."""
    for line in (LINE_A, LINE_DIP):
        assert (await api.post("/lines", ENG, json=line)).status == 201
    for group, line in (("SMT-LINE-A", "LINE-A"), ("DIP-LINE-A", "LINE-DIP-A")):
        r = await api.post("/stations/groups", ENG, json={"code": group, "name": group, "lineCode": line})
        assert r.status == 200, r.body
    ids = {}
    for stations, line, group in (
        (SMT_STATIONS, "LINE-A", "SMT-LINE-A"),
        (DIP_STATIONS, "LINE-DIP-A", "DIP-LINE-A"),
    ):
        for code, name in stations:
            body = {"code": code, "name": name, "lineCode": line, "groupCode": group, "stationType": "MANUAL"}
            r = await api.post("/stations", ENG, json=body)
            assert r.status == 200, r.body
            ids[code] = r.data["id"]
    return ids


def codes(r: Any, key: str = "code") -> list[str]:
    return [i[key] for i in r.data["items"]]


async def open_track(
    database: Database, line_code: str, station_code: str, *, run_status: str = "IN_PROGRESS"
) -> None:
    """A work order with a run on the line and one unit inside the station (an open track)."""
    async with database.writer() as s, s.begin():
        line = await s.scalar(select(Line).where(Line.code == line_code))
        st = await s.scalar(select(Station).where(Station.code == station_code))
        assert line is not None and st is not None
        wo = WorkOrder(wo_no=f"WO-{station_code}", product_code="P-1001", planned_qty=1, status="IN_PROGRESS")
        s.add(wo)
        await s.flush()
        run = Run(run_no=f"RUN-{station_code}", wo_id=wo.id, line_id=line.id, plan_qty=1, status=run_status)
        s.add(run)
        await s.flush()
        unit = Unit(sn=f"SN-{station_code}", wo_id=wo.id, run_id=run.id, status="IN_STATION")
        s.add(unit)
        await s.flush()
        s.add(Track(unit_id=unit.id, step_no=1, station_id=st.id, source="MANUAL", in_at=utcnow()))


# ---- lines ----------------------------------------------------------------------------------------------


async def test_lines_create_read_list_and_audit(api: Api, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"), (TRACE, "trace"))
    r = await api.post(
        "/lines", ENG, json={**LINE_A, "readinessChecks": {"enabled": ["ROUTE", "ROUTE", "LOADING"]}}
    )
    assert r.status == 201
    assert r.data["code"] == "LINE-A" and r.data["processType"] == "SMT"
    assert r.data["readinessChecks"] == {"enabled": ["ROUTE", "LOADING"]}  # duplicates dropped
    assert r.data["meta"] == {"readinessChecks": {"enabled": ["ROUTE", "LOADING"]}}
    line_id = r.data["id"]
    r = await api.post(
        "/lines", ENG, json={"code": "LINE-DIP-A", "name": "DIP Production Line A", "processType": "DIP"}
    )
    assert r.status == 201 and r.data["readinessChecks"] is None  # no list: every type is evaluated

    by_id, by_code = await api.get(f"/lines/{line_id}", TRACE), await api.get("/lines/LINE-A", TRACE)
    assert by_id.status == by_code.status == 200 and by_id.data == by_code.data
    missing = await api.get("/lines/LINE-NOPE", TRACE)
    assert missing.status == 404 and missing.code == "LINE_NOT_FOUND"
    assert (await api.get("/lines/999999", TRACE)).code == "LINE_NOT_FOUND"

    assert codes(await api.get("/lines", TRACE, params={"sort": "code.asc"})) == ["LINE-A", "LINE-DIP-A"]
    assert codes(await api.get("/lines", TRACE, params={"sort": "name.desc"})) == ["LINE-A", "LINE-DIP-A"]
    assert codes(await api.get("/lines", TRACE, params={"processType": "DIP"})) == ["LINE-DIP-A"]
    assert codes(await api.get("/lines", TRACE, params={"search": "smt"})) == ["LINE-A"]
    assert (await api.get("/lines", TRACE, params={"sort": "processType.asc"})).status == 422

    dup = await api.post("/lines", ENG, json=LINE_A)
    assert dup.status == 409 and dup.code == "LINE_CODE_EXISTS"
    later_phase = await api.post(
        "/lines",
        ENG,
        json={**LINE_A, "code": "LINE-X", "readinessChecks": {"enabled": ["ROUTE", "PREP_BAKE"]}},
    )
    assert later_phase.status == 422 and later_phase.code == "VALIDATION_FAILED"
    bad_type = await api.post("/lines", ENG, json={"code": "LINE-Y", "name": "Y", "processType": "THT"})
    assert bad_type.status == 422
    forbidden = await api.post("/lines", ADMIN, json={**LINE_A, "code": "LINE-Z"})
    assert forbidden.status == 403 and "line:config" in forbidden.body["error"]["message"]

    rows = await audit_rows(api, entityType="LINE")
    created = [x for x in rows if x["action"] == "LINE_CREATE" and x["status"] == "SUCCESS"]
    assert [x["entityDisplay"] for x in created] == ["LINE-DIP-A", "LINE-A"]
    assert {"op": "add", "path": "/processType", "before": None, "after": "SMT"} in created[1]["diff"]
    assert any(x["status"] == "FAIL" and x["errorCode"] == "LINE_CODE_EXISTS" for x in rows)


async def test_line_update_and_delete(api: Api, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"))
    line_id = (await api.post("/lines", ENG, json=LINE_A)).data["id"]
    r = await api.patch(
        "/lines/LINE-A",
        ENG,
        json={"name": "SMT Line A (north)", "processType": "DIP", "meta": {"building": "B2"}},
    )
    assert r.status == 200
    assert r.data["name"] == "SMT Line A (north)" and r.data["processType"] == "DIP"
    assert r.data["meta"]["building"] == "B2" and r.data["readinessChecks"] == LINE_A["readinessChecks"]
    r = await api.patch(f"/lines/{line_id}", ENG, json={"meta": {"building": None, "hall": "3"}})
    assert r.status == 200 and "building" not in r.data["meta"] and r.data["meta"]["hall"] == "3"
    reserved = await api.patch("/lines/LINE-A", ENG, json={"meta": {"readinessChecks": {"enabled": []}}})
    assert reserved.status == 422  # readiness config has its own endpoint
    assert (await api.patch("/lines/LINE-A", ENG, json={"readinessChecks": {"enabled": []}})).status == 422
    missing = await api.patch("/lines/LINE-NOPE", ENG, json={"name": "x"})
    assert missing.status == 404 and missing.code == "LINE_NOT_FOUND"
    assert (await api.patch("/lines/LINE-A", ADMIN, json={"name": "x"})).status == 403

    update = (await audit_rows(api, entityType="LINE", action="LINE_UPDATE", status="SUCCESS"))[-1]
    assert {"op": "replace", "path": "/processType", "before": "SMT", "after": "DIP"} in update["diff"]
    assert {
        "op": "replace",
        "path": "/name",
        "before": "SMT Production Line A",
        "after": "SMT Line A (north)",
    } in (update["diff"])

    gone = await api.delete("/lines/LINE-A", ENG)
    assert gone.status == 200 and gone.data == {"id": line_id, "deleted": True}
    assert (await api.get(f"/lines/{line_id}", ENG)).code == "LINE_NOT_FOUND"
    again = await api.delete("/lines/LINE-A", ENG)
    assert again.status == 404 and again.code == "LINE_NOT_FOUND"
    deleted = await audit_rows(api, entityType="LINE", action="LINE_DELETE", status="SUCCESS")
    assert len(deleted) == 1 and deleted[0]["entityId"] == str(line_id)
    assert {"op": "remove", "path": "/code", "before": "LINE-A", "after": None} in deleted[0]["diff"]


async def test_line_delete_refused_while_anything_refers_to_it(
    api: Api, database: Database, make_user: Any
) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"))
    for code in ("L-STATION", "L-GROUP", "L-USER", "L-SLOT", "L-DISPATCH", "L-RUN", "L-FREE"):
        assert (
            await api.post("/lines", ENG, json={"code": code, "name": code, "processType": "SMT"})
        ).status == 201
    await api.post("/stations/groups", ENG, json={"code": "G-1", "name": "G 1", "lineCode": "L-GROUP"})
    await api.post("/stations", ENG, json={"code": "ST-1", "name": "St 1", "lineCode": "L-STATION"})
    lines = {
        x["code"]: x["id"] for x in (await api.get("/lines", ENG, params={"pageSize": 100})).data["items"]
    }
    await make_user("mat@example.com", "material", line_ids=[lines["L-USER"]])
    async with database.writer() as s, s.begin():
        s.add(FeederSlot(line_id=lines["L-SLOT"], slot_code="SLOT-01", position=1))
        dispatch = {"lineId": lines["L-DISPATCH"], "lineCode": "L-DISPATCH"}
        s.add(WorkOrder(wo_no="WO-D", product_code="P-1", planned_qty=1, meta={"dispatch": dispatch}))
        wo = WorkOrder(wo_no="WO-R", product_code="P-1", planned_qty=1)
        s.add(wo)
        await s.flush()
        s.add(Run(run_no="RUN-R", wo_id=wo.id, line_id=lines["L-RUN"], plan_qty=1, status="PREP"))

    expected = {
        "L-STATION": "stations",
        "L-GROUP": "station_groups",
        "L-USER": "user_line_bindings",
        "L-SLOT": "feeder_slots",
        "L-DISPATCH": "work_orders",
        "L-RUN": "runs",
    }
    for code, table in expected.items():
        r = await api.delete(f"/lines/{code}", ENG)
        assert r.status == 409 and r.code == "LINE_HAS_DEPENDENCIES", (code, r.body)
        assert r.body["error"]["details"] == [table]
        assert (await api.get(f"/lines/{code}", ENG)).status == 200
    assert (await api.delete("/lines/L-FREE", ENG)).status == 200

    in_use = await api.patch("/lines/L-RUN", ENG, json={"processType": "DIP"})
    assert in_use.status == 409 and in_use.code == "LINE_IN_USE"
    assert (
        await api.patch("/lines/L-RUN", ENG, json={"processType": "SMT", "name": "same type"})
    ).status == 200
    fails = await audit_rows(api, entityType="LINE", action="LINE_DELETE", status="FAIL")
    assert len(fails) == 6 and {f["errorCode"] for f in fails} == {"LINE_HAS_DEPENDENCIES"}


# ---- station groups and stations ------------------------------------------------------------------------


async def test_station_groups_and_stations(api: Api, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"), (PLANNER, "planner"))
    ids = await plant(api)
    r = await api.post("/stations/groups", ENG, json={"code": "GRP-FLOAT", "name": "Any line"})
    assert r.status == 200 and r.data["lineCode"] is None and r.data["stationCodes"] == []
    dup = await api.post("/stations/groups", ENG, json={"code": "SMT-LINE-A", "name": "again"})
    assert dup.status == 409 and dup.code == "STATION_GROUP_CODE_EXISTS"
    no_line = await api.post(
        "/stations/groups", ENG, json={"code": "G-X", "name": "x", "lineCode": "LINE-NOPE"}
    )
    assert no_line.status == 404 and no_line.code == "LINE_NOT_FOUND"

    groups = await api.get("/stations/groups", ENG, params={"sort": "code.asc"})
    assert codes(groups) == ["DIP-LINE-A", "GRP-FLOAT", "SMT-LINE-A"]
    smt = groups.data["items"][2]
    assert smt["lineCode"] == "LINE-A" and smt["stationCodes"] == sorted(c for c, _ in SMT_STATIONS)
    assert codes(await api.get("/stations/groups", ADMIN, params={"lineCode": "LINE-DIP-A"})) == [
        "DIP-LINE-A"
    ]

    body = {
        "code": "ST-AOI-01",
        "name": "AOI 01",
        "lineCode": "LINE-A",
        "groupCode": "SMT-LINE-A",
        "stationType": "AUTO",
    }
    r = await api.post("/stations", ENG, json=body)
    assert r.status == 200
    assert r.data["lineCode"] == "LINE-A" and r.data["groupCode"] == "SMT-LINE-A"
    assert r.data["stationType"] == "AUTO" and r.data["isActive"] is True
    dup = await api.post("/stations", ENG, json=body)
    assert dup.status == 409 and dup.code == "STATION_CODE_EXISTS"
    no_line = await api.post("/stations", ENG, json={**body, "code": "ST-N", "lineCode": "LINE-NOPE"})
    assert no_line.status == 404 and no_line.code == "LINE_NOT_FOUND"
    no_group = await api.post("/stations", ENG, json={**body, "code": "ST-N", "groupCode": "GRP-NOPE"})
    assert no_group.status == 404 and no_group.code == "STATION_GROUP_NOT_FOUND"
    other_line = await api.post("/stations", ENG, json={**body, "code": "ST-N", "groupCode": "DIP-LINE-A"})
    assert other_line.status == 400 and other_line.code == "STATION_GROUP_LINE_MISMATCH"
    assert (
        await api.post("/stations", ENG, json={**body, "code": "ST-N", "stationType": "ROBOT"})
    ).status == 422
    assert (await api.post("/stations", ADMIN, json={**body, "code": "ST-N"})).status == 403

    everything = await api.get("/stations", ENG, params={"pageSize": 100})
    assert everything.data["total"] == len(ids) + 1
    dip = await api.get("/stations", ADMIN, params={"lineCode": "LINE-DIP-A", "sort": "code.asc"})
    assert (
        codes(dip) == ["ST-DIP-INS-01", "ST-DIP-TEST-01"]
        and dip.data["items"][0]["groupCode"] == "DIP-LINE-A"
    )
    assert codes(await api.get("/stations", ENG, params={"stationType": "AUTO"})) == ["ST-AOI-01"]
    by_line = await api.get("/stations", ENG, params={"sort": "line.code.desc,code.asc"})
    assert codes(by_line)[:2] == ["ST-DIP-INS-01", "ST-DIP-TEST-01"]
    assert codes(await api.get("/stations", ENG, params={"search": "pick"})) == ["ST-MOUNT-01"]
    assert (await api.get("/stations", PLANNER)).status == 403
    assert (await api.get("/stations/groups", PLANNER)).status == 403

    r = await api.patch(
        "/stations/ST-AOI-01",
        ENG,
        json={"name": "AOI 01 (inline)", "groupCode": None, "stationType": "TEST", "isActive": False},
    )
    assert r.status == 200
    assert r.data["name"] == "AOI 01 (inline)" and r.data["groupCode"] is None
    assert r.data["stationType"] == "TEST" and r.data["isActive"] is False
    r = await api.patch("/stations/ST-AOI-01", ENG, json={"groupCode": "GRP-FLOAT"})
    assert r.status == 200 and r.data["groupCode"] == "GRP-FLOAT" and r.data["stationType"] == "TEST"
    missing = await api.patch("/stations/ST-NOPE", ENG, json={"name": "x"})
    assert missing.status == 404 and missing.code == "STATION_NOT_FOUND"
    bad_group = await api.patch("/stations/ST-AOI-01", ENG, json={"groupCode": "GRP-NOPE"})
    assert bad_group.status == 404 and bad_group.code == "STATION_GROUP_NOT_FOUND"
    assert (await api.patch("/stations/ST-AOI-01", ENG, json={"groupCode": "DIP-LINE-A"})).code == (
        "STATION_GROUP_LINE_MISMATCH"
    )

    rows = await audit_rows(api, entityType="STATION", status="SUCCESS")
    assert sum(1 for x in rows if x["action"] == "STATION_CREATE") == len(ids) + 1
    first_update = [x for x in rows if x["action"] == "STATION_UPDATE"][-1]
    assert {"op": "replace", "path": "/stationType", "before": "AUTO", "after": "TEST"} in first_update[
        "diff"
    ]
    assert {"op": "replace", "path": "/groupCode", "before": "SMT-LINE-A", "after": None} in first_update[
        "diff"
    ]
    group_rows = await audit_rows(api, entityType="STATION_GROUP")
    assert {x["action"] for x in group_rows} == {"STATION_GROUP_CREATE"} and len(
        group_rows
    ) == 5  # 3 + 2 refusals


async def test_station_list_follows_data_scope(api: Api, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"))
    ids = await plant(api)
    dip_line = (await api.get("/lines/LINE-DIP-A", ENG)).data["id"]
    await make_user("op@example.com", "operator", station_ids=[ids["ST-SPI-01"]])
    r = await api.get("/stations", "op@example.com")
    assert r.status == 200 and codes(r) == ["ST-SPI-01"] and r.data["total"] == 1
    assert codes(await api.get("/stations", "op@example.com", params={"lineCode": "LINE-DIP-A"})) == []

    role = {
        "code": "line-viewer",
        "name": "Line viewer",
        "permissions": ["exec:read"],
        "dataScope": "ASSIGNED_LINES",
    }
    assert (await api.post("/roles", ADMIN, json=role)).status == 200
    await make_user("lv@example.com", "line-viewer", line_ids=[dip_line])
    r = await api.get("/stations", "lv@example.com", params={"sort": "code.asc"})
    assert codes(r) == ["ST-DIP-INS-01", "ST-DIP-TEST-01"]

    # The preset material role (line-scoped) holds no station-list permission at all.
    await make_user("mat@example.com", "material", line_ids=[dip_line])
    refused = await api.get("/stations", "mat@example.com")
    assert refused.status == 403 and refused.code == "FORBIDDEN"
    # An ALL-scoped role for the same permission widens the scope.
    await make_user("both@example.com", "operator", "quality", station_ids=[ids["ST-SPI-01"]])
    assert (await api.get("/stations", "both@example.com")).data["total"] == len(ids)
    assert (await api.get("/stations", ENG)).data["total"] == len(ids)


async def test_station_delete_and_in_use_guards(api: Api, database: Database, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"))
    ids = await plant(api)
    r = await api.delete("/stations/ST-MOUNT-01", ENG)
    assert r.status == 200 and r.data == {"id": ids["ST-MOUNT-01"], "deleted": True}
    missing = await api.delete("/stations/ST-MOUNT-01", ENG)
    assert missing.status == 404 and missing.code == "STATION_NOT_FOUND"
    assert (await api.delete("/stations/ST-SPI-01", ADMIN)).status == 403

    await make_user("op@example.com", "operator", station_ids=[ids["ST-SPI-01"]])
    bound = await api.delete("/stations/ST-SPI-01", ENG)
    assert bound.status == 409 and bound.code == "STATION_HAS_DEPENDENCIES"
    assert bound.body["error"]["details"] == ["user_station_bindings"]

    await open_track(database, "LINE-A", "ST-PRINT-01")
    tracked = await api.delete("/stations/ST-PRINT-01", ENG)
    assert tracked.status == 409 and tracked.body["error"]["details"] == ["tracks"]
    busy = await api.patch("/stations/ST-PRINT-01", ENG, json={"stationType": "AUTO"})
    assert busy.status == 409 and busy.code == "STATION_IN_USE"
    assert (await api.patch("/stations/ST-PRINT-01", ENG, json={"groupCode": None})).code == "STATION_IN_USE"
    assert (await api.patch("/stations/ST-PRINT-01", ENG, json={"name": "Printer 01"})).status == 200
    busy_line = await api.patch("/lines/LINE-A", ENG, json={"processType": "DIP"})
    assert busy_line.status == 409 and busy_line.code == "LINE_IN_USE"

    rows = await audit_rows(api, entityType="STATION", action="STATION_DELETE")
    assert [(x["status"], x["errorCode"]) for x in rows] == [
        ("FAIL", "STATION_HAS_DEPENDENCIES"),
        ("FAIL", "STATION_HAS_DEPENDENCIES"),
        ("FAIL", "FORBIDDEN"),
        ("FAIL", "STATION_NOT_FOUND"),
        ("SUCCESS", None),
    ]
    assert rows[-1]["entityDisplay"] == "ST-MOUNT-01"


# ---- operations and work centers ------------------------------------------------------------------------


async def test_operations(api: Api, database: Database, make_user: Any) -> None:
    await users(make_user, (ENG, "engineer"), (ADMIN, "admin"), (PLANNER, "planner"), (TRACE, "trace"))
    r = await api.post(
        "/operations", ENG, json={"code": "SPI", "name": "Solder Paste Inspection", "isKeyQuality": True}
    )
    assert r.status == 201
    assert (
        r.data["defaultType"] == "MANUAL"
        and r.data["isKeyQuality"] is True
        and r.data["sourceSystem"] == "MES"
    )
    r = await api.post(
        "/operations", ENG, json={"code": "REFLOW", "name": "Reflow Soldering", "defaultType": "AUTO"}
    )
    assert r.status == 201 and r.data["isKeyQuality"] is False
    dup = await api.post("/operations", ENG, json={"code": "SPI", "name": "again"})
    assert dup.status == 409 and dup.code == "OPERATION_CODE_EXISTS"
    assert (await api.post("/operations", ADMIN, json={"code": "AOI", "name": "AOI"})).status == 403
    async with database.writer() as s, s.begin():
        s.add(Operation(code="ERP-0010", name="ERP process", default_type="MANUAL", source_system="ERP"))

    listed = await api.get("/operations", PLANNER, params={"sort": "code.asc"})  # route:read suffices
    assert codes(listed) == ["ERP-0010", "REFLOW", "SPI"]
    assert codes(await api.get("/operations", ADMIN, params={"search": "reflow"})) == ["REFLOW"]
    assert codes(await api.get("/operations", ENG, params={"isKeyQuality": "true"})) == ["SPI"]
    assert codes(await api.get("/operations", ENG, params={"sourceSystem": "ERP"})) == ["ERP-0010"]
    assert (await api.get("/operations", TRACE)).status == 403

    r = await api.patch("/operations/REFLOW", ENG, json={"name": "Reflow", "isKeyQuality": True})
    assert r.status == 200 and r.data["name"] == "Reflow" and r.data["isKeyQuality"] is True
    erp = await api.patch("/operations/ERP-0010", ENG, json={"name": "mine now"})
    assert erp.status == 403 and erp.code == "OPERATION_ERP_READONLY"
    missing = await api.patch("/operations/NOPE", ENG, json={"name": "x"})
    assert missing.status == 404 and missing.code == "OPERATION_NOT_FOUND"

    rows = await audit_rows(api, entityType="OPERATION")
    update = next(x for x in rows if x["action"] == "OPERATION_UPDATE" and x["status"] == "SUCCESS")
    assert {"op": "replace", "path": "/isKeyQuality", "before": False, "after": True} in update["diff"]
    assert sum(1 for x in rows if x["action"] == "OPERATION_CREATE" and x["status"] == "SUCCESS") == 2
    assert any(x["errorCode"] == "OPERATION_ERP_READONLY" for x in rows)


async def test_work_centers_are_readable_by_anyone_signed_in(
    api: Api, database: Database, make_user: Any
) -> None:
    assert (await api.get("/work-centers")).status == 401  # before any sign-in sets the session cookie
    await users(make_user, (TRACE, "trace"))
    async with database.writer() as s, s.begin():
        s.add(WorkCenter(code="WC-SMT", name="SMT workshop", department="Production 1"))
        s.add(WorkCenter(code="WC-DIP", name="DIP workshop", department="Production 2"))
    r = await api.get("/work-centers", TRACE, params={"sort": "code.asc"})
    assert (
        r.status == 200 and codes(r) == ["WC-DIP", "WC-SMT"] and r.data["items"][0]["sourceSystem"] == "ERP"
    )
    assert codes(await api.get("/work-centers", TRACE, params={"search": "smt"})) == ["WC-SMT"]
    assert codes(await api.get("/work-centers", TRACE, params={"department": "Production 2"})) == ["WC-DIP"]
