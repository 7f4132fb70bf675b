"""The demo plant seed (demo-plant.md): exact data, demo users sign in, refusal, force, the HTTP endpoint."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from central.api.app import create_app
from central.api.handlers import ROUTERS, demo
from central.config import Settings
from central.db.engine import Database
from central.db.models import (
    ApiKey,
    AuditEvent,
    DataCollectionSpec,
    ExecutableRouteVersion,
    Line,
    LineSolderPaste,
    LineStencil,
    Operation,
    OqcSamplingRule,
    Routing,
    Run,
    SolderPasteStatusRecord,
    Station,
    StationGroup,
    StencilStatusRecord,
    TpmEquipment,
    Unit,
    WorkOrder,
)
from central.services.demo_plant import SUMMARY_KEYS
from central.services.demo_seed import DemoSeedRefused, seed_demo
from central.services.uow import UnitOfWork
from tests.client import Api

LINE_A = ["ST-PRINT-01", "ST-SPI-01", "ST-MOUNT-01", "ST-REFLOW-01", "ST-AOI-01"]
LINE_DIP = ["ST-DIP-INS-01", "ST-DIP-WAVE-01", "ST-DIP-POST-01", "ST-DIP-TEST-01"]
LINE_B = ["ST-B-PRINT-01", "ST-B-SPI-01", "ST-B-MOUNT-01", "ST-B-REFLOW-01", "ST-B-AOI-01", "ST-B-ICT-01"]


async def _seed(database: Database, settings: Settings, force: bool = False) -> dict[str, Any]:
    async with UnitOfWork(database.writer) as uow:
        return await seed_demo(uow, settings, force=force)


async def _rows(database: Database, stmt: Any) -> list[Any]:
    async with database.reader() as s:
        return list((await s.execute(stmt)).all())


async def _count(database: Database, model: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def demo_client(aiohttp_client: Any, settings: Settings, database: Database) -> TestClient:
    """The app with the demo router (added here only while it is not yet in ROUTERS)."""
    extra = [] if demo.router in ROUTERS else [demo.router]
    return await aiohttp_client(create_app(settings, database=database, extra_routers=extra))


async def test_seed_loads_the_exact_plant(database: Database, settings: Settings) -> None:
    out = await _seed(database, settings)
    assert out["forced"] is False and out["edgeApiKey"].startswith("mes_")
    assert set(out) == {*SUMMARY_KEYS, "forced", "edgeApiKey"}
    assert (out["lines"], out["stations"], out["users"], out["routings"], out["routeVersions"]) == (
        4,
        18,
        8,
        6,
        6,
    )
    assert (out["workOrders"], out["runs"], out["units"], out["stationBindings"], out["lineBindings"]) == (
        4,
        2,
        5,
        10,
        2,
    )
    lines = {
        r[0]: r[1:] for r in await _rows(database, select(Line.code, Line.name, Line.process_type, Line.meta))
    }
    assert lines["LINE-A"][:2] == ("SMT Production Line A", "SMT")
    assert lines["LINE-A"][2]["readinessChecks"]["enabled"] == [
        "ROUTE",
        "LOADING",
        "EQUIPMENT",
        "MATERIAL",
        "STENCIL",
        "SOLDER_PASTE",
    ]
    assert lines["LINE-DIP-A"][2]["readinessChecks"]["enabled"] == ["ROUTE", "EQUIPMENT", "MATERIAL"]
    assert lines["LINE-ING"][2]["readinessChecks"]["enabled"] == ["ROUTE"]
    assert lines["LINE-B"][2]["readinessChecks"]["enabled"] == [
        "ROUTE",
        "EQUIPMENT",
        "STENCIL",
        "SOLDER_PASTE",
    ]
    stations = await _rows(
        database,
        select(Station.code, Station.name, Line.code, StationGroup.code, Station.station_type)
        .join(Line, Line.id == Station.line_id)
        .join(StationGroup, StationGroup.id == Station.group_id),
    )
    by_code = {r[0]: r[1:] for r in stations}
    assert by_code["ST-MOUNT-01"] == ("Pick & Place 01", "LINE-A", "SMT-LINE-A", "MANUAL")
    assert by_code["ST-DIP-TEST-01"] == ("Functional Test 01", "LINE-DIP-A", "DIP-LINE-A", "MANUAL")
    assert {c: by_code[c][2:] for c in ("ST-AUTO-01", "ST-TEST-01", "ST-BATCH-01")} == {
        "ST-AUTO-01": ("GRP-AUTO", "AUTO"),
        "ST-TEST-01": ("GRP-TEST", "TEST"),
        "ST-BATCH-01": ("GRP-BATCH", "BATCH"),
    }
    assert [by_code[c][2:] for c in LINE_B] == [
        ("GRP-B-PRINT", "AUTO"),
        ("GRP-B-SPI", "TEST"),
        ("GRP-B-MOUNT", "AUTO"),
        ("GRP-B-REFLOW", "BATCH"),
        ("GRP-B-AOI", "TEST"),
        ("GRP-B-ICT", "TEST"),
    ]
    tpm = dict(await _rows(database, select(TpmEquipment.equipment_code, TpmEquipment.status)))
    assert tpm == dict.fromkeys(LINE_A + LINE_DIP + LINE_B, "normal")
    key_ops = {r[0] for r in await _rows(database, select(Operation.code).where(Operation.is_key_quality))}
    assert {"SPI", "AOI", "FUNC_TEST"} <= key_ops and "PRINTING" not in key_ops
    specs = await _rows(
        database,
        select(
            DataCollectionSpec.name,
            Operation.code,
            DataCollectionSpec.trigger_type,
            DataCollectionSpec.method,
        )
        .join(Operation, Operation.id == DataCollectionSpec.operation_id)
        .where(DataCollectionSpec.name.like("TEMP-%")),
    )
    assert sorted(specs) == [
        ("TEMP-AUTO", "OP-AUTO", "EACH_UNIT", "AUTO"),
        ("TEMP-BATCH", "OP-BATCH", "EACH_CARRIER", "AUTO"),
        ("TEMP-TEST", "OP-TEST", "EACH_UNIT", "AUTO"),
    ]


async def test_seed_consumables_rules_and_business_data(database: Database, settings: Settings) -> None:
    await _seed(database, settings)
    stencils = await _rows(
        database, select(Line.code, LineStencil.stencil_id).join(Line, Line.id == LineStencil.line_id)
    )
    assert sorted(stencils) == [("LINE-A", "STENCIL-001"), ("LINE-B", "STENCIL-B-01")]
    pastes = await _rows(database, select(LineSolderPaste.lot_id, LineSolderPaste.is_current))
    assert sorted(pastes) == [("SP-LOT-001", True), ("SP-LOT-B-001", True)]
    st = await _rows(database, select(StencilStatusRecord.stencil_id, StencilStatusRecord.status))
    assert sorted(st) == [("STENCIL-001", "READY"), ("STENCIL-B-01", "READY")]
    sp = await _rows(database, select(SolderPasteStatusRecord.lot_id, SolderPasteStatusRecord.status))
    assert sorted(sp) == [("SP-LOT-001", "COMPLIANT"), ("SP-LOT-B-001", "COMPLIANT")]
    rules = await _rows(
        database,
        select(OqcSamplingRule.product_code, OqcSamplingRule.sampling_type, OqcSamplingRule.sample_value),
    )
    assert sorted(rules) == [("P-1001", "FIXED", 1.0), ("P-2001", "PERCENTAGE", 5.0)]
    wos = {
        r[0]: r[1:]
        for r in await _rows(
            database,
            select(
                WorkOrder.wo_no, WorkOrder.status, WorkOrder.planned_qty, WorkOrder.pick_status, Routing.code
            ).join(Routing, Routing.id == WorkOrder.routing_id),
        )
    }
    assert wos == {
        "WO-DEMO-SMT-001": ("RECEIVED", 10.0, "2", "PCBA-STD-V1"),
        "WO-DEMO-DIP-001": ("RECEIVED", 10.0, "2", "PCBA-DIP-V1"),
        "WO-DEMO-SMT-RUN-001": ("IN_PROGRESS", 3.0, "2", "PCBA-STD-V1"),
        "WO-DEMO-DIP-RUN-001": ("IN_PROGRESS", 2.0, "2", "PCBA-DIP-V1"),
    }
    runs = await _rows(
        database,
        select(
            Run.run_no, Run.status, Line.code, Run.plan_qty, Run.shift_code, Run.changeover_no,
            ExecutableRouteVersion.version_no, ExecutableRouteVersion.status,
        )
        .join(Line, Line.id == Run.line_id)
        .join(ExecutableRouteVersion, ExecutableRouteVersion.id == Run.route_version_id),
    )  # fmt: skip
    assert sorted(runs) == [
        ("RUN-DEMO-DIP-001", "PREP", "LINE-DIP-A", 2, "D1", "DEMO-DIP-001", 1, "READY"),
        ("RUN-DEMO-SMT-001", "PREP", "LINE-A", 3, "D1", "DEMO-SMT-001", 1, "READY"),
    ]
    units = await _rows(database, select(Unit.sn, Unit.status, Unit.current_step_no, Run.run_no).join(Run))
    assert sorted(units) == [
        ("SN-DEMO-DIP-0001", "QUEUED", 1, "RUN-DEMO-DIP-001"),
        ("SN-DEMO-DIP-0002", "QUEUED", 1, "RUN-DEMO-DIP-001"),
        ("SN-DEMO-SMT-0001", "QUEUED", 1, "RUN-DEMO-SMT-001"),
        ("SN-DEMO-SMT-0002", "QUEUED", 1, "RUN-DEMO-SMT-001"),
        ("SN-DEMO-SMT-0003", "QUEUED", 1, "RUN-DEMO-SMT-001"),
    ]
    async with database.reader() as s:
        wo = await s.scalar(select(WorkOrder).where(WorkOrder.wo_no == "WO-DEMO-SMT-RUN-001"))
        assert wo is not None and wo.meta["dispatch"]["lineCode"] == "LINE-A"
        audit = await s.scalar(select(AuditEvent).where(AuditEvent.action == "DEMO_SEED"))
        assert audit is not None and audit.status == "SUCCESS" and audit.entity_type == "SYSTEM_CONFIG"
        assert audit.payload["stations"] == 18 and "edgeApiKey" not in audit.payload


async def test_routes_compiled_ready_version_1(database: Database, settings: Settings) -> None:
    await _seed(database, settings)
    rows = await _rows(
        database,
        select(Routing.code, ExecutableRouteVersion).join(
            ExecutableRouteVersion, ExecutableRouteVersion.routing_id == Routing.id
        ),
    )
    versions = {code: v for code, v in rows}
    assert set(versions) == {
        "PCBA-STD-V1", "PCBA-DIP-V1", "ROUTE-AUTO-V1", "ROUTE-TEST-V1", "ROUTE-BATCH-V1", "PCBA-AUTO-V1",
    }  # fmt: skip
    assert all((v.version_no, v.status, v.errors_json) == (1, "READY", []) for v in versions.values())
    for code, n_steps in (("PCBA-STD-V1", 5), ("PCBA-DIP-V1", 4)):
        snap = versions[code].snapshot_json
        assert snap["route"] == {"code": code, "sourceSystem": "MES", "sourceKey": None, "faiTemplate": None}
        assert snap["routeVersion"]["versionNo"] == 1
        steps = snap["steps"]
        assert [s["stepNo"] for s in steps] == list(range(1, n_steps + 1))
        assert [s["requiresFAI"] for s in steps] == [True] + [False] * (n_steps - 1)
        for s in steps:
            assert s["stationType"] == "MANUAL" and s["allowedStationIds"] == [] and s["dataSpecIds"] == []
            assert s["requiresAuthorization"] is False and s["ingestMapping"] is None
    auto = versions["ROUTE-AUTO-V1"].snapshot_json["steps"][0]
    assert auto["stationType"] == "AUTO" and len(auto["dataSpecIds"]) == 1
    assert auto["ingestMapping"]["snPath"] == "payload.sn" and auto["ingestMapping"]["eventType"] == "AUTO"
    test = versions["ROUTE-TEST-V1"].snapshot_json["steps"][0]["ingestMapping"]
    assert test["testResultIdPath"] == "payload.testResultId"
    batch = versions["ROUTE-BATCH-V1"].snapshot_json["steps"][0]["ingestMapping"]
    assert batch["carrierCodePath"] == "payload.carrierCode" and batch["snListPath"] == "payload.snList"
    assert batch["batchPolicy"] == "ALL_OR_NOTHING" and "snPath" not in batch
    assert batch["result"] == {"path": "payload.result", "passValues": ["PASS"], "failValues": ["FAIL"]}
    b_steps = versions["PCBA-AUTO-V1"].snapshot_json["steps"]
    assert [(s["stepNo"], s["stationType"]) for s in b_steps] == [
        (10, "AUTO"), (20, "TEST"), (30, "AUTO"), (40, "BATCH"), (50, "TEST"), (60, "TEST"),
    ]  # fmt: skip
    assert all(s["ingestMapping"]["eventType"] == s["stationType"] and not s["requiresFAI"] for s in b_steps)
    assert [len(s["dataSpecIds"]) for s in b_steps] == [0, 3, 1, 1, 0, 3]


async def test_every_demo_user_signs_in_with_its_role_and_bindings(
    demo_client: TestClient, database: Database, settings: Settings
) -> None:
    await _seed(database, settings)
    api = Api(demo_client)
    station_ids = dict(await _rows(database, select(Station.code, Station.id)))
    line_ids = dict(await _rows(database, select(Line.code, Line.id)))
    expected = {
        "admin@example.com": ("admin", "ALL", [], []),
        "planner@example.com": ("planner", "ALL", [], []),
        "engineer@example.com": ("engineer", "ALL", [], []),
        "quality@example.com": ("quality", "ALL", [], []),
        "material@example.com": ("material", "ASSIGNED_LINES", ["LINE-A", "LINE-DIP-A"], []),
        "operator@example.com": ("operator", "ASSIGNED_STATIONS", [], LINE_A + LINE_DIP),
        "operator.aoi@example.com": ("operator", "ASSIGNED_STATIONS", [], ["ST-AOI-01"]),
        "trace@example.com": ("trace", "ALL", [], []),
    }
    for email, (role, scope, lines, stations) in expected.items():
        me = (await api.get("/permissions/me", email)).data
        assert [(r["code"], r["dataScope"]) for r in me["roles"]] == [(role, scope)], email
        assert me["lineIds"] == sorted(line_ids[c] for c in lines), email
        assert me["stationIds"] == sorted(station_ids[c] for c in stations), email
    r = await demo_client.post(
        "/api/auth/sign-in/email", json={"email": "planner@example.com", "password": "x"}
    )
    assert r.status == 401
    names = (await api.get("/users", "admin@example.com", params={"pageSize": 100})).data["items"]
    assert {u["email"]: u["name"] for u in names}["operator.aoi@example.com"] == "赵检测"


async def test_edge_api_key_has_the_edge_agent_role(
    demo_client: TestClient, database: Database, settings: Settings
) -> None:
    out = await _seed(database, settings)
    me = (await Api(demo_client).get("/permissions/me", out["edgeApiKey"])).data
    assert [(r["code"], r["dataScope"]) for r in me["roles"]] == [("edge-agent", "ALL")]
    assert me["permissions"] == ["exec:track_in", "exec:track_out", "system:integration"]


async def test_second_seed_is_refused_and_force_adds_nothing(database: Database, settings: Settings) -> None:
    await _seed(database, settings)
    counts = {m: await _count(database, m) for m in (Line, Station, WorkOrder, Run, Unit, Routing)}
    with pytest.raises(DemoSeedRefused) as exc:
        await _seed(database, settings)
    assert (exc.value.code, exc.value.status) == ("DEMO_SEED_REFUSED", 409) and "--force" in exc.value.message
    again = await _seed(database, settings, force=True)
    assert again["forced"] is True and again["apiKeys"] == 1
    assert all(again[k] == 0 for k in SUMMARY_KEYS if k != "apiKeys")
    assert {m: await _count(database, m) for m in counts} == counts
    assert await _count(database, ExecutableRouteVersion) == 6
    keys = await _rows(database, select(ApiKey.revoked_at).order_by(ApiKey.id))
    assert [k[0] is None for k in keys] == [False, True]  # the old key is revoked, the new one works


async def test_force_fills_in_a_partly_loaded_database(database: Database, settings: Settings) -> None:
    async with UnitOfWork(database.writer) as uow:
        uow.session.add(Line(code="LINE-A", name="Renamed by the customer", process_type="SMT"))
    with pytest.raises(DemoSeedRefused):
        await _seed(database, settings)
    out = await _seed(database, settings, force=True)
    assert out["lines"] == 3 and out["stations"] == 18
    names = dict(await _rows(database, select(Line.code, Line.name)))
    assert names["LINE-A"] == "Renamed by the customer"  # existing rows are never changed


async def test_http_endpoint(demo_client: TestClient, make_user: Any) -> None:
    api = Api(demo_client)
    assert (await api.post("/system/demo-seed")).status == 401  # before any sign-in sets a cookie
    await make_user("root@example.com", "admin")
    await make_user("pl@example.com", "planner")
    denied = await api.post("/system/demo-seed", "pl@example.com")
    assert denied.status == 403 and denied.code == "FORBIDDEN"
    ok = await api.post("/system/demo-seed", "root@example.com")
    assert ok.status == 200 and ok.data["stations"] == 18 and ok.data["edgeApiKey"].startswith("mes_")
    assert ok.data["forced"] is False and ok.data["routeVersions"] == 6
    refused = await api.post("/system/demo-seed", "root@example.com", json={})
    assert refused.status == 409 and refused.code == "DEMO_SEED_REFUSED"
    forced = await api.post("/system/demo-seed", "root@example.com", json={"force": True})
    assert forced.status == 200 and forced.data["forced"] is True and forced.data["units"] == 0
    bad = await api.post("/system/demo-seed", "root@example.com", json={"force": True, "x": 1})
    assert bad.status == 422
    logs = await api.get(
        "/audit-logs", "root@example.com", params={"action": "DEMO_SEED", "status": "FAIL", "pageSize": 100}
    )
    assert logs.status == 200 and any(i["errorCode"] == "DEMO_SEED_REFUSED" for i in logs.data["items"])


async def test_http_endpoint_disabled(
    aiohttp_client: Any, settings: Settings, database: Database, make_user: Any
) -> None:
    off = settings.model_copy(update={"allow_demo_seed": False})
    extra = [] if demo.router in ROUTERS else [demo.router]
    api = Api(await aiohttp_client(create_app(off, database=database, extra_routers=extra)))
    await make_user("root@example.com", "admin")
    r = await api.post("/system/demo-seed", "root@example.com")
    assert r.status == 403 and r.code == "DEMO_SEED_DISABLED"
    assert await _count(database, Line) == 0
