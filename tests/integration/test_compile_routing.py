"""compile_routing against a real database: determinism, new versions on change, INVALID rows, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    DataCollectionSpec,
    ExecutableRouteVersion,
    Operation,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
    StationGroup,
)
from central.domain.errors import MesError
from central.services.compile import compile_routing
from central.services.uow import UnitOfWork


async def _routing(database: Database, *, steps: bool = True) -> dict[str, int]:
    async with UnitOfWork(database.writer) as uow:
        s = uow.session
        op1, op2 = Operation(code="OP-1", name="Op 1"), Operation(code="OP-2", name="Op 2")
        group = StationGroup(code="G-1", name="Group 1")
        r = Routing(code="R-1", name="Route 1", process_type="SMT")
        s.add_all([op1, op2, group, r])
        await s.flush()
        ids = {"op1": op1.id, "op2": op2.id, "group": group.id, "routing": r.id}
        if steps:
            for no, op in ((10, op1), (20, op2)):
                st = RoutingStep(
                    routing_id=r.id,
                    step_no=no,
                    operation_id=op.id,
                    station_group_id=group.id,
                    station_type="MANUAL",
                )
                s.add(st)
                await s.flush()
                ids[f"step{no}"] = st.id
        return ids


async def _compile(database: Database, code: str = "R-1") -> ExecutableRouteVersion:
    async with UnitOfWork(database.writer) as uow:
        return await compile_routing(uow, code)


async def _add(database: Database, *rows: Any) -> None:
    async with UnitOfWork(database.writer) as uow:
        uow.session.add_all(rows)


async def _count(database: Database, model: Any, *where: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_compile_is_deterministic(database: Database) -> None:
    await _routing(database)
    v1 = await _compile(database)
    assert v1.version_no == 1 and v1.status == "READY" and v1.errors_json == []
    snap = v1.snapshot_json
    assert snap["route"] == {"code": "R-1", "sourceSystem": "MES", "sourceKey": None, "faiTemplate": None}
    assert [s["stepNo"] for s in snap["steps"]] == [10, 20]
    assert snap["routeVersion"]["versionNo"] == 1 and snap["routeVersion"]["compiledAt"].endswith("Z")
    again = await _compile(database)
    assert (again.id, again.version_no, again.signature) == (v1.id, 1, v1.signature)
    assert await _count(database, ExecutableRouteVersion) == 1
    assert await _count(database, AuditEvent, AuditEvent.action == "ROUTE_COMPILE") == 2


async def test_a_change_makes_the_next_version_and_invalid_stores_errors(database: Database) -> None:
    ids = await _routing(database)
    v1 = await _compile(database)
    # Step 20 becomes AUTO without an ingest mapping, and binds a spec of another operation → INVALID v2.
    spec = DataCollectionSpec(operation_id=ids["op1"], name="TEMP", data_type="NUMBER")
    await _add(database, spec)
    bad = RouteExecutionConfig(
        routing_id=ids["routing"], routing_step_id=ids["step20"], station_type="AUTO", data_spec_ids=[spec.id]
    )
    await _add(database, bad)
    v2 = await _compile(database)
    assert (v2.version_no, v2.status) == (2, "INVALID") and v2.id != v1.id
    assert [(e["stepNo"], e["code"]) for e in v2.errors_json] == [
        (20, "INGEST_MAPPING_MISSING"),
        (20, "DATA_SPEC_OPERATION_MISMATCH"),
    ]
    assert v2.snapshot_json["steps"][1]["stationType"] == "AUTO"
    assert (await _compile(database)).id == v2.id  # the same INVALID input gives the same row
    # A newer step config fixes it → v3 READY; the spec binding moves to the step of its own operation.
    fix = RouteExecutionConfig(
        routing_id=ids["routing"],
        routing_step_id=ids["step20"],
        station_type="AUTO",
        ingest_mapping={"eventType": "AUTO", "snPath": "payload.sn"},
    )
    bind = RouteExecutionConfig(
        routing_id=ids["routing"], routing_step_id=ids["step10"], data_spec_ids=[spec.id]
    )
    await _add(database, fix, bind)
    v3 = await _compile(database)
    assert (v3.version_no, v3.status, v3.errors_json) == (3, "READY", [])
    assert v3.snapshot_json["steps"][0]["dataSpecIds"] == [spec.id]
    assert v3.snapshot_json["steps"][1]["ingestMapping"] == {"eventType": "AUTO", "snPath": "payload.sn"}
    assert await _count(database, ExecutableRouteVersion) == 3


async def test_missing_data_spec_and_station_constraint(database: Database) -> None:
    ids = await _routing(database)
    await _add(
        database,
        RouteExecutionConfig(
            routing_id=ids["routing"], routing_step_id=ids["step10"], data_spec_ids=[999_999]
        ),
    )
    async with UnitOfWork(database.writer) as uow:
        step = await uow.session.get(RoutingStep, ids["step20"])
        assert step is not None
        step.station_group_id = None
    v = await _compile(database)
    assert v.status == "INVALID"
    assert [(e["stepNo"], e["code"]) for e in v.errors_json] == [
        (10, "DATA_SPEC_NOT_FOUND"),
        (20, "STATION_CONSTRAINT_MISSING"),
    ]


async def test_routing_without_steps_is_routing_empty(database: Database) -> None:
    await _routing(database, steps=False)
    with pytest.raises(MesError) as exc:
        await _compile(database)
    assert (exc.value.code, exc.value.status) == ("ROUTING_EMPTY", 400)
    assert await _count(database, ExecutableRouteVersion) == 0


async def test_unknown_routing_is_route_not_found(database: Database) -> None:
    with pytest.raises(MesError) as exc:
        await _compile(database, "NOPE")
    assert (exc.value.code, exc.value.status) == ("ROUTE_NOT_FOUND", 404)
