"""Loading configuration (domain.md §6 "Config"): feeder slots, slot↔material mappings; line data scope."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import loading as loading_handlers
from central.config import Settings
from central.db.engine import Database
from central.db.models import AuditEvent, Line, SlotMaterialMapping, Station
from tests.client import Api
from tests.flows import EN, OP, PL, M, released_run, seed


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """Demo plant + the app with the loading router (added here only while it is not yet in ROUTERS)."""
    extra = [] if loading_handlers.router in ROUTERS else [loading_handlers.router]
    api = Api(await aiohttp_client(create_app(settings, database=database, extra_routers=extra)))
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def line_id(database: Database, code: str) -> int:
    async with database.reader() as s:
        found = await s.scalar(select(Line.id).where(Line.code == code))
    assert found is not None
    return int(found)


async def test_feeder_slot_crud_by_line_id_or_code(demo: Api, database: Database) -> None:
    line_a = await line_id(database, "LINE-A")
    r = await demo.get(f"/lines/{line_a}/feeder-slots", M)
    assert r.status == 200 and [s["slotCode"] for s in r.data["items"]] == ["SLOT-01"], r.body
    seeded = r.data["items"][0]
    assert (seeded["lineCode"], seeded["position"], seeded["isLocked"], seeded["failedAttempts"]) == (
        "LINE-A",
        1,
        False,
        0,
    )

    r = await demo.post(
        "/lines/LINE-A/feeder-slots", EN, json={"slotCode": "SLOT-02", "name": "F2", "position": 2}
    )
    assert r.status == 201 and r.data["slotCode"] == "SLOT-02" and r.data["lineId"] == line_a, r.body
    slot2 = r.data["id"]
    expect(
        await demo.post("/lines/LINE-A/feeder-slots", EN, json={"slotCode": "SLOT-02"}),
        409,
        "SLOT_CODE_EXISTS",
    )
    assert (await demo.post("/lines/LINE-DIP-A/feeder-slots", EN, json={"slotCode": "SLOT-02"})).status == 201
    expect(
        await demo.post("/lines/LINE-NOPE/feeder-slots", EN, json={"slotCode": "S"}), 404, "LINE_NOT_FOUND"
    )
    expect(await demo.post("/lines/LINE-A/feeder-slots", M, json={"slotCode": "S"}), 403, "FORBIDDEN")
    expect(
        await demo.post("/lines/LINE-A/feeder-slots", EN, json={"slotCode": "bad code"}),
        422,
        "VALIDATION_FAILED",
    )

    r = await demo.put(f"/lines/LINE-A/feeder-slots/{slot2}", EN, json={"name": "Feeder 2", "position": 7})
    assert r.status == 200 and (r.data["name"], r.data["position"]) == ("Feeder 2", 7), r.body
    r = await demo.put(f"/lines/{line_a}/feeder-slots/{slot2}", EN, json={"slotCode": "SLOT-2B"})
    assert r.status == 200 and r.data["slotCode"] == "SLOT-2B", r.body
    r = await demo.put(f"/lines/LINE-A/feeder-slots/{slot2}", EN, json={"slotCode": "SLOT-01"})
    expect(r, 409, "SLOT_CODE_EXISTS")
    expect(await demo.put(f"/lines/LINE-DIP-A/feeder-slots/{slot2}", EN, json={}), 404, "SLOT_NOT_FOUND")
    expect(await demo.put("/lines/LINE-A/feeder-slots/abc", EN, json={}), 404, "SLOT_NOT_FOUND")

    # Deleting an unused slot removes its mappings too.
    r = await demo.post("/slot-mappings", EN, json={"slotId": slot2, "materialCode": "MAT-002"})
    assert r.status == 201, r.body
    r = await demo.delete(f"/lines/LINE-A/feeder-slots/{slot2}", EN)
    assert r.status == 200 and r.data == {"id": slot2, "deleted": True}, r.body
    async with database.reader() as s:
        assert (
            await s.scalar(
                select(func.count(SlotMaterialMapping.id)).where(SlotMaterialMapping.slot_id == slot2)
            )
            == 0
        )
    expect(await demo.delete(f"/lines/LINE-A/feeder-slots/{slot2}", EN), 404, "SLOT_NOT_FOUND")
    async with database.reader() as s:
        actions = set(await s.scalars(select(AuditEvent.action).where(AuditEvent.status == "SUCCESS")))
    assert {
        "FEEDER_SLOT_CREATE",
        "FEEDER_SLOT_UPDATE",
        "FEEDER_SLOT_DELETE",
        "SLOT_MAPPING_CREATE",
    } <= actions


async def test_slot_in_use_cannot_be_deleted_or_recoded(demo: Api) -> None:
    flow = await released_run(demo)
    slot_id = (await demo.get("/lines/LINE-A/feeder-slots", EN)).data["items"][0]["id"]
    assert (await demo.post(f"/runs/{flow['runNo']}/loading/load-table", M)).status == 200
    # An expectation points at the slot.
    expect(await demo.delete(f"/lines/LINE-A/feeder-slots/{slot_id}", EN), 409, "SLOT_IN_USE")
    r = await demo.put(f"/lines/LINE-A/feeder-slots/{slot_id}", EN, json={"slotCode": "SLOT-X"})
    expect(r, 409, "SLOT_IN_USE")
    # Name and position stay editable.
    r = await demo.put(
        f"/lines/LINE-A/feeder-slots/{slot_id}", EN, json={"name": "Front 1", "slotCode": "SLOT-01"}
    )
    assert r.status == 200 and r.data["name"] == "Front 1", r.body
    # Loaded: the slot carries a lot as well.
    body = {"runNo": flow["runNo"], "slotCode": "SLOT-01", "materialLotBarcode": "MAT-001|L"}
    assert (await demo.post("/loading/verify", M, json=body)).status == 200
    expect(await demo.delete(f"/lines/LINE-A/feeder-slots/{slot_id}", EN), 409, "SLOT_IN_USE")


async def test_slot_mapping_crud(demo: Api) -> None:
    slot_id = (await demo.get("/lines/LINE-A/feeder-slots", EN)).data["items"][0]["id"]
    r = await demo.get("/slot-mappings", M, params={"slotId": slot_id})
    assert r.status == 200, r.body
    (seeded,) = r.data["items"]
    assert (seeded["materialCode"], seeded["productCode"], seeded["routingCode"], seeded["priority"]) == (
        "MAT-001",
        "P-1001",
        "PCBA-STD-V1",
        1,
    )
    assert (seeded["slotCode"], seeded["lineCode"], seeded["isAlternate"]) == ("SLOT-01", "LINE-A", False)

    new = {"slotId": slot_id, "materialCode": "MAT-002", "routingCode": "PCBA-STD-V1", "priority": 3}
    r = await demo.post("/slot-mappings", EN, json=new)
    assert r.status == 201, r.body
    mapping = r.data
    assert (mapping["routingId"], mapping["productCode"], mapping["routingCode"]) == (
        seeded["routingId"],
        None,
        "PCBA-STD-V1",
    )
    expect(await demo.post("/slot-mappings", EN, json=new), 409, "SLOT_MAPPING_DUPLICATE")
    expect(
        await demo.post("/slot-mappings", EN, json={**new, "materialCode": "MAT-404"}),
        404,
        "MATERIAL_NOT_FOUND",
    )
    expect(await demo.post("/slot-mappings", EN, json={**new, "slotId": 99999}), 404, "SLOT_NOT_FOUND")
    r = await demo.post("/slot-mappings", EN, json={**new, "materialCode": "MAT-003", "routingCode": "NOPE"})
    expect(r, 404, "ROUTE_NOT_FOUND")
    r = await demo.post("/slot-mappings", EN, json={**new, "materialCode": "MAT-003", "routingId": 99999})
    expect(r, 400, "ROUTING_MISMATCH")  # routingId and routingCode name different routings
    r = await demo.put(f"/slot-mappings/{mapping['id']}", EN, json={"routingId": 99999})
    expect(r, 404, "ROUTE_NOT_FOUND")
    expect(await demo.post("/slot-mappings", M, json=new), 403, "FORBIDDEN")

    # PUT changes only what is sent; routingId null makes the mapping generic.
    r = await demo.put(f"/slot-mappings/{mapping['id']}", EN, json={"routingId": None, "isAlternate": True})
    assert r.status == 200, r.body
    assert (r.data["routingId"], r.data["isAlternate"], r.data["priority"]) == (None, True, 3)
    r = await demo.put(f"/slot-mappings/{mapping['id']}", EN, json={"materialCode": "MAT-001"})
    expect(r, 409, "SLOT_MAPPING_DUPLICATE")
    expect(await demo.put("/slot-mappings/99999", EN, json={}), 404, "SLOT_MAPPING_NOT_FOUND")

    r = await demo.get("/slot-mappings", EN, params={"lineId": "LINE-A", "materialCode": "MAT-002"})
    assert [x["id"] for x in r.data["items"]] == [mapping["id"]]
    r = await demo.delete(f"/slot-mappings/{mapping['id']}", EN)
    assert r.status == 200 and r.data == {"id": mapping["id"], "deleted": True}, r.body
    expect(await demo.delete(f"/slot-mappings/{mapping['id']}", EN), 404, "SLOT_MAPPING_NOT_FOUND")


async def test_config_reads_are_line_scoped(demo: Api, database: Database, make_user: Any) -> None:
    dip = await line_id(database, "LINE-DIP-A")
    await make_user("m.dip@example.com", "material", line_ids=[dip])
    expect(await demo.get("/lines/LINE-A/feeder-slots", "m.dip@example.com"), 403, "LINE_NOT_ASSIGNED")
    assert (await demo.get("/lines/LINE-DIP-A/feeder-slots", "m.dip@example.com")).status == 200
    r = await demo.get("/slot-mappings", "m.dip@example.com")
    assert r.status == 200 and r.data["total"] == 0, r.body  # LINE-A's mapping is outside the scope
    assert (await demo.get("/slot-mappings", OP)).data["total"] == 1  # operator holds LINE-A stations
    expect(await demo.get("/slot-mappings", "planner@example.com"), 403, "FORBIDDEN")


# ---- data scope ----------------------------------------------------------------------------------


async def test_line_scope_for_material_and_station_scoped_operators(
    demo: Api, database: Database, make_user: Any
) -> None:
    async with database.reader() as s:
        dip = await s.scalar(select(Line.id).where(Line.code == "LINE-DIP-A"))
        dip_station = await s.scalar(select(Station.id).where(Station.code == "ST-DIP-INS-01"))
    await make_user("m.dip@example.com", "material", line_ids=[dip])
    await make_user("op.dip@example.com", "operator", station_ids=[dip_station])
    flow = await released_run(demo)
    run_no = flow["runNo"]
    for who in ("m.dip@example.com", "op.dip@example.com"):
        expect(await demo.post(f"/runs/{run_no}/loading/load-table", who), 403, "LINE_NOT_ASSIGNED")
        expect(await demo.get(f"/runs/{run_no}/loading", who), 404, "RUN_NOT_FOUND")
        expect(await demo.get("/lines/LINE-A/feeder-slots", who), 403, "LINE_NOT_ASSIGNED")
    # operator.aoi holds only ST-AOI-01, which is on LINE-A: allowed on that line.
    assert (await demo.post(f"/runs/{run_no}/loading/load-table", "operator.aoi@example.com")).status == 200
    body = {"runNo": run_no, "slotCode": "SLOT-01", "materialLotBarcode": "MAT-001|L"}
    expect(await demo.post("/loading/verify", "m.dip@example.com", json=body), 403, "LINE_NOT_ASSIGNED")
    r = await demo.post(
        "/loading/replace",
        "m.dip@example.com",
        json={"runNo": run_no, "slotCode": "SLOT-01", "newMaterialLotBarcode": "MAT-001|L", "reason": "r"},
    )
    expect(r, 403, "LINE_NOT_ASSIGNED")
    r = await demo.post("/loading/verify", OP, json=body)
    assert r.status == 200 and r.data["verifyResult"] == "PASS", r.body
    assert r.data["loadedBy"] == "钱操作"
    # The planner has no loading permission at all.
    expect(await demo.post(f"/runs/{run_no}/loading/load-table", PL), 403, "FORBIDDEN")
