"""The pure route compile: merge precedence, every INVALID code, snapshot shape, signature, station fit."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from central.domain.compile import (
    INVALID,
    READY,
    CompileInput,
    ExecConfig,
    FaiItemDef,
    FaiTemplateDef,
    RouteHead,
    StepDef,
    compile_route,
)
from central.domain.errors import MesError
from central.domain.route import station_fits

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ROUTE = RouteHead(code="R-1", source_system="MES", source_key=None)


def manual_steps() -> list[StepDef]:
    # Deliberately unsorted: the compile orders by stepNo.
    return [
        StepDef(id=12, step_no=20, operation_id=2, station_type="MANUAL", station_group_id=7),
        StepDef(
            id=11, step_no=10, operation_id=1, station_type="MANUAL", station_group_id=7, requires_fai=True
        ),
    ]


def cfg(
    id: int, *, step: int | None = None, key: str | None = None, age: int = 0, **kw: object
) -> ExecConfig:
    return ExecConfig(
        id=id, updated_at=T0 + timedelta(minutes=age), routing_step_id=step, source_step_key=key, **kw
    )  # type: ignore[arg-type]


def codes(result: object) -> list[tuple[int, str]]:
    return [(e["stepNo"], e["code"]) for e in result.errors]  # type: ignore[attr-defined]


def test_ready_snapshot_has_the_documented_shape() -> None:
    r = compile_route(CompileInput(route=ROUTE, steps=manual_steps()))
    assert r.status == READY and r.ready and r.errors == []
    assert r.snapshot == {
        "route": {"code": "R-1", "sourceSystem": "MES", "sourceKey": None, "faiTemplate": None},
        "steps": [
            {
                "stepNo": 10,
                "operationId": 1,
                "stationType": "MANUAL",
                "stationGroupId": 7,
                "allowedStationIds": [],
                "requiresFAI": True,
                "requiresAuthorization": False,
                "dataSpecIds": [],
                "ingestMapping": None,
            },
            {
                "stepNo": 20,
                "operationId": 2,
                "stationType": "MANUAL",
                "stationGroupId": 7,
                "allowedStationIds": [],
                "requiresFAI": False,
                "requiresAuthorization": False,
                "dataSpecIds": [],
                "ingestMapping": None,
            },
        ],
    }
    full = r.versioned_snapshot(3, "2024-01-01T00:00:00.000Z")
    assert full["routeVersion"] == {"versionNo": 3, "compiledAt": "2024-01-01T00:00:00.000Z"}
    assert "routeVersion" not in r.snapshot


def test_fai_template_snapshot_lists_items_by_seq() -> None:
    tpl = FaiTemplateDef(
        id=5,
        code="FAI-1",
        name="First article",
        product_code="P-1",
        process_type="SMT",
        version="A",
        items=[
            FaiItemDef(id=2, seq=2, item_name="Solder", required=False),
            FaiItemDef(9, 1, "Polarity", "U1"),
        ],
    )
    r = compile_route(CompileInput(route=ROUTE, steps=manual_steps(), fai_template=tpl))
    assert r.snapshot["route"]["faiTemplate"] == {
        "id": 5,
        "code": "FAI-1",
        "name": "First article",
        "productCode": "P-1",
        "processType": "SMT",
        "version": "A",
        "items": [
            {"id": 9, "seq": 1, "itemName": "Polarity", "itemSpec": "U1", "required": True},
            {"id": 2, "seq": 2, "itemName": "Solder", "itemSpec": None, "required": False},
        ],
    }


def test_no_steps_is_routing_empty() -> None:
    with pytest.raises(MesError) as exc:
        compile_route(CompileInput(route=ROUTE, steps=[]))
    assert exc.value.code == "ROUTING_EMPTY" and exc.value.status == 400


def test_station_type_missing() -> None:
    steps = [StepDef(id=1, step_no=1, operation_id=1, station_type=None, station_group_id=7)]
    r = compile_route(CompileInput(route=ROUTE, steps=steps))
    assert r.status == INVALID and codes(r) == [(1, "STATION_TYPE_MISSING")]
    assert r.errors[0]["message"]


def test_station_constraint_missing_without_group_or_allowed_stations() -> None:
    steps = [StepDef(id=1, step_no=1, operation_id=1, station_type="MANUAL")]
    assert codes(compile_route(CompileInput(route=ROUTE, steps=steps))) == [(1, "STATION_CONSTRAINT_MISSING")]
    allowed = compile_route(CompileInput(route=ROUTE, steps=steps, configs=[cfg(1, allowed_station_ids=[4])]))
    assert allowed.status == READY and allowed.snapshot["steps"][0]["allowedStationIds"] == [4]


@pytest.mark.parametrize("stype", ["AUTO", "BATCH", "TEST"])
def test_ingest_mapping_missing_for_machine_steps(stype: str) -> None:
    steps = [StepDef(id=1, step_no=1, operation_id=1, station_type=stype, station_group_id=7)]
    assert codes(compile_route(CompileInput(route=ROUTE, steps=steps))) == [(1, "INGEST_MAPPING_MISSING")]
    mapped = [cfg(1, step=1, ingest_mapping={"eventType": stype, "snPath": "payload.sn"})]
    assert compile_route(CompileInput(route=ROUTE, steps=steps, configs=mapped)).status == READY


def test_data_spec_not_found_and_operation_mismatch() -> None:
    configs = [cfg(1, step=11, data_spec_ids=[100, 101, 102])]
    r = compile_route(
        CompileInput(route=ROUTE, steps=manual_steps(), configs=configs, spec_operations={100: 1, 101: 2})
    )
    assert r.status == INVALID
    assert codes(r) == [(10, "DATA_SPEC_NOT_FOUND"), (10, "DATA_SPEC_OPERATION_MISMATCH")]
    assert "102" in r.errors[0]["message"] and "101" in r.errors[1]["message"]
    ok = compile_route(
        CompileInput(route=ROUTE, steps=manual_steps(), configs=configs[:0], spec_operations={})
    )
    assert ok.status == READY


def test_step_config_beats_route_config_beats_step_fields() -> None:
    route_cfg = cfg(1, station_group_id=8, requires_authorization=True, data_spec_ids=[100])
    step_cfg = cfg(2, step=11, station_group_id=9, requires_fai=False)
    r = compile_route(
        CompileInput(
            route=ROUTE, steps=manual_steps(), configs=[route_cfg, step_cfg], spec_operations={100: 1}
        )
    )
    s10, s20 = r.snapshot["steps"]
    # step 10: group from its step config, requiresFAI False from step config (not the step's True),
    # requiresAuthorization and specs fall through to the route config.
    assert (s10["stationGroupId"], s10["requiresFAI"], s10["requiresAuthorization"]) == (9, False, True)
    assert s10["dataSpecIds"] == [100] and s10["stationType"] == "MANUAL"
    # step 20 has no step config: route config wins over the step's own group; FAI from the step field.
    assert (s20["stationGroupId"], s20["requiresFAI"], s20["requiresAuthorization"]) == (8, False, True)
    assert codes(r) == [(20, "DATA_SPEC_OPERATION_MISMATCH")]  # route-wide spec 100 belongs to operation 1


def test_latest_updated_at_wins_and_ties_go_to_the_highest_id() -> None:
    older = cfg(5, step=11, age=0, station_group_id=1)
    newer = cfg(3, step=11, age=10, station_group_id=2)
    tie = cfg(4, step=11, age=10, station_group_id=3)
    steps = manual_steps()
    assert (
        compile_route(CompileInput(ROUTE, steps, [older, newer])).snapshot["steps"][0]["stationGroupId"] == 2
    )
    assert (
        compile_route(CompileInput(ROUTE, steps, [older, newer, tie])).snapshot["steps"][0]["stationGroupId"]
        == 3
    )
    r1, r2 = cfg(7, age=1, station_group_id=20), cfg(6, age=5, station_group_id=21)
    assert compile_route(CompileInput(ROUTE, steps, [r1, r2])).snapshot["steps"][1]["stationGroupId"] == 21


def test_step_config_matches_by_source_step_key() -> None:
    steps = [replace(manual_steps()[1], source_step_key="ERP:R1:10:P01")]
    by_key = cfg(1, key="ERP:R1:10:P01", station_type="TEST", ingest_mapping={"eventType": "TEST"})
    other = cfg(2, key="ERP:R1:20:P02", station_type="AUTO")
    r = compile_route(CompileInput(ROUTE, steps, [by_key, other]))
    assert r.snapshot["steps"][0]["stationType"] == "TEST" and r.status == READY


def test_signature_is_deterministic_and_follows_the_input() -> None:
    inp = CompileInput(ROUTE, manual_steps(), [cfg(1, step=11, ingest_mapping={"b": 1, "a": [1, 2]})])
    same = CompileInput(
        ROUTE, list(reversed(manual_steps())), [cfg(1, step=11, ingest_mapping={"a": [1, 2], "b": 1})]
    )
    a, b = compile_route(inp), compile_route(same)
    assert a.signature == b.signature and len(a.signature) == 64
    changed = compile_route(CompileInput(ROUTE, manual_steps(), [cfg(1, step=11, ingest_mapping={"b": 2})]))
    assert changed.signature != a.signature
    renamed = compile_route(CompileInput(replace(ROUTE, source_key="K"), manual_steps()))
    assert renamed.signature != compile_route(CompileInput(ROUTE, manual_steps())).signature
    # An edit that leaves the merge result unchanged keeps the signature (updatedAt is not part of it).
    touched = CompileInput(
        ROUTE, manual_steps(), [cfg(1, step=11, age=99, ingest_mapping={"b": 1, "a": [1, 2]})]
    )
    assert compile_route(touched).signature == a.signature


def test_ids_from_json_strings_become_ints() -> None:
    r = compile_route(CompileInput(ROUTE, manual_steps(), [cfg(1, step=11, allowed_station_ids=["4", 5])]))
    assert r.snapshot["steps"][0]["allowedStationIds"] == [4, 5]


def test_station_fits() -> None:
    step = {"stationType": "MANUAL", "stationGroupId": 7, "allowedStationIds": []}
    assert station_fits(step, station_id=1, station_type="MANUAL", group_id=7)
    assert not station_fits(step, station_id=1, station_type="AUTO", group_id=7)
    assert not station_fits(step, station_id=1, station_type="MANUAL", group_id=8)
    no_group = {**step, "stationGroupId": None}
    assert station_fits(no_group, station_id=1, station_type="MANUAL", group_id=None)
    listed = {**no_group, "allowedStationIds": [3, 4]}
    assert station_fits(listed, station_id=4, station_type="MANUAL", group_id=99)
    assert not station_fits(listed, station_id=5, station_type="MANUAL", group_id=99)
    both = {**listed, "stationGroupId": 7}
    assert not station_fits(both, station_id=4, station_type="MANUAL", group_id=99)
    assert station_fits(both, station_id=4, station_type="MANUAL", group_id=7)
