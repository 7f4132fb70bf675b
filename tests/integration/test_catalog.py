"""Material master data over HTTP: materials, material lots and BOM lines."""

from __future__ import annotations

from typing import Any

from central.db.engine import Database
from tests.client import Api

ENG = "eng@example.com"  # system:integration
ADMIN = "adm@example.com"  # system:config (and system:integration)
QUALITY = "qa@example.com"  # neither
TRACE = "tr@example.com"

MATERIALS = [
    {"code": "MAT-001", "name": "Chip Resistor 10K", "category": "SMD", "unit": "PCS"},
    {"code": "MAT-002", "name": "MLCC Capacitor 100nF", "category": "SMD", "unit": "PCS"},
    {"code": "MAT-003", "name": "IC Chip MCU", "category": "IC", "unit": "PCS"},
]


async def with_materials(api: Api, make_user: Any, *users: tuple[str, str]) -> None:
    await make_user(ADMIN, "admin")
    for email, role in users:
        await make_user(email, role)
    for m in MATERIALS:
        assert (await api.post("/materials", ADMIN, json=m)).status == 200


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params=params)).data["items"]


async def test_materials_create_list_and_audit(api: Api, database: Database, make_user: Any) -> None:
    await with_materials(api, make_user, (ENG, "engineer"), (TRACE, "trace"))
    r = await api.post("/materials", ENG, json={"code": "MAT-004", "name": "Connector 2P"})
    assert r.status == 200
    assert r.data["code"] == "MAT-004" and r.data["sourceSystem"] == "MES" and r.data["category"] is None
    codes = lambda r: [i["code"] for i in r.data["items"]]  # noqa: E731
    everything = await api.get("/materials", TRACE, params={"sort": "code.asc"})  # any signed-in user
    assert everything.data["total"] == 4 and codes(everything) == ["MAT-001", "MAT-002", "MAT-003", "MAT-004"]
    assert codes(await api.get("/materials", TRACE, params={"search": "mlcc"})) == ["MAT-002"]
    assert codes(await api.get("/materials", TRACE, params={"category": "IC"})) == ["MAT-003"]
    assert len(codes(await api.get("/materials", TRACE, params={"category": "SMD,IC"}))) == 3
    dup = await api.post("/materials", ENG, json={"code": "MAT-001", "name": "Again"})
    assert dup.status == 409 and dup.code == "MATERIAL_CODE_EXISTS"
    bad = await api.post("/materials", ENG, json={"code": "MAT 5", "name": "Blank in code"})
    assert bad.status == 422
    rows = await audit_rows(api, entityType="MATERIAL", pageSize=50)
    created = [r for r in rows if r["action"] == "MATERIAL_CREATE" and r["status"] == "SUCCESS"]
    assert len(created) == 4 and created[0]["entityDisplay"] == "MAT-004"
    assert {"op": "add", "path": "/name", "before": None, "after": "Connector 2P"} in created[0]["diff"]
    assert any(r["status"] == "FAIL" and r["errorCode"] == "MATERIAL_CODE_EXISTS" for r in rows)


async def test_material_lots(api: Api, database: Database, make_user: Any) -> None:
    await with_materials(api, make_user, (ENG, "engineer"), (TRACE, "trace"))
    body = {"materialCode": "MAT-001", "lotNo": "LOT-2024-001", "supplier": "Yageo", "iqcResult": "PASS"}
    r = await api.post("/material-lots", ENG, json=body)
    assert r.status == 201
    assert r.data["materialCode"] == "MAT-001" and r.data["lotNo"] == "LOT-2024-001"
    assert r.data["supplier"] == "Yageo" and r.data["iqcResult"] == "PASS"
    await api.post("/material-lots", ENG, json={"materialCode": "MAT-002", "lotNo": "LOT-2024-001"})
    await api.post("/material-lots", ENG, json={"materialCode": "MAT-002", "lotNo": "LOT-2024-002"})
    dup = await api.post("/material-lots", ENG, json=body)
    assert dup.status == 409 and dup.code == "MATERIAL_LOT_DUPLICATE"
    unknown = await api.post("/material-lots", ENG, json={"materialCode": "MAT-404", "lotNo": "L1"})
    assert unknown.status == 404 and unknown.code == "MATERIAL_NOT_FOUND"
    pairs = lambda r: sorted((i["materialCode"], i["lotNo"]) for i in r.data["items"])  # noqa: E731
    assert (await api.get("/material-lots", TRACE)).data["total"] == 3
    assert pairs(await api.get("/material-lots", TRACE, params={"materialCode": "MAT-002"})) == [
        ("MAT-002", "LOT-2024-001"),
        ("MAT-002", "LOT-2024-002"),
    ]
    assert pairs(await api.get("/material-lots", TRACE, params={"lotNo": "LOT-2024-001"})) == [
        ("MAT-001", "LOT-2024-001"),
        ("MAT-002", "LOT-2024-001"),
    ]
    assert pairs(await api.get("/material-lots", TRACE, params={"search": "yageo"})) == [
        ("MAT-001", "LOT-2024-001")
    ]
    rows = await audit_rows(api, entityType="MATERIAL_LOT", pageSize=50)
    ok = [r for r in rows if r["status"] == "SUCCESS"]
    assert len(ok) == 3 and all(r["action"] == "MATERIAL_LOT_CREATE" for r in ok)
    assert {r["errorCode"] for r in rows if r["status"] == "FAIL"} == {
        "MATERIAL_LOT_DUPLICATE",
        "MATERIAL_NOT_FOUND",
    }


async def test_boms(api: Api, database: Database, make_user: Any) -> None:
    await with_materials(api, make_user, (ENG, "engineer"), (TRACE, "trace"))
    for child, qty in (("MAT-001", 10), ("MAT-002", 5), ("MAT-003", 1)):
        r = await api.post(
            "/boms", ENG, json={"parentCode": "P-1001", "childCode": child, "qty": qty, "unit": "PCS"}
        )
        assert r.status == 200, r.body
    ratio = await api.post(
        "/boms", ENG, json={"parentCode": "P-2002", "childCode": "MAT-001", "numerator": 3, "denominator": 2}
    )
    assert ratio.status == 200
    assert (ratio.data["qty"], ratio.data["numerator"], ratio.data["denominator"]) == (1.5, 3, 2)
    first = (await api.get("/boms", TRACE, params={"parentCode": "P-1001", "sort": "childCode.asc"})).data
    assert first["total"] == 3
    assert [(i["childCode"], i["qty"], i["denominator"]) for i in first["items"]] == [
        ("MAT-001", 10, 1),
        ("MAT-002", 5, 1),
        ("MAT-003", 1, 1),
    ]
    assert (await api.get("/boms", TRACE)).data["total"] == 4
    refusals: list[tuple[dict[str, Any], int, str]] = [
        ({"parentCode": "P-1001", "childCode": "MAT-001", "qty": 2}, 409, "BOM_ITEM_DUPLICATE"),
        ({"parentCode": "P-1001", "childCode": "MAT-404", "qty": 2}, 404, "MATERIAL_NOT_FOUND"),
        ({"parentCode": "MAT-001", "childCode": "MAT-001", "qty": 1}, 400, "BOM_ITEM_SELF_REFERENCE"),
        ({"parentCode": "P-1", "childCode": "MAT-001", "qty": 0}, 422, "VALIDATION_FAILED"),
        ({"parentCode": "P-1", "childCode": "MAT-001"}, 422, "VALIDATION_FAILED"),
        ({"parentCode": "P-1", "childCode": "MAT-001", "qty": 1, "numerator": 1}, 422, "VALIDATION_FAILED"),
        ({"parentCode": "P-1", "childCode": "MAT-001", "denominator": 2}, 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in refusals:
        r = await api.post("/boms", ENG, json=body)
        assert (r.status, r.code) == (status, code), body
    assert (await api.get("/boms", TRACE)).data["total"] == 4
    rows = await audit_rows(api, entityType="BOM", pageSize=50)
    ok = [r for r in rows if r["status"] == "SUCCESS"]
    assert len(ok) == 4 and all(r["action"] == "BOM_ITEM_CREATE" for r in ok)
    assert ok[0]["entityDisplay"] == "P-2002/MAT-001"


async def test_catalog_writes_need_integration_or_config(
    api: Api, database: Database, make_user: Any
) -> None:
    await with_materials(api, make_user, (QUALITY, "quality"))
    for path, body in [
        ("/materials", {"code": "MAT-009", "name": "x"}),
        ("/material-lots", {"materialCode": "MAT-001", "lotNo": "L9"}),
        ("/boms", {"parentCode": "P-9", "childCode": "MAT-001", "qty": 1}),
    ]:
        r = await api.post(path, QUALITY, json=body)
        assert r.status == 403 and r.code == "FORBIDDEN", path
        assert "system:integration" in r.body["error"]["message"]
        assert (await api.get(path, QUALITY)).status == 200
