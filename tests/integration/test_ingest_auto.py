"""AUTO / TEST ingest (domain.md §4.3 steps 1–6): guard order and codes, dedupe under real concurrency, the
writes (track, values, judge, unit move, defect, outbox, audit), custom mappings and the typed endpoints."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    DataValue,
    Defect,
    ExecutableRouteVersion,
    IngestEvent,
    MesEvent,
    Run,
    Station,
    Track,
)
from central.domain.clock import iso, utcnow
from central.schemas.ingest import IngestEventIn
from central.services.ingest import ingest_event
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import OP, PL, Q, seed, set_run_status
from tests.ingest_helpers import A, counts, ing_run, line_b_run, patch_spec, set_mapping, uniq, unit_event

EVENTS = "/ingest/events"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def _all(database: Database, stmt: Any) -> list[Any]:
    async with database.reader() as s:
        return list((await s.scalars(stmt)).all())


# ---- guards ----------------------------------------------------------------------------------------------


async def test_dedupe_is_checked_before_the_payload(demo: Api) -> None:
    """Guard 1 precedes guard 2: a replay answers duplicate even when its payload would now be refused."""
    flow = await ing_run(demo, "AUTO")
    body = unit_event("AUTO", flow, flow["sns"][0])
    first = await demo.post(EVENTS, A, json=body)
    assert first.status == 200, first.body
    replay = await demo.post(EVENTS, A, json={**body, "occurredAt": "garbage", "payload": None})
    assert replay.status == 200 and replay.data == {**first.data, "duplicate": True}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"occurredAt": None}, "null time"),
        ({"occurredAt": "2026-13-01T00:00:00Z"}, "not a date"),
        ({"occurredAt": "2026-01-01T08:00:00"}, "no offset"),
        ({"occurredAt": 1767254400}, "epoch number"),
        ({"payload": None}, "null payload"),
        ({"payload": ["SN-1"]}, "payload not an object"),
    ],
)
async def test_bad_time_or_payload_is_payload_invalid(demo: Api, change: dict[str, Any], why: str) -> None:
    r = await demo.post(EVENTS, A, json={**unit_event("AUTO", None, "SN-X"), **change})
    expect(r, 400, "INGEST_PAYLOAD_INVALID")


async def test_future_time_is_payload_invalid(demo: Api) -> None:
    flow = await ing_run(demo, "AUTO")
    body = {**unit_event("AUTO", flow, flow["sns"][0]), "occurredAt": iso(utcnow() + timedelta(hours=1))}
    expect(await demo.post(EVENTS, A, json=body), 400, "INGEST_PAYLOAD_INVALID")
    body["occurredAt"] = iso(utcnow() + timedelta(minutes=2))  # small clock skew is tolerated
    assert (await demo.post(EVENTS, A, json=body)).status == 200


async def test_schema_errors_are_422(demo: Api) -> None:
    body = unit_event("AUTO", None, "SN-X")
    for broken in ({k: v for k, v in body.items() if k != "dedupeKey"}, {**body, "eventType": "MANUAL"}):
        expect(await demo.post(EVENTS, A, json=broken), 422, "VALIDATION_FAILED")


async def test_run_resolution(demo: Api, database: Database) -> None:
    """runNo → RUN_NOT_FOUND; else payload.sn → its run; else payload.snList → one run; else not found."""
    flow = await ing_run(demo, "AUTO", qty=2)
    other = await ing_run(demo, "AUTO")
    expect(
        await demo.post(EVENTS, A, json={**unit_event("AUTO", flow, "x"), "runNo": "R"}), 404, "RUN_NOT_FOUND"
    )
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", None, "SN-NOPE")), 404, "UNIT_RUN_NOT_FOUND")
    by_list = unit_event("AUTO", None, None, snList=[flow["sns"][0], "SN-NOPE"])
    r = await demo.post(EVENTS, A, json=by_list)
    expect(r, 404, "UNIT_RUN_NOT_FOUND")
    assert r.body["error"]["details"]["sns"] == ["SN-NOPE"]
    two_runs = unit_event("AUTO", None, None, snList=[flow["sns"][0], other["sns"][0]])
    expect(await demo.post(EVENTS, A, json=two_runs), 400, "RUN_MISMATCH")
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", None, None)), 404, "UNIT_RUN_NOT_FOUND")
    # payload.sn alone finds the run (no runNo in the body).
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", None, flow["sns"][1]))
    assert r.status == 200, r.body
    [row] = await _all(database, select(IngestEvent))
    run_id = (await _all(database, select(Run.id).where(Run.run_no == flow["runNo"])))[0]
    assert row.run_id == run_id and row.sn == flow["sns"][1]


async def test_route_version_not_ready(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "AUTO")
    async with database.writer() as s, s.begin():  # a state the API cannot produce: the frozen version broke
        run = await s.scalar(select(Run).where(Run.run_no == flow["runNo"]))
        assert run is not None
        await s.execute(
            update(ExecutableRouteVersion)
            .where(ExecutableRouteVersion.id == run.route_version_id)
            .values(status="INVALID")
        )
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, flow["sns"][0]))
    expect(r, 400, "ROUTE_VERSION_NOT_READY")


async def test_mapping_missing_or_for_another_type_or_invalid(demo: Api) -> None:
    test_run = await ing_run(demo, "TEST")
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", test_run, test_run["sns"][0]))
    expect(r, 400, "INGEST_MAPPING_MISSING")  # the TEST route has no AUTO step
    await set_mapping(demo, "ROUTE-AUTO-V1", mapping={"eventType": "TEST"})
    flow = await ing_run(demo, "AUTO")
    expect(
        await demo.post(EVENTS, A, json=unit_event("AUTO", flow, flow["sns"][0])),
        400,
        "INGEST_MAPPING_MISSING",
    )
    await set_mapping(demo, "ROUTE-AUTO-V1", mapping={"eventType": "AUTO", "result": "payload.result"})
    flow = await ing_run(demo, "AUTO")
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, flow["sns"][0]))
    expect(r, 400, "INGEST_MAPPING_INVALID")


async def test_required_fields_and_result_values(demo: Api) -> None:
    flow = await ing_run(demo, "AUTO")
    sn = flow["sns"][0]
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, result="MAYBE"))
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    nested = unit_event("AUTO", flow, sn)
    nested["payload"]["sn"] = {"nested": "object"}
    r = await demo.post(EVENTS, A, json=nested)
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, measurements="55.5"))
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    test_run = await ing_run(demo, "TEST")
    r = await demo.post(EVENTS, A, json=unit_event("TEST", test_run, test_run["sns"][0], testResultId=None))
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    # Result values compare case-insensitively.
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, result="pass"))
    assert r.status == 200, r.body


async def test_station_and_unit_guards_in_order(demo: Api, database: Database, make_user: Any) -> None:
    flow = await ing_run(demo, "AUTO", qty=2)
    other = await ing_run(demo, "AUTO")
    sn, sn2 = flow["sns"]
    # STATION_NOT_FOUND comes before UNIT_NOT_FOUND.
    unknown_both = unit_event("AUTO", flow, "SN-NOPE", stationCode="ST-NOPE")
    expect(await demo.post(EVENTS, A, json=unknown_both), 404, "STATION_NOT_FOUND")
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", flow, "SN-NOPE")), 404, "UNIT_NOT_FOUND")
    expect(
        await demo.post(EVENTS, A, json=unit_event("AUTO", flow, other["sns"][0])), 400, "UNIT_RUN_MISMATCH"
    )
    # A station of another line / type does not fit the step.
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, stationCode="ST-B-PRINT-01"))
    expect(r, 400, "STATION_MISMATCH")

    # Ours: a unit inside a station (manual track-in), on hold or scrapped cannot take an ingest step either.
    async with database.reader() as s:
        station_id = await s.scalar(select(Station.id).where(Station.code == "ST-AUTO-01"))
    await make_user("op.ing@example.com", "operator", station_ids=[station_id])
    r = await demo.post(
        "/stations/ST-AUTO-01/track-in",
        "op.ing@example.com",
        json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]},
    )
    assert r.status == 200, r.body
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn)), 400, "UNIT_ALREADY_IN_STATION")

    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn2, result="FAIL"))
    assert r.status == 200, r.body
    [defect] = (await demo.get("/defects", Q, params={"unitSn": sn2})).data["items"]
    r = await demo.post(f"/defects/{defect['id']}/disposition", Q, json={"type": "HOLD", "reason": "check"})
    assert r.status == 200, r.body
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn2)), 400, "UNIT_ON_HOLD")
    r = await demo.post(f"/defects/{defect['id']}/release", Q, json={"reason": "re-test"})
    assert r.status == 200, r.body
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn2, result="FAIL"))
    [again] = (await demo.get("/defects", Q, params={"unitSn": sn2, "status": "RECORDED"})).data["items"]
    r = await demo.post(f"/defects/{again['id']}/disposition", Q, json={"type": "SCRAP", "reason": "burnt"})
    assert r.status == 200, r.body
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn2)), 400, "UNIT_SCRAPPED")


async def test_data_spec_guards(demo: Api) -> None:
    flow = await ing_run(demo, "AUTO")
    sn = flow["sns"][0]
    expect(
        await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, value="hot")), 400, "DATA_VALUE_INVALID"
    )
    expect(
        await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, value=True)), 400, "DATA_VALUE_INVALID"
    )
    await patch_spec(demo, "TEMP-AUTO", method="MANUAL")  # ours for AUTO/TEST too: machines feed AUTO specs
    expect(await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn)), 400, "DATA_SPEC_METHOD_MISMATCH")
    await patch_spec(demo, "TEMP-AUTO", method="AUTO")
    # A numeric string is coerced; an unknown measurement is ignored (and listed in the event's summary).
    extra = [{"name": "TEMP-AUTO", "value": "56.5"}, {"name": "FAN_RPM", "value": 1200}]
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, measurements=extra))
    assert r.status == 200, r.body
    t = (await demo.get(f"/trace/units/{sn}", Q)).data
    assert [(v["name"], v["valueNumber"], v["judge"]) for v in t["dataValues"]] == [("TEMP-AUTO", 56.5, None)]


async def test_data_spec_map_to_a_missing_spec(demo: Api) -> None:
    await set_mapping(demo, "ROUTE-AUTO-V1", mapping={"dataSpecMap": {"T1": "NO-SUCH-SPEC"}})
    flow = await ing_run(demo, "AUTO")
    body = unit_event("AUTO", flow, flow["sns"][0], measurements=[{"name": "T1", "value": 1}])
    expect(await demo.post(EVENTS, A, json=body), 404, "DATA_SPEC_NOT_FOUND")  # not-found codes are 404 here


async def test_run_gate(demo: Api, database: Database) -> None:
    prep = await ing_run(demo, "AUTO", authorize=False)
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", prep, prep["sns"][0]))
    expect(r, 400, "RUN_IN_PREP")
    await set_mapping(demo, "ROUTE-AUTO-V1", requiresAuthorization=True)
    strict = await ing_run(demo, "AUTO", qty=2)
    await set_run_status(database, strict["runNo"], "PREP")
    expect(
        await demo.post(EVENTS, A, json=unit_event("AUTO", strict, strict["sns"][0])),
        400,
        "RUN_NOT_AUTHORIZED",
    )
    await set_run_status(database, strict["runNo"], "AUTHORIZED")
    assert (await demo.post(EVENTS, A, json=unit_event("AUTO", strict, strict["sns"][0]))).status == 200


async def test_permission_and_station_scope(demo: Api, make_user: Any, database: Database) -> None:
    flow = await ing_run(demo, "AUTO")
    expect(await demo.post(EVENTS, OP, json=unit_event("AUTO", flow, flow["sns"][0])), 403, "FORBIDDEN")
    r = await demo.post(
        "/roles",
        A,
        json={
            "code": "ingest-st",
            "name": "Station-bound ingest",
            "permissions": ["system:integration"],
            "dataScope": "ASSIGNED_STATIONS",
        },
    )
    assert r.status == 200, r.body
    async with database.reader() as s:
        test_station = await s.scalar(select(Station.id).where(Station.code == "ST-TEST-01"))
    await make_user("bound@example.com", "ingest-st", station_ids=[test_station])
    r = await demo.post(EVENTS, "bound@example.com", json=unit_event("AUTO", flow, flow["sns"][0]))
    expect(r, 403, "STATION_NOT_ASSIGNED")


# ---- writes ----------------------------------------------------------------------------------------------


async def test_pass_writes_track_values_event_outbox_and_audit(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "AUTO")
    sn = flow["sns"][0]
    body = {**unit_event("AUTO", flow, sn), "meta": {"line": "ING"}}
    r = await demo.post(EVENTS, A, json=body)
    assert r.status == 200, r.body
    [ev] = await _all(database, select(IngestEvent))
    [track] = await _all(database, select(Track))
    [dv] = await _all(database, select(DataValue))
    assert ev.id == r.data["eventId"] and ev.event_type == "AUTO" and ev.result == "PASS"
    assert (
        ev.payload == body["payload"]
        and ev.normalized["sn"] == sn
        and ev.normalized["stationCode"] == "ST-AUTO-01"
    )
    assert ev.meta["trackSource"] == "AUTO" and ev.meta["clientMeta"] == {"line": "ING"}
    assert ev.meta["measurementSummary"] == {
        "count": 1,
        "matched": 1,
        "unmatched": [],
        "specNames": ["TEMP-AUTO"],
    }
    assert iso(ev.occurred_at) == body["occurredAt"] and ev.received_at >= ev.occurred_at
    assert (track.source, track.result, track.meta) == ("AUTO", "PASS", {"ingestEventId": ev.id})
    assert iso(track.in_at) == iso(track.out_at) == body["occurredAt"]
    assert (dv.track_id, dv.value_number, dv.judge, dv.source) == (track.id, 55.5, "PASS", "AUTO")
    events = await _all(database, select(MesEvent).order_by(MesEvent.id))
    assert [(e.event_type, e.idempotency_key) for e in events] == [
        ("TRACK_IN", f"mes-event:TRACK_IN:{track.id}"),
        ("TRACK_OUT", f"mes-event:TRACK_OUT:{track.id}"),
    ]
    assert events[1].payload["result"] == "PASS" and events[1].payload["source"] == "AUTO"
    run = (await demo.get(f"/runs/{flow['runNo']}", PL)).data
    assert run["startedAt"] == body["occurredAt"] and run["status"] == "COMPLETED"
    audit = await _all(database, select(AuditEvent).where(AuditEvent.action == "INGEST_EVENT_CREATE"))
    assert [(a.status, a.entity_type, a.entity_id) for a in audit] == [("SUCCESS", "INTEGRATION", str(ev.id))]


async def test_refusal_is_audited_and_writes_nothing(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "AUTO")
    before = await counts(database)
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, flow["sns"][0], stationCode="ST-NOPE"))
    expect(r, 404, "STATION_NOT_FOUND")
    assert await counts(database) == before
    fails = await _all(database, select(AuditEvent).where(AuditEvent.status == "FAIL"))
    assert [(a.action, a.error_code) for a in fails] == [("INGEST_EVENT_CREATE", "STATION_NOT_FOUND")]


async def test_fail_records_defect_and_rework_pass_closes_it(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "AUTO", qty=2)
    sn = flow["sns"][0]
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn, result="FAIL", measurements=[]))
    assert r.status == 200, r.body
    [track] = await _all(database, select(Track))
    [defect] = await _all(database, select(Defect))
    assert (defect.code, defect.status, defect.track_id) == ("STATION_FAIL", "RECORDED", track.id)
    assert track.result == "FAIL"
    r = await demo.post(f"/defects/{defect.id}/disposition", Q, json={"type": "REWORK", "reason": "resolder"})
    assert r.status == 200, r.body
    r = await demo.post(EVENTS, A, json=unit_event("AUTO", flow, sn))
    assert r.status == 200, r.body
    d = (await demo.get(f"/defects/{defect.id}", Q)).data
    assert d["status"] == "CLOSED"
    [task] = (await demo.get("/rework-tasks", Q, params={"unitSn": sn})).data["items"]
    assert task["status"] == "DONE"


async def test_multi_step_route_limits_judge_and_equipment_judge(demo: Api, database: Database) -> None:
    """LINE-B: a PASS moves to the next sparse step (10 → 20, QUEUED); values without a reported judge are
    judged against the spec's limits, a reported judge wins."""
    flow = await line_b_run(demo, qty=1)
    sn = flow["sns"][0]
    r = await demo.post(
        EVENTS, A, json=unit_event("AUTO", flow, sn, stationCode="ST-B-PRINT-01", measurements=[])
    )
    assert r.status == 200, r.body
    unit = (await demo.get(f"/trace/units/{sn}", Q)).data["unit"]
    assert (unit["status"], unit["currentStepNo"]) == ("QUEUED", 20)
    spi = unit_event(
        "TEST",
        flow,
        sn,
        stationCode="ST-B-SPI-01",
        measurements=[
            {"name": "PASTE_HEIGHT", "value": 190},  # above max 180
            {"name": "PASTE_AREA", "value": 100, "judge": "fail"},  # within limits, but the SPI says FAIL
            {"name": "PASTE_VOLUME", "value": 100},
        ],
    )
    assert (await demo.post(EVENTS, A, json=spi)).status == 200
    t = (await demo.get(f"/trace/units/{sn}", Q)).data
    assert [(v["name"], v["judge"]) for v in t["dataValues"]] == [
        ("PASTE_HEIGHT", "FAIL"),
        ("PASTE_AREA", "FAIL"),
        ("PASTE_VOLUME", "PASS"),
    ]
    assert t["unit"]["currentStepNo"] == 30 and [x["stepNo"] for x in t["tracks"]] == [10, 20]
    # An event for a step the unit has passed is refused (late replay with a new key).
    late = unit_event("AUTO", flow, sn, stationCode="ST-B-PRINT-01", measurements=[])
    expect(await demo.post(EVENTS, A, json=late), 400, "STATION_MISMATCH")  # step 30 runs in GRP-B-MOUNT


async def test_later_step_of_a_type_reads_with_its_own_mapping(demo: Api, database: Database) -> None:
    """Guards 1–5 use the first AUTO step's mapping (step 10); an event for step 30 is then read with the
    mapping of step 30 (here a dataSpecMap), which must name the same unit and station."""
    await set_mapping(demo, "PCBA-AUTO-V1", 30, mapping={"dataSpecMap": {"count": "PLACEMENT_COUNT"}})
    flow = await line_b_run(demo, qty=1)
    sn = flow["sns"][0]
    for station, kind in (("ST-B-PRINT-01", "AUTO"), ("ST-B-SPI-01", "TEST")):
        r = await demo.post(EVENTS, A, json=unit_event(kind, flow, sn, stationCode=station, measurements=[]))
        assert r.status == 200, r.body
    mount = unit_event(
        "AUTO", flow, sn, stationCode="ST-B-MOUNT-01", measurements=[{"name": "count", "value": 812}]
    )
    assert (await demo.post(EVENTS, A, json=mount)).status == 200
    t = (await demo.get(f"/trace/units/{sn}", Q)).data
    assert [(v["stepNo"], v["name"], v["valueNumber"]) for v in t["dataValues"]] == [
        (30, "PLACEMENT_COUNT", 812.0)
    ]

    await set_mapping(demo, "PCBA-AUTO-V1", 30, mapping={"snPath": "payload.board"})
    other = await line_b_run(demo, qty=1)
    sn = other["sns"][0]
    for station, kind in (("ST-B-PRINT-01", "AUTO"), ("ST-B-SPI-01", "TEST")):
        r = await demo.post(EVENTS, A, json=unit_event(kind, other, sn, stationCode=station, measurements=[]))
        assert r.status == 200, r.body
    r = await demo.post(
        EVENTS, A, json=unit_event("AUTO", other, sn, stationCode="ST-B-MOUNT-01", board="SN-X")
    )
    expect(r, 400, "INGEST_PAYLOAD_INVALID")


async def test_custom_mapping_paths_values_and_payload_time(demo: Api, database: Database) -> None:
    await set_mapping(
        demo,
        "ROUTE-AUTO-V1",
        mapping={
            "snPath": "payload.board.serial",
            "stationCodePath": "payload.machine.id",
            "occurredAtPath": "payload.board.doneAt",
            "result": {"path": "payload.board.verdict", "passValues": ["OK", 1], "failValues": ["NG", 0]},
            "measurements": {"itemsPath": "payload.readings[*]", "namePath": "tag", "valuePath": "v.num"},
            "dataSpecMap": {"temp": "TEMP-AUTO"},
        },
    )
    flow = await ing_run(demo, "AUTO", qty=2)
    done_at = iso(utcnow() - timedelta(minutes=3))
    body = {
        "dedupeKey": uniq("map"),
        "sourceSystem": "PLC",
        "eventType": "AUTO",
        "occurredAt": iso(utcnow()),
        "payload": {
            "board": {"serial": flow["sns"][0], "verdict": "ok", "doneAt": done_at},
            "machine": {"id": "ST-AUTO-01"},
            "readings": [{"tag": "temp", "v": {"num": 61}}, {"tag": "fan", "v": {"num": 3}}],
        },
    }
    r = await demo.post(EVENTS, A, json={**body, "runNo": flow["runNo"]})
    assert r.status == 200, r.body
    t = (await demo.get(f"/trace/units/{flow['sns'][0]}", Q)).data
    assert t["tracks"][0]["inAt"] == done_at and t["ingestEvents"][0]["occurredAt"] == done_at
    assert [(v["name"], v["valueNumber"]) for v in t["dataValues"]] == [("TEMP-AUTO", 61.0)]
    [ev] = await _all(database, select(IngestEvent))
    assert ev.meta["measurementSummary"]["unmatched"] == ["fan"]
    # Numbers in the value lists compare as text: 0 is a FAIL here.
    fail = {
        **body,
        "dedupeKey": uniq("map"),
        "payload": {**body["payload"], "board": {"serial": flow["sns"][1], "verdict": 0}},
    }
    r = await demo.post(EVENTS, A, json=fail)  # no runNo: the mapping's snPath is not payload.sn
    expect(r, 404, "UNIT_RUN_NOT_FOUND")
    r = await demo.post(EVENTS, A, json={**fail, "runNo": flow["runNo"]})
    assert r.status == 200, r.body
    t = (await demo.get(f"/trace/units/{flow['sns'][1]}", Q)).data
    assert t["unit"]["status"] == "OUT_FAILED"


# ---- dedupe under concurrency, direct calls --------------------------------------------------------------


async def test_identical_events_at_once_apply_once(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "AUTO")
    body = unit_event("AUTO", flow, flow["sns"][0])
    results = await asyncio.gather(*(demo.post(EVENTS, A, json=body) for _ in range(4)))
    assert [r.status for r in results] == [200] * 4, [r.body for r in results]
    assert sorted(r.data["duplicate"] for r in results) == [False, True, True, True]
    assert len({r.data["eventId"] for r in results}) == 1
    c = await counts(database)
    assert (c["ingest_events"], c["tracks"], c["data_values"]) == (1, 1, 1)


async def test_direct_call_in_a_savepoint(demo: Api, database: Database) -> None:
    """The MQTT consumer calls ingest_event per edge event inside a savepoint: a refusal undoes only its own
    savepoint, the next event applies in the same transaction."""
    flow = await ing_run(demo, "AUTO", qty=2)
    bad = IngestEventIn.model_validate(unit_event("AUTO", flow, flow["sns"][0], stationCode="ST-NOPE"))
    good = IngestEventIn.model_validate(unit_event("AUTO", flow, flow["sns"][1], source="edge:line-ing"))
    async with UnitOfWork(database.writer) as uow:
        try:
            async with uow.session.begin_nested():
                await ingest_event(uow, bad)
        except Exception as exc:  # the consumer acks REJECTED with the code
            assert getattr(exc, "code", None) == "STATION_NOT_FOUND"
        async with uow.session.begin_nested():
            out = await ingest_event(uow, good)
        assert out["duplicate"] is False
    [ev] = await _all(database, select(IngestEvent))
    assert (ev.id, ev.source_system, ev.sn) == (out["event_id"], "edge:line-ing", flow["sns"][1])


# ---- typed forms -----------------------------------------------------------------------------------------


async def test_typed_equipment_and_test_forms(demo: Api, database: Database) -> None:
    auto = await ing_run(demo, "AUTO")
    seed_form = {
        "stationCode": "ST-AUTO-01",
        "sn": auto["sns"][0],
        "type": "TRACK_OUT",
        "result": "PASS",
        "data": {"TEMP-AUTO": 57},
    }
    r = await demo.post("/ingest/equipment/events", A, json=seed_form)
    assert r.status == 200 and r.data["duplicate"] is False, r.body
    again = await demo.post("/ingest/equipment/events", A, json=seed_form)  # derived key: same content
    assert again.data == {**r.data, "duplicate": True}

    test = await ing_run(demo, "TEST", qty=2)
    tr = {
        "stationCode": "ST-TEST-01",
        "sn": test["sns"][0],
        "testResultId": "TR-1",
        "result": "FAIL",
        "measurements": [{"name": "TEMP-TEST", "value": 120, "min": 90, "max": 110}],
    }
    r = await demo.post("/ingest/test/results", A, json=tr)
    assert r.status == 200, r.body
    assert (await demo.post("/ingest/test/results", A, json=tr)).data["duplicate"] is True
    missing_id = {**tr, "sn": test["sns"][1], "testResultId": None}
    expect(await demo.post("/ingest/test/results", A, json=missing_id), 400, "INGEST_PAYLOAD_INVALID")
    expect(
        await demo.post("/ingest/equipment/events", A, json={**seed_form, "type": "TRACK_IN"}),
        422,
        "VALIDATION_FAILED",
    )
    events = {e.event_type: e for e in await _all(database, select(IngestEvent))}
    assert events["TEST"].dedupe_key == "test:TR-1" and events["TEST"].source_system == "TESTER"
    assert events["AUTO"].source_system == "EQUIPMENT" and events["AUTO"].dedupe_key.startswith(
        "auto:sha256:"
    )
    t = (await demo.get(f"/trace/units/{test['sns'][0]}", Q)).data
    assert [(v["name"], v["valueNumber"], v["judge"]) for v in t["dataValues"]] == [
        ("TEMP-TEST", 120.0, "FAIL")
    ]
    assert t["unit"]["status"] == "OUT_FAILED" and t["tracks"][0]["source"] == "TEST"
