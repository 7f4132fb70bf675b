"""FAI template administration over HTTP: create, read, list, change items, refusals and permissions."""

from __future__ import annotations

from typing import Any

from central.db.engine import Database
from tests.client import Api

ENG = "eng@example.com"
ADMIN = "adm@example.com"
PLANNER = "plan@example.com"
QUALITY = "qa@example.com"
TRACE = "tr@example.com"


def template(code: str = "FAI-P1001", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": "FAI for P-1001",
        "productCode": "P-1001",
        "processType": "SMT",
        "version": "1.0",
        "isActive": True,
        "items": [
            {"seq": 2, "itemName": "Solder joints", "itemSpec": "IPC-A-610 class 2", "required": True},
            {"seq": 1, "itemName": "Component polarity", "required": True},
            {"seq": 3, "itemName": "Silkscreen legible", "required": False},
        ],
        **extra,
    }


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params=params)).data["items"]


async def test_create_read_and_list_templates(api: Api, database: Database, make_user: Any) -> None:
    for email, role in ((QUALITY, "quality"), (ENG, "engineer"), (PLANNER, "planner"), (ADMIN, "admin")):
        await make_user(email, role)
    r = await api.post("/fai-templates", QUALITY, json=template())
    assert r.status == 201
    d = r.data
    assert [(i["seq"], i["itemName"], i["required"]) for i in d["items"]] == [
        (1, "Component polarity", True),
        (2, "Solder joints", True),
        (3, "Silkscreen legible", False),
    ]
    assert d["items"][1]["itemSpec"] == "IPC-A-610 class 2" and d["productCode"] == "P-1001"
    # route:configure may write templates too.
    dip = await api.post("/fai-templates", ENG, json=template("FAI-DIP", processType="DIP", productCode=None))
    assert dip.status == 201 and dip.data["productCode"] is None
    await api.post("/fai-templates", ENG, json=template("FAI-OLD", isActive=False, items=[]))
    one = await api.get(f"/fai-templates/{d['id']}", PLANNER)  # route:read may read templates
    assert one.status == 200 and one.data == d
    codes = lambda r: sorted(i["code"] for i in r.data["items"])  # noqa: E731
    assert codes(await api.get("/fai-templates", QUALITY, params={"productCode": "P-1001"})) == [
        "FAI-OLD",
        "FAI-P1001",
    ]
    assert codes(await api.get("/fai-templates", QUALITY, params={"processType": "DIP"})) == ["FAI-DIP"]
    assert codes(await api.get("/fai-templates", QUALITY, params={"isActive": "false"})) == ["FAI-OLD"]
    assert codes(await api.get("/fai-templates", ENG, params={"search": "dip"})) == ["FAI-DIP"]
    ordered = await api.get("/fai-templates", ENG, params={"sort": "code.asc"})
    assert [i["code"] for i in ordered.data["items"]] == ["FAI-DIP", "FAI-OLD", "FAI-P1001"]
    row = (await audit_rows(api, entityType="FAI_TEMPLATE", action="FAI_TEMPLATE_CREATE", entityId=d["id"]))[
        0
    ]
    diff = {c["path"]: c["after"] for c in row["diff"]}
    assert row["status"] == "SUCCESS" and diff["/code"] == "FAI-P1001" and len(diff["/items"]) == 3


async def test_patch_template_replaces_items_by_seq(api: Api, database: Database, make_user: Any) -> None:
    await make_user(QUALITY, "quality")
    await make_user(ADMIN, "admin")
    d = (await api.post("/fai-templates", QUALITY, json=template())).data
    ids = {i["seq"]: i["id"] for i in d["items"]}
    items = [
        {"seq": 1, "itemName": "Component polarity", "itemSpec": "Per drawing", "required": True},
        {"seq": 4, "itemName": "Conformal coating", "required": True},
    ]
    r = await api.patch(
        f"/fai-templates/{d['id']}", QUALITY, json={"name": "FAI P-1001 rev B", "items": items}
    )
    assert r.status == 200
    out = r.data
    assert out["name"] == "FAI P-1001 rev B" and out["code"] == "FAI-P1001"
    assert [(i["seq"], i["itemName"], i["itemSpec"]) for i in out["items"]] == [
        (1, "Component polarity", "Per drawing"),
        (4, "Conformal coating", None),
    ]
    assert out["items"][0]["id"] == ids[1]
    off = await api.patch(f"/fai-templates/{d['id']}", QUALITY, json={"isActive": False})
    assert off.data["isActive"] is False and len(off.data["items"]) == 2  # items untouched when not sent
    rows = await audit_rows(api, action="FAI_TEMPLATE_UPDATE")
    first = {c["path"]: c for c in rows[-1]["diff"]}
    assert first["/name"]["before"] == "FAI for P-1001" and first["/name"]["after"] == "FAI P-1001 rev B"
    assert [i["seq"] for i in first["/items"]["before"]] == [1, 2, 3]
    assert [i["seq"] for i in first["/items"]["after"]] == [1, 4]
    assert rows[0]["diff"] == [{"op": "replace", "path": "/isActive", "before": True, "after": False}]


async def test_template_refusals(api: Api, database: Database, make_user: Any) -> None:
    await make_user(QUALITY, "quality")
    await make_user(ADMIN, "admin")
    d = (await api.post("/fai-templates", QUALITY, json=template())).data
    dup_items = [{"seq": 1, "itemName": "a"}, {"seq": 1, "itemName": "b"}]
    cases: list[tuple[dict[str, Any], int, str]] = [
        (template(), 409, "FAI_TEMPLATE_CODE_EXISTS"),
        (template("FAI-2", items=dup_items), 400, "FAI_TEMPLATE_ITEM_SEQ_DUPLICATE"),
        (template("FAI-3", items=[{"seq": 0, "itemName": "a"}]), 422, "VALIDATION_FAILED"),
        (template("bad code"), 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await api.post("/fai-templates", QUALITY, json=body)
        assert (r.status, r.code) == (status, code), body
    r = await api.patch(f"/fai-templates/{d['id']}", QUALITY, json={"items": dup_items})
    assert r.status == 400 and r.code == "FAI_TEMPLATE_ITEM_SEQ_DUPLICATE"
    assert len((await api.get(f"/fai-templates/{d['id']}", QUALITY)).data["items"]) == 3
    for call in (api.get("/fai-templates/999", QUALITY), api.patch("/fai-templates/x", QUALITY, json={})):
        r = await call
        assert r.status == 404 and r.code == "FAI_TEMPLATE_NOT_FOUND"
    assert (await api.get("/fai-templates", QUALITY)).data["total"] == 1
    fails = await audit_rows(api, entityType="FAI_TEMPLATE", status="FAIL", pageSize=50)
    assert {f["errorCode"] for f in fails} >= {"FAI_TEMPLATE_CODE_EXISTS", "FAI_TEMPLATE_ITEM_SEQ_DUPLICATE"}


async def test_template_permissions(api: Api, database: Database, make_user: Any) -> None:
    for email, role in ((QUALITY, "quality"), (PLANNER, "planner"), (TRACE, "trace")):
        await make_user(email, role)
    d = (await api.post("/fai-templates", QUALITY, json=template())).data
    for method, path, body in [
        ("GET", "/fai-templates", None),
        ("GET", f"/fai-templates/{d['id']}", None),
        ("POST", "/fai-templates", template("FAI-X")),
        ("PATCH", f"/fai-templates/{d['id']}", {"isActive": False}),
    ]:
        r = await api.call(method, path, TRACE, json=body)
        assert r.status == 403 and r.code == "FORBIDDEN", (method, path)
    assert (await api.get("/fai-templates", PLANNER)).status == 200
    r = await api.post("/fai-templates", PLANNER, json=template("FAI-X"))
    assert r.status == 403 and "quality:fai" in r.body["error"]["message"]
