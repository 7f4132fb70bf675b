"""Routing administration over HTTP: create, read, list, change and replace steps of MES routings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import (
    ExecutableRouteVersion,
    FaiTemplate,
    Line,
    Operation,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
    StationGroup,
)
from central.domain.clock import utcnow
from central.services.uow import UnitOfWork
from tests.client import Api

ENG = "eng@example.com"
ADMIN = "adm@example.com"
PLANNER = "plan@example.com"
QUALITY = "qa@example.com"
TRACE = "tr@example.com"

SMT_OPS = [
    ("PRINTING", "Solder Paste Printing"),
    ("SPI", "Solder Paste Inspection"),
    ("MOUNTING", "Component Mounting"),
    ("REFLOW", "Reflow Soldering"),
    ("AOI", "Automated Optical Inspection"),
]


async def seed_plant(database: Database) -> None:
    """LINE-A with its station group and the SMT operations of the demo plant, straight through the ORM."""
    async with UnitOfWork(database.writer) as uow:
        s = uow.session
        line = Line(code="LINE-A", name="SMT Production Line A", process_type="SMT")
        s.add(line)
        await s.flush()
        s.add(StationGroup(code="SMT-LINE-A", name="SMT Line A", line_id=line.id))
        s.add(StationGroup(code="SMT-AOI", name="AOI stations", line_id=line.id))
        s.add_all(
            Operation(code=c, name=n, default_type="MANUAL", is_key_quality=c in ("SPI", "AOI"))
            for c, n in SMT_OPS
        )


def smt_steps(*, last: int | None = None) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [
        {
            "stepNo": (i + 1) * 10,
            "operationCode": code,
            "stationGroupCode": "SMT-LINE-A",
            "stationType": "MANUAL",
            "requiresFai": code == "PRINTING",
        }
        for i, (code, _) in enumerate(SMT_OPS)
    ]
    if last is not None:
        next(s for s in steps if s["stepNo"] == last)["isLast"] = True
    return steps


def route_body(code: str = "PCBA-STD-V1", **extra: Any) -> dict[str, Any]:
    return {
        "code": code,
        "name": "Standard PCBA Process V1",
        "productCode": "P-1001",
        "processType": "SMT",
        "version": "1.0",
        "isActive": True,
        "steps": smt_steps(),
        **extra,
    }


async def setup(database: Database, make_user: Any, *roles: tuple[str, str]) -> None:
    await seed_plant(database)
    for email, role in roles:
        await make_user(email, role)


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params=params)).data["items"]


async def add_version(database: Database, routing_code: str, version_no: int = 1) -> int:
    async with UnitOfWork(database.writer) as uow:
        rid = await uow.session.scalar(select(Routing.id).where(Routing.code == routing_code))
        v = ExecutableRouteVersion(
            routing_id=rid,
            version_no=version_no,
            status="READY",
            signature="ab" * 32,
            snapshot_json={"route": {"code": routing_code}, "steps": [{"stepNo": 10}, {"stepNo": 20}]},
            errors_json=[],
            compiled_at=utcnow(),
        )
        uow.session.add(v)
        await uow.session.flush()
        return v.id


async def version_state(database: Database, version_id: int) -> tuple[Any, ...]:
    async with database.reader() as s:
        v = await s.get(ExecutableRouteVersion, version_id)
        assert v is not None
        return (
            v.routing_id,
            v.version_no,
            v.status,
            v.signature,
            v.snapshot_json,
            v.errors_json,
            v.compiled_at,
            v.updated_at,
        )


async def test_create_route_marks_highest_step_last_and_is_audited(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    r = await api.post("/routes", ENG, json=route_body())
    assert r.status == 200
    d = r.data
    assert d["code"] == "PCBA-STD-V1" and d["sourceSystem"] == "MES" and d["processType"] == "SMT"
    assert d["version"] == "1.0" and d["productCode"] == "P-1001" and d["stepCount"] == 5
    assert d["faiTemplateCode"] is None and d["latestVersion"] is None
    steps = d["steps"]
    assert [s["stepNo"] for s in steps] == [10, 20, 30, 40, 50]
    assert [s["isLast"] for s in steps] == [False, False, False, False, True]
    assert steps[0]["operationCode"] == "PRINTING" and steps[0]["operationName"] == "Solder Paste Printing"
    assert steps[0]["requiresFai"] is True and steps[1]["requiresFai"] is False
    assert all(s["stationGroupCode"] == "SMT-LINE-A" and s["stationType"] == "MANUAL" for s in steps)
    assert steps[0]["sourceStepKey"] is None
    rows = await audit_rows(api, entityType="ROUTING", action="ROUTING_CREATE")
    assert len(rows) == 1 and rows[0]["status"] == "SUCCESS" and rows[0]["entityId"] == str(d["id"])
    diff = {c["path"]: c for c in rows[0]["diff"]}
    assert diff["/code"]["after"] == "PCBA-STD-V1" and diff["/code"]["op"] == "add"
    assert [s["operationCode"] for s in diff["/steps"]["after"]] == [c for c, _ in SMT_OPS]


async def test_create_route_accepts_explicit_last_and_empty_steps(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"))
    r = await api.post("/routes", ENG, json=route_body(steps=smt_steps(last=50)))
    assert r.status == 200 and r.data["steps"][-1]["isLast"] is True
    # domain.md spells the flag requiresFAI; that spelling is accepted too.
    body = route_body("PCBA-ONE", steps=[{"stepNo": 1, "operationCode": "AOI", "requiresFAI": True}])
    one = (await api.post("/routes", ENG, json=body)).data
    assert one["steps"][0]["requiresFai"] is True and one["steps"][0]["isLast"] is True
    assert one["steps"][0]["stationGroupCode"] is None and one["steps"][0]["stationType"] is None
    empty = await api.post("/routes", ENG, json=route_body("PCBA-EMPTY", steps=[]))
    assert empty.status == 200 and empty.data["steps"] == [] and empty.data["stepCount"] == 0


async def test_create_route_refusals_write_nothing(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    assert (await api.post("/routes", ENG, json=route_body())).status == 200
    cases: list[tuple[dict[str, Any], int, str]] = [
        (route_body(), 409, "ROUTING_CODE_EXISTS"),
        (route_body("R2", steps=[{"stepNo": 10, "operationCode": "NOPE"}]), 404, "OPERATION_NOT_FOUND"),
        (
            route_body("R3", steps=[{"stepNo": 10, "operationCode": "SPI", "stationGroupCode": "NOPE"}]),
            404,
            "STATION_GROUP_NOT_FOUND",
        ),
        (
            route_body(
                "R4", steps=[{"stepNo": 10, "operationCode": "SPI"}, {"stepNo": 10, "operationCode": "AOI"}]
            ),
            400,
            "ROUTING_STEP_DUPLICATE",
        ),
        (route_body("R5", steps=smt_steps(last=30)), 400, "ROUTING_LAST_STEP_INVALID"),
        (
            route_body(
                "R6",
                steps=[
                    *smt_steps(last=50)[:4],
                    {**smt_steps()[4], "isLast": True},
                    {"stepNo": 60, "operationCode": "AOI", "isLast": True},
                ],
            ),
            400,
            "ROUTING_LAST_STEP_INVALID",
        ),
        (
            route_body("R7", effectiveFrom="2025-02-01T00:00:00Z", effectiveTo="2025-01-01T00:00:00Z"),
            400,
            "ROUTING_EFFECTIVE_RANGE_INVALID",
        ),
        (route_body("R8", processType="THT"), 422, "VALIDATION_FAILED"),
        (route_body("R9", steps=[{"stepNo": 0, "operationCode": "SPI"}]), 422, "VALIDATION_FAILED"),
        (route_body("R10", effectiveFrom="2025-02-01T00:00:00"), 422, "VALIDATION_FAILED"),
    ]
    for body, status, code in cases:
        r = await api.post("/routes", ENG, json=body)
        assert (r.status, r.code) == (status, code), body
    listed = await api.get("/routes", ENG)
    assert listed.data["total"] == 1
    fails = await audit_rows(api, entityType="ROUTING", status="FAIL", pageSize=50)
    assert {f["errorCode"] for f in fails} >= {
        "ROUTING_CODE_EXISTS",
        "OPERATION_NOT_FOUND",
        "STATION_GROUP_NOT_FOUND",
        "ROUTING_STEP_DUPLICATE",
        "ROUTING_LAST_STEP_INVALID",
    }


async def test_list_routes_search_filters_sort_and_pages(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"), (PLANNER, "planner"))
    await api.post("/routes", ENG, json=route_body("PCBA-STD-V1"))
    await api.post("/routes", ENG, json=route_body("PCBA-DIP-V1", processType="DIP", productCode="P-2002"))
    await api.post("/routes", ENG, json=route_body("OLD-V0", isActive=False, productCode="P-0001"))
    async with UnitOfWork(database.writer) as uow:
        uow.session.add(Routing(code="ERP-100", name="ERP route", source_system="ERP", source_key="100"))
    codes = lambda r: [i["code"] for i in r.data["items"]]  # noqa: E731
    everything = await api.get("/routes", PLANNER, params={"sort": "code.asc"})
    assert everything.data["total"] == 4
    assert codes(everything) == ["ERP-100", "OLD-V0", "PCBA-DIP-V1", "PCBA-STD-V1"]
    assert codes(await api.get("/routes", PLANNER, params={"search": "p-2002"})) == ["PCBA-DIP-V1"]
    assert codes(await api.get("/routes", PLANNER, params={"sourceSystem": "ERP"})) == ["ERP-100"]
    assert codes(await api.get("/routes", PLANNER, params={"processType": "DIP"})) == ["PCBA-DIP-V1"]
    assert codes(await api.get("/routes", PLANNER, params={"isActive": "false"})) == ["OLD-V0"]
    page = await api.get("/routes", PLANNER, params={"sort": "code.desc", "pageSize": 2, "page": 2})
    assert codes(page) == ["OLD-V0", "ERP-100"] and page.data["total"] == 4 and page.data["pageSize"] == 2
    assert (await api.get("/routes", PLANNER, params={"sort": "name.asc"})).status == 422


async def test_get_route_shows_fai_template_and_latest_version(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"))
    await api.post("/routes", ENG, json=route_body())
    async with UnitOfWork(database.writer) as uow:
        t = FaiTemplate(code="FAI-P1001", name="FAI P-1001", product_code="P-1001")
        uow.session.add(t)
        await uow.session.flush()
        routing = await uow.session.scalar(select(Routing).where(Routing.code == "PCBA-STD-V1"))
        assert routing is not None
        routing.fai_template_id = t.id
    await add_version(database, "PCBA-STD-V1", 1)
    await add_version(database, "PCBA-STD-V1", 2)
    d = (await api.get("/routes/PCBA-STD-V1", ENG)).data
    assert d["faiTemplateCode"] == "FAI-P1001" and d["faiTemplateId"] is not None
    assert d["latestVersion"]["versionNo"] == 2 and d["latestVersion"]["status"] == "READY"
    assert d["latestVersion"]["errorCount"] == 0 and d["latestVersion"]["compiledAt"].endswith("Z")
    listed = (await api.get("/routes", ENG)).data["items"]
    assert listed[0]["faiTemplateCode"] == "FAI-P1001"
    missing = await api.get("/routes/NOPE", ENG)
    assert missing.status == 404 and missing.code == "ROUTE_NOT_FOUND"


async def test_patch_route_changes_header_with_audit_diff(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    await api.post("/routes", ENG, json=route_body())
    r = await api.patch(
        "/routes/PCBA-STD-V1",
        ENG,
        json={
            "name": "Standard PCBA V1.1",
            "productCode": None,
            "version": "1.1",
            "effectiveFrom": "2025-01-01T08:00:00+08:00",
        },
    )
    assert r.status == 200
    d = r.data
    assert d["name"] == "Standard PCBA V1.1" and d["productCode"] is None and d["version"] == "1.1"
    assert d["effectiveFrom"] == "2025-01-01T00:00:00.000Z" and d["processType"] == "SMT"
    assert len(d["steps"]) == 5
    row = (await audit_rows(api, entityType="ROUTING", action="ROUTING_UPDATE"))[0]
    assert row["status"] == "SUCCESS"
    diff = {c["path"]: (c["before"], c["after"]) for c in row["diff"]}
    assert diff == {
        "/name": ("Standard PCBA Process V1", "Standard PCBA V1.1"),
        "/productCode": ("P-1001", None),
        "/version": ("1.0", "1.1"),
        "/effectiveFrom": (None, "2025-01-01T00:00:00.000Z"),
    }
    bad = await api.patch("/routes/PCBA-STD-V1", ENG, json={"effectiveTo": "2024-01-01T00:00:00Z"})
    assert bad.status == 400 and bad.code == "ROUTING_EFFECTIVE_RANGE_INVALID"
    off = await api.patch("/routes/PCBA-STD-V1", ENG, json={"isActive": False})
    assert off.data["isActive"] is False
    missing = await api.patch("/routes/NOPE", ENG, json={"name": "x"})
    assert missing.status == 404 and missing.code == "ROUTE_NOT_FOUND"


async def test_replace_steps_leaves_compiled_versions_untouched(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    await api.post("/routes", ENG, json=route_body())
    version_id = await add_version(database, "PCBA-STD-V1")
    frozen = await version_state(database, version_id)
    new_steps = [
        {"stepNo": 10, "operationCode": "PRINTING", "stationGroupCode": "SMT-LINE-A", "stationType": "AUTO"},
        {
            "stepNo": 20,
            "operationCode": "MOUNTING",
            "stationGroupCode": "SMT-LINE-A",
            "stationType": "MANUAL",
        },
        {"stepNo": 30, "operationCode": "AOI", "stationGroupCode": "SMT-AOI", "stationType": "TEST"},
    ]
    r = await api.put("/routes/PCBA-STD-V1/steps", ENG, json={"steps": new_steps})
    assert r.status == 200
    steps = r.data["steps"]
    assert [(s["stepNo"], s["operationCode"], s["stationType"]) for s in steps] == [
        (10, "PRINTING", "AUTO"),
        (20, "MOUNTING", "MANUAL"),
        (30, "AOI", "TEST"),
    ]
    assert [s["isLast"] for s in steps] == [False, False, True] and steps[2]["stationGroupCode"] == "SMT-AOI"
    assert r.data["latestVersion"]["id"] == version_id and r.data["latestVersion"]["versionNo"] == 1
    assert await version_state(database, version_id) == frozen
    async with database.reader() as s:
        assert len((await s.scalars(select(ExecutableRouteVersion))).all()) == 1
    row = (await audit_rows(api, entityType="ROUTING", action="ROUTING_STEPS_REPLACE"))[0]
    change = row["diff"][0]
    assert change["path"] == "/steps" and len(change["before"]) == 5 and len(change["after"]) == 3


async def test_replace_steps_keeps_kept_step_ids_and_drops_configs_of_removed_steps(
    api: Api, database: Database, make_user: Any
) -> None:
    await setup(database, make_user, (ENG, "engineer"))
    created = (await api.post("/routes", ENG, json=route_body())).data
    ids = {s["stepNo"]: s["id"] for s in created["steps"]}
    async with UnitOfWork(database.writer) as uow:
        uow.session.add_all(
            [
                RouteExecutionConfig(routing_id=created["id"]),  # route scope
                RouteExecutionConfig(routing_id=created["id"], routing_step_id=ids[10], requires_fai=True),
                RouteExecutionConfig(routing_id=created["id"], routing_step_id=ids[50], station_type="TEST"),
            ]
        )
    body = {"steps": [{"stepNo": 10, "operationCode": "PRINTING"}, {"stepNo": 20, "operationCode": "SPI"}]}
    steps = (await api.put("/routes/PCBA-STD-V1/steps", ENG, json=body)).data["steps"]
    assert [(s["stepNo"], s["id"]) for s in steps] == [(10, ids[10]), (20, ids[20])]
    assert steps[1]["isLast"] is True and steps[0]["stationGroupCode"] is None
    async with database.reader() as s:
        configs = (await s.scalars(select(RouteExecutionConfig).order_by(RouteExecutionConfig.id))).all()
        assert [c.routing_step_id for c in configs] == [None, ids[10]]
        assert len((await s.scalars(select(RoutingStep))).all()) == 2


async def test_replace_steps_refusals(api: Api, database: Database, make_user: Any) -> None:
    await setup(database, make_user, (ENG, "engineer"), (ADMIN, "admin"))
    await api.post("/routes", ENG, json=route_body())
    async with UnitOfWork(database.writer) as uow:
        uow.session.add(Routing(code="ERP-100", name="ERP route", source_system="ERP", source_key="100"))
    one = {"steps": [{"stepNo": 10, "operationCode": "SPI"}]}
    erp = await api.put("/routes/ERP-100/steps", ENG, json=one)
    assert erp.status == 403 and erp.code == "ROUTING_ERP_READONLY"
    missing = await api.put("/routes/NOPE/steps", ENG, json=one)
    assert missing.status == 404 and missing.code == "ROUTE_NOT_FOUND"
    dup = {"steps": [{"stepNo": 10, "operationCode": "SPI"}, {"stepNo": 10, "operationCode": "AOI"}]}
    assert (await api.put("/routes/PCBA-STD-V1/steps", ENG, json=dup)).code == "ROUTING_STEP_DUPLICATE"
    unknown = {"steps": [{"stepNo": 10, "operationCode": "NOPE"}]}
    assert (await api.put("/routes/PCBA-STD-V1/steps", ENG, json=unknown)).code == "OPERATION_NOT_FOUND"
    no_group = {"steps": [{"stepNo": 10, "operationCode": "SPI", "stationGroupCode": "X"}]}
    assert (await api.put("/routes/PCBA-STD-V1/steps", ENG, json=no_group)).code == "STATION_GROUP_NOT_FOUND"
    bad_last = {
        "steps": [
            {"stepNo": 10, "operationCode": "SPI", "isLast": True},
            {"stepNo": 20, "operationCode": "AOI"},
        ]
    }
    assert (
        await api.put("/routes/PCBA-STD-V1/steps", ENG, json=bad_last)
    ).code == "ROUTING_LAST_STEP_INVALID"
    assert len((await api.get("/routes/PCBA-STD-V1", ENG)).data["steps"]) == 5
    erp_fail = await audit_rows(api, action="ROUTING_STEPS_REPLACE", status="FAIL", pageSize=50)
    assert "ROUTING_ERP_READONLY" in {f["errorCode"] for f in erp_fail}


async def test_route_endpoints_need_their_permissions(api: Api, database: Database, make_user: Any) -> None:
    await setup(
        database, make_user, (ENG, "engineer"), (ADMIN, "admin"), (TRACE, "trace"), (QUALITY, "quality")
    )
    await api.post("/routes", ENG, json=route_body())
    for method, path, body in [
        ("GET", "/routes", None),
        ("GET", "/routes/PCBA-STD-V1", None),
        ("POST", "/routes", route_body("R2")),
        ("PATCH", "/routes/PCBA-STD-V1", {"name": "x"}),
        ("PUT", "/routes/PCBA-STD-V1/steps", {"steps": []}),
    ]:
        r = await api.call(method, path, TRACE, json=body)
        assert r.status == 403 and r.code == "FORBIDDEN", (method, path)
    # admin reads routes (route:read) but may not create or change them.
    assert (await api.get("/routes/PCBA-STD-V1", ADMIN)).status == 200
    r = await api.post("/routes", ADMIN, json=route_body("R2"))
    assert r.status == 403 and "route:create" in r.body["error"]["message"]
    r = await api.put("/routes/PCBA-STD-V1/steps", QUALITY, json={"steps": []})
    assert r.status == 403 and "route:configure" in r.body["error"]["message"]
    assert (await api.get("/routes", QUALITY)).status == 403
