"""Route execution config, compile over HTTP, versions and FAI-template binding (domain.md §2 "Routing")."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from central.db.engine import Database
from central.db.models import ExecutableRouteVersion, RouteExecutionConfig, Routing
from tests.client import Api
from tests.flows import EN, PL, Q, released_run, seed

STD = "PCBA-STD-V1"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def spec(api: Api, operation: str, name: str, **extra: Any) -> int:
    r = await api.post(
        "/data-collection-specs",
        EN,
        json={"operationCode": operation, "name": name, "dataType": "NUMBER", **extra},
    )
    assert r.status == 201, r.body
    return int(r.data["id"])


async def config(api: Api, routing: str = STD, **body: Any) -> Any:
    return await api.post(f"/routes/{routing}/execution-config", EN, json=body)


async def compile_(api: Api, routing: str = STD) -> dict[str, Any]:
    r = await api.post(f"/routes/{routing}/compile", EN)
    assert r.status == 200, r.body
    return r.data


async def station_ids(api: Api) -> dict[str, int]:
    r = await api.get("/stations", EN, params={"pageSize": 100})
    assert r.status == 200, r.body
    return {s["code"]: s["id"] for s in r.data["items"]}


async def group_ids(api: Api) -> dict[str, int]:
    r = await api.get("/stations/groups", EN, params={"pageSize": 100})
    assert r.status == 200, r.body
    return {g["code"]: g["id"] for g in r.data["items"]}


async def config_count(database: Database) -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count(RouteExecutionConfig.id))) or 0)


async def new_routing(api: Api, code: str, steps: list[dict[str, Any]], **extra: Any) -> None:
    r = await api.post(
        "/routes",
        EN,
        json={"code": code, "name": code, "processType": "SMT", "steps": steps, **extra},
    )
    assert r.status == 200, r.body


# ---- execution config -----------------------------------------------------------------------------------


async def test_route_and_step_configs_are_created_and_listed(demo: Api) -> None:
    api = demo
    sid = await spec(api, "SPI", "PASTE_HEIGHT")
    route_cfg = await config(
        api, scopeType="ROUTE", stationGroupCode="SMT-LINE-A", requiresAuthorization=True
    )
    assert route_cfg.status == 200, route_cfg.body
    step_cfg = await config(
        api,
        scopeType="STEP",
        stepNo=2,
        stationType="MANUAL",
        allowedStationCodes=["ST-SPI-01", "ST-AOI-01"],
        dataSpecIds=[sid],
    )
    assert step_cfg.status == 200, step_cfg.body
    ids = await station_ids(api)

    listed = await api.get(f"/routes/{STD}/execution-config", PL)  # route:read suffices to read
    assert listed.status == 200
    by_scope = {c["scopeType"]: c for c in listed.data}
    assert [c["id"] for c in listed.data] == [route_cfg.data["id"], step_cfg.data["id"]]
    r, s = by_scope["ROUTE"], by_scope["STEP"]
    assert (r["stepNo"], r["stationGroupCode"], r["requiresAuthorization"]) == (None, "SMT-LINE-A", True)
    assert (r["allowedStationCodes"], r["dataSpecIds"], r["sourceStepKey"]) == ([], [], None)
    assert (s["stepNo"], s["stationGroupCode"], s["stationType"]) == (2, None, "MANUAL")
    assert s["allowedStationCodes"] == ["ST-AOI-01", "ST-SPI-01"]
    assert sorted(s["allowedStationIds"]) == sorted([ids["ST-SPI-01"], ids["ST-AOI-01"]])
    assert s["dataSpecIds"] == [sid] and s["requiresAuthorization"] is None
    assert s["updatedAt"].endswith("Z")


async def test_config_refusals(demo: Api, database: Database) -> None:
    api = demo
    before = await config_count(database)  # the seed has configs on its ingest routings
    expect(await config(api, scopeType="LINE"), 400, "SCOPE_TYPE_INVALID")
    expect(await config(api, scopeType="STEP"), 400, "STEP_NO_REQUIRED")
    expect(await config(api, scopeType="STEP", stepNo=99), 404, "ROUTE_STEP_NOT_FOUND")
    expect(await config(api, scopeType="ROUTE", stationGroupCode="GRP-NOPE"), 404, "STATION_GROUP_NOT_FOUND")
    expect(await config(api, "ROUTE-NOPE", scopeType="ROUTE"), 404, "ROUTE_NOT_FOUND")
    expect(await config(api, scopeType="STEP", stepNo=1, dataSpecIds=[999999]), 404, "DATA_SPEC_NOT_FOUND")
    expect(await config(api, scopeType="ROUTE", allowedStationCodes=["ST-NOPE"]), 404, "STATION_NOT_FOUND")
    forbidden = await api.post(f"/routes/{STD}/execution-config", PL, json={"scopeType": "ROUTE"})
    expect(forbidden, 403, "FORBIDDEN")
    assert await config_count(database) == before  # no refusal wrote a row
    fails = await api.get(
        "/audit-logs",
        "admin@example.com",
        params={"action": "ROUTE_EXECUTION_CONFIG_CREATE", "status": "FAIL", "pageSize": 50},
    )
    assert {f["errorCode"] for f in fails.data["items"]} >= {
        "SCOPE_TYPE_INVALID",
        "STEP_NO_REQUIRED",
        "ROUTE_STEP_NOT_FOUND",
        "STATION_GROUP_NOT_FOUND",
        "ROUTE_NOT_FOUND",
        "DATA_SPEC_NOT_FOUND",
        "STATION_NOT_FOUND",
    }
    assert (await api.get(f"/routes/{STD}/execution-config", EN)).data == []


async def test_patch_config_and_its_refusals(demo: Api, database: Database) -> None:
    api = demo
    route_id = (await config(api, scopeType="ROUTE", requiresFai=False)).data["id"]
    step = (await config(api, scopeType="STEP", stepNo=3, stationGroupCode="SMT-LINE-A")).data
    path = f"/routes/{STD}/execution-config/{step['id']}"

    ok = await api.patch(
        path, EN, json={"allowedStationCodes": ["ST-MOUNT-01"], "requiresAuthorization": True}
    )
    assert ok.status == 200, ok.body
    assert ok.data["allowedStationCodes"] == ["ST-MOUNT-01"] and ok.data["requiresAuthorization"] is True
    assert ok.data["stationGroupCode"] == "SMT-LINE-A"  # fields not sent are kept
    same_scope = await api.patch(path, EN, json={"scopeType": "STEP", "stepNo": 3, "stationGroupCode": None})
    assert same_scope.status == 200 and same_scope.data["stationGroupCode"] is None

    expect(
        await api.patch(f"/routes/{STD}/execution-config/999999", EN, json={}),
        404,
        "EXECUTION_CONFIG_NOT_FOUND",
    )
    expect(
        await api.patch(f"/routes/{STD}/execution-config/abc", EN, json={}), 404, "EXECUTION_CONFIG_NOT_FOUND"
    )
    other_route = await api.patch(f"/routes/PCBA-DIP-V1/execution-config/{step['id']}", EN, json={})
    expect(other_route, 404, "EXECUTION_CONFIG_NOT_FOUND")
    expect(await api.patch(path, EN, json={"scopeType": "ROUTE"}), 400, "EXECUTION_CONFIG_SCOPE_MISMATCH")
    expect(await api.patch(path, EN, json={"stepNo": 4}), 400, "EXECUTION_CONFIG_SCOPE_MISMATCH")
    route_path = f"/routes/{STD}/execution-config/{route_id}"
    expect(
        await api.patch(route_path, EN, json={"scopeType": "STEP"}), 400, "EXECUTION_CONFIG_SCOPE_MISMATCH"
    )
    expect(await api.patch(route_path, EN, json={"stepNo": 1}), 400, "EXECUTION_CONFIG_SCOPE_MISMATCH")
    expect(await api.patch(path, EN, json={"scopeType": "LINE"}), 400, "SCOPE_TYPE_INVALID")
    expect(await api.patch(path, EN, json={"stationGroupCode": "GRP-NOPE"}), 404, "STATION_GROUP_NOT_FOUND")
    expect(await api.patch(path, EN, json={"dataSpecIds": [999999]}), 404, "DATA_SPEC_NOT_FOUND")
    expect(await api.patch(path, PL, json={"requiresFAI": True}), 403, "FORBIDDEN")

    after = {c["id"]: c for c in (await api.get(f"/routes/{STD}/execution-config", EN)).data}[step["id"]]
    assert (
        after["allowedStationCodes"] == ["ST-MOUNT-01"] and after["dataSpecIds"] == []
    )  # refusals wrote nothing
    assert after["requiresFai"] is None and after["requiresAuthorization"] is True


# ---- compile ------------------------------------------------------------------------------------------


async def test_compile_is_deterministic_and_a_change_makes_the_next_version(demo: Api) -> None:
    api = demo
    seeded = await compile_(api)  # the seed compiled version 1 already; unchanged input returns it
    assert (seeded["versionNo"], seeded["status"], seeded["errors"]) == (1, "READY", [])
    again = await compile_(api)
    assert again["id"] == seeded["id"] and again == seeded
    expect(await api.post(f"/routes/{STD}/compile", PL), 403, "FORBIDDEN")  # planner lacks route:compile

    assert (await config(api, scopeType="STEP", stepNo=4, requiresAuthorization=True)).status == 200
    v2 = await compile_(api)
    assert (v2["versionNo"], v2["status"], v2["routingCode"]) == (2, "READY", STD) and v2["id"] != seeded[
        "id"
    ]
    assert v2["snapshot"]["routeVersion"]["versionNo"] == 2
    assert (await compile_(api))["id"] == v2["id"]

    versions = await api.get(f"/routes/{STD}/versions", PL)
    assert versions.status == 200 and [v["versionNo"] for v in versions.data] == [2, 1]
    one = await api.get(f"/routes/{STD}/versions/1", PL)
    assert one.status == 200 and one.data == seeded
    expect(await api.get(f"/routes/{STD}/versions/99", PL), 404, "ROUTE_VERSION_NOT_FOUND")
    expect(await api.get(f"/routes/{STD}/versions/x", PL), 404, "ROUTE_VERSION_NOT_FOUND")
    expect(await api.get("/routes/ROUTE-NOPE/versions", PL), 404, "ROUTE_NOT_FOUND")
    expect(await api.post("/routes/ROUTE-NOPE/compile", EN), 404, "ROUTE_NOT_FOUND")
    expect(await api.get("/routes/ROUTE-NOPE/execution-config", EN), 404, "ROUTE_NOT_FOUND")
    expect(await api.get(f"/routes/{STD}/versions", "operator@example.com"), 403, "FORBIDDEN")


async def test_ready_snapshot_shape_and_requires_authorization_defaults_false(demo: Api) -> None:
    api = demo
    v = (await api.get(f"/routes/{STD}/versions/1", EN)).data
    groups = await group_ids(api)
    assert v["snapshot"]["route"] == {
        "code": STD,
        "sourceSystem": "MES",
        "sourceKey": None,
        "faiTemplate": None,
    }
    assert v["snapshot"]["routeVersion"] == {"versionNo": 1, "compiledAt": v["compiledAt"]}
    steps = v["snapshot"]["steps"]
    assert [s["stepNo"] for s in steps] == [1, 2, 3, 4, 5]
    for s in steps:
        assert set(s) == {
            "stepNo",
            "operationId",
            "stationType",
            "stationGroupId",
            "allowedStationIds",
            "requiresFAI",
            "requiresAuthorization",
            "dataSpecIds",
            "ingestMapping",
        }
        assert s["requiresAuthorization"] is False
        assert (s["stationType"], s["stationGroupId"]) == ("MANUAL", groups["SMT-LINE-A"])
        assert (s["allowedStationIds"], s["dataSpecIds"], s["ingestMapping"]) == ([], [], None)
    assert [s["requiresFAI"] for s in steps] == [True, False, False, False, False]


async def test_precedence_step_config_over_route_config_over_step_fields(demo: Api) -> None:
    api = demo
    ids, groups = await station_ids(api), await group_ids(api)
    s_reflow = await spec(api, "REFLOW", "PEAK_TEMP")
    # Route scope: another group + an allowed station + authorization for every step.
    assert (
        await config(
            api,
            scopeType="ROUTE",
            stationGroupCode="DIP-LINE-A",
            allowedStationCodes=["ST-PRINT-01"],
            requiresAuthorization=True,
        )
    ).status == 200
    # Two step configs for step 4: only the newest one counts (it is not merged with the older one).
    older = (await config(api, scopeType="STEP", stepNo=4, dataSpecIds=[s_reflow], requiresFAI=True)).data
    newer = (
        await config(
            api,
            scopeType="STEP",
            stepNo=4,
            stationGroupCode="SMT-LINE-A",
            allowedStationCodes=["ST-REFLOW-01"],
            requiresAuthorization=False,
        )
    ).data
    v = await compile_(api)
    assert v["status"] == "READY", v["errors"]
    by_no = {s["stepNo"]: s for s in v["snapshot"]["steps"]}
    # Step 1: route config over step fields; requiresFAI from the step (no config sets it).
    assert by_no[1]["stationGroupId"] == groups["DIP-LINE-A"]
    assert by_no[1]["allowedStationIds"] == [ids["ST-PRINT-01"]]
    assert (by_no[1]["requiresAuthorization"], by_no[1]["requiresFAI"]) == (True, True)
    # Step 4: the newest step config over the route config; the older step config is ignored.
    s4 = by_no[4]
    assert (s4["stationGroupId"], s4["allowedStationIds"]) == (groups["SMT-LINE-A"], [ids["ST-REFLOW-01"]])
    assert (s4["requiresAuthorization"], s4["requiresFAI"], s4["dataSpecIds"]) == (False, False, [])
    assert s4["stationType"] == "MANUAL"  # nothing sets it: the step field

    # Editing the older config makes it the newest: now it wins for step 4.
    r = await api.patch(f"/routes/{STD}/execution-config/{older['id']}", EN, json={"stationType": "MANUAL"})
    assert r.status == 200, r.body
    v2 = await compile_(api)
    assert (v2["versionNo"], v2["status"]) == (v["versionNo"] + 1, "READY")
    s4 = {s["stepNo"]: s for s in v2["snapshot"]["steps"]}[4]
    assert (s4["dataSpecIds"], s4["requiresFAI"], s4["requiresAuthorization"]) == ([s_reflow], True, True)
    assert (s4["stationGroupId"], s4["allowedStationIds"]) == (groups["DIP-LINE-A"], [ids["ST-PRINT-01"]])
    assert newer["id"] > older["id"]


async def test_invalid_compile_lists_each_error_with_step_and_code(demo: Api) -> None:
    api = demo
    s_reflow = await spec(api, "REFLOW", "PEAK_TEMP")
    await new_routing(
        api,
        "R-BAD",
        [
            {"stepNo": 10, "operationCode": "PRINTING"},  # no type, no group
            {
                "stepNo": 20,
                "operationCode": "MOUNTING",
                "stationGroupCode": "SMT-LINE-A",
                "stationType": "MANUAL",
            },
            {"stepNo": 30, "operationCode": "AOI", "stationGroupCode": "SMT-LINE-A", "stationType": "MANUAL"},
        ],
        productCode="P-1001",
    )
    # Step 20 becomes AUTO through its execution config, without an ingestMapping.
    assert (await config(api, "R-BAD", scopeType="STEP", stepNo=20, stationType="AUTO")).status == 200
    # Step 30 (AOI) gets a spec of REFLOW.
    assert (await config(api, "R-BAD", scopeType="STEP", stepNo=30, dataSpecIds=[s_reflow])).status == 200
    v = await compile_(api, "R-BAD")
    assert (v["status"], v["versionNo"]) == ("INVALID", 1)
    assert [(e["stepNo"], e["code"]) for e in v["errors"]] == [
        (10, "STATION_TYPE_MISSING"),
        (10, "STATION_CONSTRAINT_MISSING"),
        (20, "INGEST_MAPPING_MISSING"),
        (30, "DATA_SPEC_OPERATION_MISMATCH"),
    ]
    assert all(e["message"] for e in v["errors"])
    assert (await compile_(api, "R-BAD"))["id"] == v["id"]  # same input, same INVALID version
    stored = (await api.get("/routes/R-BAD/versions/1", EN)).data
    assert stored["status"] == "INVALID" and stored["errors"] == v["errors"]

    # An INVALID version is never used: a WO on a routing without any READY version cannot be released.
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": "WO-BAD-1", "productCode": "P-1001", "plannedQty": 5, "routingCode": "R-BAD"},
    )
    assert r.status == 200, r.body
    expect(
        await api.post("/work-orders/WO-BAD-1/release", PL, json={"lineCode": "LINE-A"}),
        400,
        "ROUTE_NOT_READY",
    )
    assert (await api.get("/work-orders/WO-BAD-1", PL)).data["status"] == "RECEIVED"


async def test_unknown_spec_in_a_config_makes_the_compile_invalid(demo: Api, database: Database) -> None:
    # A bound spec that no longer exists (no delete API: the id is set through the ORM).
    api = demo
    cfg = (await config(api, scopeType="STEP", stepNo=2)).data
    async with database.writer() as s, s.begin():
        row = await s.get(RouteExecutionConfig, cfg["id"])
        assert row is not None
        row.data_spec_ids = [987654]
    v = await compile_(api)
    assert v["status"] == "INVALID"
    assert [(e["stepNo"], e["code"]) for e in v["errors"]] == [(2, "DATA_SPEC_NOT_FOUND")]


async def test_an_invalid_newer_version_leaves_runs_on_the_last_ready_one(demo: Api) -> None:
    api = demo
    assert (await config(api, scopeType="STEP", stepNo=5, stationType="TEST")).status == 200
    v2 = await compile_(api)
    assert (v2["versionNo"], v2["status"]) == (2, "INVALID")
    assert [(e["stepNo"], e["code"]) for e in v2["errors"]] == [(5, "INGEST_MAPPING_MISSING")]
    flow = await released_run(api)  # release + run creation still work: version 1 is READY
    run = (await api.get(f"/runs/{flow['runNo']}", PL)).data
    assert (run["routeVersion"]["versionNo"], run["routeVersion"]["status"]) == (1, "READY")


async def test_routing_without_steps_is_refused(demo: Api, database: Database) -> None:
    api = demo
    await new_routing(api, "R-EMPTY", [])
    expect(await api.post("/routes/R-EMPTY/compile", EN), 400, "ROUTING_EMPTY")
    assert (await api.get("/routes/R-EMPTY/versions", EN)).data == []
    async with database.reader() as s:
        routing_ids = select(Routing.id).where(Routing.code == "R-EMPTY")
        count = select(func.count(ExecutableRouteVersion.id)).where(
            ExecutableRouteVersion.routing_id.in_(routing_ids)
        )
        assert await s.scalar(count) == 0


# ---- FAI template binding ------------------------------------------------------------------------------


async def fai_template(api: Api, code: str, product: str | None = "P-1001") -> dict[str, Any]:
    r = await api.post(
        "/fai-templates",
        Q,
        json={
            "code": code,
            "name": f"FAI {code}",
            "productCode": product,
            "processType": "SMT",
            "version": "A",
            "items": [
                {"seq": 2, "itemName": "Solder joints", "itemSpec": "IPC-A-610", "required": True},
                {"seq": 1, "itemName": "Polarity", "required": False},
            ],
        },
    )
    assert r.status == 201, r.body
    return r.data


async def test_fai_template_binding_reaches_the_next_snapshot(demo: Api) -> None:
    api = demo
    tpl = await fai_template(api, "FAI-STD")
    bound = await api.patch(f"/routes/{STD}/fai-template", EN, json={"faiTemplateId": tpl["id"]})
    assert bound.status == 200, bound.body
    assert bound.data == {"routingCode": STD, "faiTemplateId": tpl["id"]}
    detail = (await api.get(f"/routes/{STD}", EN)).data
    assert (detail["faiTemplateId"], detail["faiTemplateCode"]) == (tpl["id"], "FAI-STD")

    v2 = await compile_(api)
    assert (v2["versionNo"], v2["status"]) == (2, "READY")
    items = {i["seq"]: i["id"] for i in tpl["items"]}
    assert v2["snapshot"]["route"]["faiTemplate"] == {
        "id": tpl["id"],
        "code": "FAI-STD",
        "name": "FAI FAI-STD",
        "productCode": "P-1001",
        "processType": "SMT",
        "version": "A",
        "items": [
            {"id": items[1], "seq": 1, "itemName": "Polarity", "itemSpec": None, "required": False},
            {
                "id": items[2],
                "seq": 2,
                "itemName": "Solder joints",
                "itemSpec": "IPC-A-610",
                "required": True,
            },
        ],
    }
    # The version already compiled keeps its (empty) template.
    assert (await api.get(f"/routes/{STD}/versions/1", EN)).data["snapshot"]["route"]["faiTemplate"] is None

    # Changing the bound template's items changes the input: the next compile is a new version.
    items = [{"seq": 1, "itemName": "Polarity", "itemSpec": "silkscreen dot", "required": True}]
    assert (await api.patch(f"/fai-templates/{tpl['id']}", Q, json={"items": items})).status == 200
    v3 = await compile_(api)
    assert v3["versionNo"] == 3
    assert [(i["seq"], i["itemSpec"]) for i in v3["snapshot"]["route"]["faiTemplate"]["items"]] == [
        (1, "silkscreen dot")
    ]

    unbound = await api.patch(f"/routes/{STD}/fai-template", EN, json={"faiTemplateId": None})
    assert unbound.status == 200 and unbound.data["faiTemplateId"] is None
    v4 = await compile_(api)
    assert v4["versionNo"] == 4 and v4["snapshot"]["route"]["faiTemplate"] is None
    assert (await api.get(f"/routes/{STD}/versions/2", EN)).data["snapshot"]["route"]["faiTemplate"][
        "id"
    ] == tpl["id"]


async def test_fai_template_binding_refusals(demo: Api) -> None:
    api = demo
    other = await fai_template(api, "FAI-OTHER", product="P-2001")
    anyp = await fai_template(api, "FAI-ANY", product=None)
    expect(
        await api.patch(f"/routes/{STD}/fai-template", EN, json={"faiTemplateId": 999999}),
        404,
        "FAI_TEMPLATE_NOT_FOUND",
    )
    # ROUTE-AUTO-V1 is the routing of P-ING-AUTO.
    mismatch = await api.patch("/routes/ROUTE-AUTO-V1/fai-template", EN, json={"faiTemplateId": other["id"]})
    expect(mismatch, 400, "FAI_TEMPLATE_PRODUCT_MISMATCH")
    assert (await api.get("/routes/ROUTE-AUTO-V1", EN)).data["faiTemplateId"] is None
    # A template without a product fits any routing; a routing without a product takes any template.
    assert (
        await api.patch("/routes/ROUTE-AUTO-V1/fai-template", EN, json={"faiTemplateId": anyp["id"]})
    ).status == 200
    assert (
        await api.patch(f"/routes/{STD}/fai-template", EN, json={"faiTemplateId": other["id"]})
    ).status == 200
    expect(
        await api.patch("/routes/ROUTE-NOPE/fai-template", EN, json={"faiTemplateId": None}),
        404,
        "ROUTE_NOT_FOUND",
    )
    expect(await api.patch(f"/routes/{STD}/fai-template", PL, json={"faiTemplateId": None}), 403, "FORBIDDEN")
