"""Data-collection spec administration over HTTP: create, read, list, change, limits and refusals."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import DataCollectionSpec, DataValue, Operation
from central.domain.clock import utcnow
from central.services.uow import UnitOfWork
from tests.client import Api

ENG = "eng@example.com"
ADMIN = "adm@example.com"
PLANNER = "plan@example.com"
QUALITY = "qa@example.com"
TRACE = "tr@example.com"


async def setup(database: Database, make_user: Any, *users: tuple[str, str]) -> None:
    async with UnitOfWork(database.writer) as uow:
        uow.session.add_all(
            [
                Operation(code="REFLOW", name="Reflow Soldering", default_type="MANUAL"),
                Operation(
                    code="FUNC_TEST", name="Functional Test", default_type="MANUAL", is_key_quality=True
                ),
            ]
        )
    for email, role in users:
        await make_user(email, role)


def peak_temp(**extra: Any) -> dict[str, Any]:
    return {
        "operationCode": "REFLOW",
        "name": "Peak temperature",
        "itemType": "KEY",
        "dataType": "NUMBER",
        "method": "AUTO",
        "triggerType": "EACH_UNIT",
        "spec": {"min": 235, "max": 250, "target": 245, "unit": "°C"},
        "alarm": {"action": "HOLD"},
        "isRequired": True,
        **extra,
    }


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params=params)).data["items"]


async def test_create_read_and_list_specs(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"), (PLANNER, "planner"))
    r = await api.post("/data-collection-specs", ENG, json=peak_temp())
    assert r.status == 201
    d = r.data
    assert d["operationCode"] == "REFLOW" and d["operationName"] == "Reflow Soldering"
    assert d["spec"] == {"min": 235, "max": 250, "target": 245, "unit": "°C"}  # unset limits are not stored
    assert d["alarm"] == {"action": "HOLD"} and d["isRequired"] is True and d["isActive"] is True
    assert (d["itemType"], d["dataType"], d["method"], d["triggerType"]) == (
        "KEY",
        "NUMBER",
        "AUTO",
        "EACH_UNIT",
    )
    minimal = {
        "operationCode": "FUNC_TEST",
        "name": "Firmware version",
        "dataType": "TEXT",
        "isActive": False,
    }
    m = (await api.post("/data-collection-specs", ENG, json=minimal)).data
    assert (m["itemType"], m["method"], m["triggerType"], m["spec"]) == ("KEY", "MANUAL", "EACH_UNIT", None)
    # The same name on another operation is fine.
    other = await api.post("/data-collection-specs", ENG, json=peak_temp(operationCode="FUNC_TEST"))
    assert other.status == 201
    one = await api.get(f"/data-collection-specs/{d['id']}", PLANNER)  # route:read may read specs
    assert one.status == 200 and one.data == d
    names = lambda r: sorted(i["name"] for i in r.data["items"])  # noqa: E731
    by_op = await api.get("/data-collection-specs", ENG, params={"operationCode": "FUNC_TEST"})
    assert names(by_op) == ["Firmware version", "Peak temperature"]
    active = await api.get("/data-collection-specs", ENG, params={"isActive": "true"})
    assert names(active) == ["Peak temperature", "Peak temperature"]
    found = await api.get("/data-collection-specs", ENG, params={"search": "firm"})
    assert names(found) == ["Firmware version"]
    both = await api.get("/data-collection-specs", ENG, params={"operationCode": "REFLOW,FUNC_TEST"})
    assert both.data["total"] == 3
    ordered = await api.get("/data-collection-specs", ENG, params={"sort": "operationCode.asc,name.asc"})
    assert [(i["operationCode"], i["name"]) for i in ordered.data["items"]] == [
        ("FUNC_TEST", "Firmware version"),
        ("FUNC_TEST", "Peak temperature"),
        ("REFLOW", "Peak temperature"),
    ]
    row = (await audit_rows(api, entityType="DATA_SPEC", action="DATA_SPEC_CREATE", entityId=str(d["id"])))[0]
    assert row["status"] == "SUCCESS" and row["entityDisplay"] == "REFLOW/Peak temperature"
    assert {"op": "add", "path": "/operationCode", "before": None, "after": "REFLOW"} in row["diff"]


async def test_create_spec_refusals(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    assert (await api.post("/data-collection-specs", ENG, json=peak_temp())).status == 201
    cases: list[tuple[dict[str, Any], int, str]] = [
        (peak_temp(), 409, "DATA_SPEC_NAME_DUPLICATE"),
        (peak_temp(operationCode="NOPE"), 404, "OPERATION_NOT_FOUND"),
        (peak_temp(name="a", spec={"min": 10, "max": 5}), 400, "DATA_SPEC_LIMITS_INVALID"),
        (peak_temp(name="b", spec={"lsl": 3, "usl": 1}), 400, "DATA_SPEC_LIMITS_INVALID"),
        (peak_temp(name="c", spec={"min": 0, "max": 5, "target": 9}), 400, "DATA_SPEC_LIMITS_INVALID"),
        (peak_temp(name="d", dataType="DATE"), 422, "VALIDATION_FAILED"),
        (peak_temp(name="e", spec={"minimum": 1}), 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await api.post("/data-collection-specs", ENG, json=body)
        assert (r.status, r.code) == (status, code), body
    assert (await api.get("/data-collection-specs", ENG)).data["total"] == 1
    fails = await audit_rows(api, entityType="DATA_SPEC", status="FAIL", pageSize=50)
    assert {f["errorCode"] for f in fails} >= {
        "DATA_SPEC_NAME_DUPLICATE",
        "OPERATION_NOT_FOUND",
        "DATA_SPEC_LIMITS_INVALID",
    }


async def test_get_unknown_spec_is_404(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"))
    for path in ("/data-collection-specs/999", "/data-collection-specs/abc"):
        r = await api.get(path, ENG)
        assert r.status == 404 and r.code == "DATA_SPEC_NOT_FOUND"
    r = await api.patch("/data-collection-specs/999", ENG, json={"isActive": False})
    assert r.status == 404 and r.code == "DATA_SPEC_NOT_FOUND"


async def test_patch_spec_with_audit_and_refusals(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    spec = (await api.post("/data-collection-specs", ENG, json=peak_temp())).data
    await api.post("/data-collection-specs", ENG, json=peak_temp(name="Soak time", spec=None))
    path = f"/data-collection-specs/{spec['id']}"
    r = await api.patch(
        path, ENG, json={"spec": {"lsl": 238, "usl": 248}, "alarm": None, "isRequired": False}
    )
    assert r.status == 200
    assert r.data["spec"] == {"lsl": 238, "usl": 248} and r.data["alarm"] is None
    assert r.data["isRequired"] is False and r.data["name"] == "Peak temperature"
    row = (await audit_rows(api, action="DATA_SPEC_UPDATE"))[0]
    diff = {c["path"]: (c["before"], c["after"]) for c in row["diff"]}
    assert diff == {
        "/spec": ({"min": 235, "max": 250, "target": 245, "unit": "°C"}, {"lsl": 238, "usl": 248}),
        "/alarm": ({"action": "HOLD"}, None),
        "/isRequired": (True, False),
    }
    moved = await api.patch(path, ENG, json={"operationCode": "FUNC_TEST"})
    assert moved.status == 200 and moved.data["operationCode"] == "FUNC_TEST"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"operationCode": "REFLOW", "name": "Soak time"}, 409, "DATA_SPEC_NAME_DUPLICATE"),
        ({"operationCode": "NOPE"}, 404, "OPERATION_NOT_FOUND"),
        ({"spec": {"min": 2, "max": 1}}, 400, "DATA_SPEC_LIMITS_INVALID"),
        ({"method": "SOMETIMES"}, 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await api.patch(path, ENG, json=body)
        assert (r.status, r.code) == (status, code), body
    assert (await api.get(path, ENG)).data["operationCode"] == "FUNC_TEST"


async def test_operation_and_type_are_fixed_once_values_exist(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"))
    spec = (await api.post("/data-collection-specs", ENG, json=peak_temp())).data
    async with UnitOfWork(database.writer) as uow:
        uow.session.add(DataValue(spec_id=spec["id"], value_number=246.0, collected_at=utcnow()))
    path = f"/data-collection-specs/{spec['id']}"
    for body in ({"dataType": "TEXT"}, {"operationCode": "FUNC_TEST"}):
        r = await api.patch(path, ENG, json=body)
        assert r.status == 409 and r.code == "DATA_SPEC_IN_USE", body
    ok = await api.patch(path, ENG, json={"isActive": False, "spec": {"min": 230, "max": 255}})
    assert ok.status == 200 and ok.data["isActive"] is False
    async with database.reader() as s:
        row = await s.scalar(select(DataCollectionSpec).where(DataCollectionSpec.id == spec["id"]))
        assert row is not None and row.data_type == "NUMBER"


async def test_spec_permissions(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (QUALITY, "quality"), (TRACE, "trace"))
    spec = (await api.post("/data-collection-specs", ENG, json=peak_temp())).data
    path = f"/data-collection-specs/{spec['id']}"
    for method, p, body in [
        ("GET", "/data-collection-specs", None),
        ("GET", path, None),
        ("POST", "/data-collection-specs", peak_temp(name="x")),
        ("PATCH", path, {"isActive": False}),
    ]:
        r = await api.call(method, p, TRACE, json=body)
        assert r.status == 403 and r.code == "FORBIDDEN", (method, p)
    r = await api.post("/data-collection-specs", QUALITY, json=peak_temp(name="x"))
    assert r.status == 403 and "data_spec:config" in r.body["error"]["message"]
    assert (await api.get("/data-collection-specs", ENG)).status == 200  # data_spec:config reads too
