"""SPI/AOI inspection results (domain.md §4.4, §1 idempotency, §13 items 7–8; S14 steps 5–8)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from central.db.engine import Database
from central.db.models import AuditEvent, Defect, InspectionResultRecord, IntegrationMessage, Track, Unit
from central.domain.clock import iso, utcnow
from central.schemas.device_inputs import InspectionResultIn
from central.services.inspection_results import receive_inspection_result
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import EN, OP, PL, A, M, Q, authorized_run, move, pass_readiness, released_run, seed

PATH = "/integration/inspection-result"
LIST = "/integration/inspection-results"
_ids = itertools.count(1)


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


def result(flow: dict[str, Any], sn: str, **kw: Any) -> dict[str, Any]:
    """An SPI FAIL at ST-SPI-01 (step 2) unless overridden."""
    return {
        "eventId": f"insp-{next(_ids)}",
        "eventTime": iso(utcnow()),
        "runNo": flow["runNo"],
        "stationCode": "ST-SPI-01",
        "unitSn": sn,
        "stepNo": 2,
        "inspectionType": "SPI",
        "result": "FAIL",
        "defects": [{"code": "SPI-BRIDGE", "location": "U3"}],
        "source": "AUTO",
        **kw,
    }


async def track_in(api: Api, station: str, sn: str, flow: dict[str, Any]) -> int:
    r = await api.post(
        f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200, r.body
    return int(r.data["trackId"])


async def count(database: Database, stmt: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)


async def rows(database: Database, stmt: Any) -> list[Any]:
    async with database.reader() as s:
        return list((await s.scalars(stmt)).all())


async def test_s14_fail_links_the_open_track_records_defects_and_forces_the_track_out(
    demo: Api, database: Database
) -> None:
    api = demo
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    assert (await move(api, "ST-PRINT-01", sn, flow)).status == 200
    track_id = await track_in(api, "ST-SPI-01", sn, flow)

    body = result(
        flow,
        sn,
        defects=[
            {"code": "SPI-BRIDGE", "location": "U3", "description": "bridged pads"},
            {"code": "SPI-INSUFFICIENT", "location": "R7", "qty": 3},
        ],
        equipmentId="SPI-MACHINE-1",
        rawData={"volume": [88.1, 91.0]},
    )
    r = await api.post(PATH, A, json=body)
    assert r.status == 200, r.body
    d = r.data
    assert (d["eventId"], d["runNo"], d["unitSn"], d["inspectionType"], d["result"]) == (
        body["eventId"],
        flow["runNo"],
        sn,
        "SPI",
        "FAIL",
    )
    assert (d["trackId"], d["defectsCreated"], d["isDuplicate"]) == (track_id, 2, False)
    assert d["receivedAt"].endswith("Z") and len(d["defectIds"]) == 2

    defects = await rows(database, select(Defect).where(Defect.id.in_(d["defectIds"])).order_by(Defect.id))
    assert [(x.code, x.location, x.qty, x.status, x.track_id, x.recorded_by) for x in defects] == [
        ("SPI-BRIDGE", "U3", 1, "RECORDED", track_id, "SPI-MACHINE-1"),
        ("SPI-INSUFFICIENT", "R7", 3, "RECORDED", track_id, "SPI-MACHINE-1"),
    ]
    assert defects[0].meta["remark"] == "bridged pads" and defects[0].meta["inspectionResultId"] == d["id"]
    (record,) = await rows(database, select(InspectionResultRecord))
    assert record.raw_data == {"volume": [88.1, 91.0]} and record.defect_ids == d["defectIds"]

    out = await api.post(
        "/stations/ST-SPI-01/track-out",
        OP,
        json={"sn": sn, "runNo": flow["runNo"], "result": "PASS", "operatorId": "OP-01"},
    )
    assert out.status == 200, out.body
    assert (out.data["status"], out.data["inspectionOverride"]) == ("OUT_FAILED", True)
    listed = (await api.get("/defects", Q, params={"unitSn": sn})).data
    assert {"SPI-BRIDGE", "SPI-INSUFFICIENT"} <= {x["code"] for x in listed["items"]}


async def test_replay_returns_the_original_without_new_effects(demo: Api, database: Database) -> None:
    api = demo
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    body = result(flow, sn)
    first = await api.post(PATH, A, json=body)
    assert first.status == 200 and first.data["isDuplicate"] is False, first.body
    replay = await api.post(PATH, A, json=body)
    assert replay.status == 200, replay.body
    assert replay.data == {**first.data, "isDuplicate": True}
    # a resend under the same eventId with other content is still the original event
    changed = await api.post(PATH, EN, json={**body, "result": "PASS", "defects": None})
    assert changed.data["isDuplicate"] is True and changed.data["result"] == "FAIL"
    assert await count(database, select(InspectionResultRecord)) == 1
    assert await count(database, select(Defect)) == 1
    msgs = await rows(
        database,
        select(IntegrationMessage)
        .where(IntegrationMessage.dedupe_key == f"inspection-result:{body['eventId']}")
        .order_by(IntegrationMessage.id),
    )
    assert [(m.direction, m.system, m.entity_type, m.business_key, m.status) for m in msgs] == [
        ("IN", "DEVICE", "INSPECTION_RESULT", sn, "SUCCESS"),
        ("IN", "DEVICE", "INSPECTION_RESULT", sn, "DUPLICATE"),
        ("IN", "DEVICE", "INSPECTION_RESULT", sn, "DUPLICATE"),
    ]
    assert [m.meta.get("payloadDiffers") for m in msgs] == [None, False, True]
    audits = await rows(
        database,
        select(AuditEvent).where(AuditEvent.action == "INSPECTION_RESULT_RECEIVE").order_by(AuditEvent.id),
    )
    assert [(x.status, x.entity_type, x.entity_id) for x in audits] == [
        ("SUCCESS", "INTEGRATION", str(first.data["id"]))
    ] * 3
    assert audits[0].diff and audits[1].payload == {"eventId": body["eventId"], "isDuplicate": True}


async def test_concurrent_deliveries_store_one_record(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    body = result(flow, flow["sns"][0])
    answers = await asyncio.gather(*(demo.post(PATH, A, json=body) for _ in range(4)))
    assert [r.status for r in answers] == [200] * 4, [r.body for r in answers]
    assert sorted(r.data["isDuplicate"] for r in answers) == [False, True, True, True]
    assert len({r.data["id"] for r in answers}) == 1
    assert await count(database, select(InspectionResultRecord)) == 1
    assert await count(database, select(Defect)) == 1


async def test_a_receipt_that_loses_the_race_on_the_unique_index_is_a_duplicate(
    demo: Api, database: Database
) -> None:
    """Two transactions pass the first look-up together; the unique eventId decides (savepoint, no error)."""
    flow = await authorized_run(demo, database)
    body = InspectionResultIn.model_validate(result(flow, flow["sns"][0]))

    async def second() -> dict[str, Any]:
        async with UnitOfWork(database.writer) as uow:
            return await receive_inspection_result(uow, body)

    first = UnitOfWork(database.writer)
    await first.__aenter__()
    won = await receive_inspection_result(first, body)  # inserted, not yet committed
    racer = asyncio.create_task(second())
    await asyncio.sleep(0.3)  # PostgreSQL: blocked on the unique index; SQLite: on BEGIN IMMEDIATE
    await first.__aexit__(None, None, None)
    lost = await racer
    assert (won["is_duplicate"], lost["is_duplicate"], lost["id"]) == (False, True, won["id"])
    assert await count(database, select(Defect)) == 1


async def test_track_resolution_latest_track_or_null(demo: Api, database: Database) -> None:
    api = demo
    flow = await authorized_run(api, database, qty=2)
    sn, sn2 = flow["sns"]
    # Not at SPI yet: no track to link; the result is still recorded (it counts for the FAI gate).
    early = await api.post(PATH, A, json=result(flow, sn))
    assert early.status == 200 and early.data["trackId"] is None, early.body
    assert early.data["defectsCreated"] == 1
    (defect,) = await rows(database, select(Defect))
    assert defect.track_id is None and defect.code == "SPI-BRIDGE"

    await move(api, "ST-PRINT-01", sn2, flow)
    closed = await move(api, "ST-SPI-01", sn2, flow)
    assert closed.data["status"] == "QUEUED"
    # A PASS after the track-out links the latest (closed) track there; listed defects create no Defect rows.
    late = await api.post(
        PATH, A, json=result(flow, sn2, result="PASS", defects=[{"code": "FALSE-CALL", "location": "C1"}])
    )
    assert late.status == 200, late.body
    assert (late.data["trackId"], late.data["defectsCreated"]) == (closed.data["trackId"], 0)
    assert await count(database, select(Defect)) == 1
    (unit,) = await rows(database, select(Unit).where(Unit.sn == sn2))
    assert (unit.status, unit.current_step_no) == ("QUEUED", 3)  # a result never moves a unit


async def test_given_track_id_must_be_the_units_track_at_that_step_and_station(
    demo: Api, database: Database
) -> None:
    api = demo
    flow = await authorized_run(api, database, qty=2)
    sn, sn2 = flow["sns"]
    await move(api, "ST-PRINT-01", sn, flow)
    await move(api, "ST-PRINT-01", sn2, flow)
    own = await track_in(api, "ST-SPI-01", sn, flow)
    other = await track_in(api, "ST-SPI-01", sn2, flow)
    first_step = (
        select(Track.id).join(Unit, Unit.id == Track.unit_id).where(Unit.sn == sn, Track.step_no == 1)
    )
    (print_track,) = await rows(database, first_step)
    for bad in (999_999, other, print_track):
        expect(await api.post(PATH, A, json=result(flow, sn, trackId=bad)), 400, "TRACK_NOT_FOUND")
    r = await api.post(PATH, A, json=result(flow, sn, trackId=own, result="PASS", defects=None))
    assert r.status == 200 and r.data["trackId"] == own, r.body
    assert await count(database, select(InspectionResultRecord)) == 1


async def test_refusals_have_their_codes_and_write_nothing(demo: Api, database: Database) -> None:
    api = demo
    flow = await authorized_run(api, database)
    other = await authorized_run(api, database)
    line_b = await released_run(api, product="P-2001", routing="PCBA-AUTO-V1", line="LINE-B")
    sn = flow["sns"][0]
    cases: list[tuple[dict[str, Any], int, str]] = [
        (result(flow, sn, source="MANUAL"), 400, "OPERATOR_REQUIRED"),
        (result(flow, sn, defects=None), 400, "DEFECTS_REQUIRED"),
        (result(flow, sn, defects=[]), 400, "DEFECTS_REQUIRED"),
        (result(flow, sn, runNo="RUN-NOPE"), 404, "RUN_NOT_FOUND"),
        (result(flow, "SN-NOPE"), 404, "UNIT_NOT_FOUND"),
        (result(flow, other["sns"][0]), 400, "UNIT_RUN_MISMATCH"),
        (result(flow, sn, stationCode="ST-NOPE"), 404, "STATION_NOT_FOUND"),
        (result(flow, sn, stationCode="ST-DIP-INS-01"), 400, "STATION_LINE_MISMATCH"),
        (result(flow, sn, stepNo=99), 400, "STEP_MISMATCH"),
        # LINE-B: the AOI station's group cannot run the SPI step 20
        (
            result(line_b, line_b["sns"][0], stationCode="ST-B-AOI-01", stepNo=20),
            400,
            "STATION_MISMATCH",
        ),
    ]
    for body, status, code in cases:
        expect(await api.post(PATH, A, json=body), status, code)
    assert await count(database, select(InspectionResultRecord)) == 0
    assert await count(database, select(Defect)) == 0
    assert await count(database, select(IntegrationMessage)) == 0
    fails = await rows(
        database,
        select(AuditEvent.error_code).where(
            AuditEvent.action == "INSPECTION_RESULT_RECEIVE", AuditEvent.status == "FAIL"
        ),
    )
    assert sorted(fails) == sorted(code for _, _, code in cases)

    manual = await api.post(PATH, A, json=result(flow, sn, source="MANUAL", operatorId="OP-07"))
    assert manual.status == 200, manual.body
    (defect,) = await rows(database, select(Defect))
    assert defect.recorded_by == "OP-07"


async def test_bad_input_is_422_never_500(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    sn = flow["sns"][0]
    good = result(flow, sn)
    for patch in (
        {"inspectionType": "XRAY"},
        {"result": "MAYBE"},
        {"source": "PUSH"},
        {"eventTime": "2024-05-01T08:00:00"},  # no offset
        {"eventId": ""},
        {"stepNo": 0},
        {"trackId": 2**70},
        {"defects": [{"location": "U1"}]},  # code missing
        {"defects": [{"code": "X", "qty": 0}]},
        {"unexpected": 1},
    ):
        r = await demo.post(PATH, A, json={**good, **patch})
        expect(r, 422, "VALIDATION_FAILED")
    missing = {k: v for k, v in good.items() if k != "unitSn"}
    expect(await demo.post(PATH, A, json=missing), 422, "VALIDATION_FAILED")
    assert await count(database, select(InspectionResultRecord)) == 0


async def test_s14_any_spi_or_aoi_fail_blocks_fai_pass(demo: Api, database: Database) -> None:
    """S14 step 8, over HTTP: during the FAI trial the AOI pushes a FAIL for the run (no track at AOI yet)."""
    api = demo
    flow = await released_run(api)
    sn = flow["sns"][0]
    await pass_readiness(database, flow["runNo"])
    fai = await api.post(f"/fai/run/{flow['runNo']}", Q, json={"sampleQty": 1})
    assert fai.status == 201, fai.body
    assert (await api.post(f"/fai/{fai.data['id']}/start", Q)).status == 200
    assert (await move(api, "ST-PRINT-01", sn, flow)).status == 200  # the trial
    aoi = result(
        flow,
        sn,
        stationCode="ST-AOI-01",
        stepNo=5,
        inspectionType="AOI",
        defects=[{"code": "AOI-MISSING", "location": "C12"}],
    )
    r = await api.post(PATH, A, json=aoi)
    assert r.status == 200 and r.data["trackId"] is None, r.body
    done = await api.post(f"/fai/{fai.data['id']}/complete", Q, json={"decision": "PASS"})
    expect(done, 400, "INSPECTION_FAILURES_EXIST")
    failed = await api.post(f"/fai/{fai.data['id']}/complete", Q, json={"decision": "FAIL", "failedQty": 1})
    assert failed.status == 200 and failed.data["status"] == "FAIL", failed.body


async def test_list_filters_window_and_pagination(demo: Api, database: Database) -> None:
    api = demo
    flow = await authorized_run(api, database, qty=2)
    sn, sn2 = flow["sns"]
    base = utcnow() - timedelta(hours=1)
    sent = [
        result(flow, sn, eventTime=iso(base)),
        result(flow, sn, eventTime=iso(base + timedelta(minutes=10)), result="PASS", defects=None),
        result(
            flow,
            sn2,
            eventTime=iso(base + timedelta(minutes=20)),
            stationCode="ST-AOI-01",
            stepNo=5,
            inspectionType="AOI",
            result="PASS",
            defects=None,
        ),
    ]
    for body in sent:
        assert (await api.post(PATH, A, json=body)).status == 200

    async def ids(**params: Any) -> list[str]:
        r = await api.get(LIST, EN, params=params)
        assert r.status == 200, r.body
        return [x["eventId"] for x in r.data["items"]]

    e1, e2, e3 = (b["eventId"] for b in sent)
    assert await ids(sort="eventTime.asc") == [e1, e2, e3]
    assert await ids(unitSn=sn, sort="eventTime.asc") == [e1, e2]
    assert await ids(runNo=flow["runNo"], result="FAIL") == [e1]
    assert await ids(inspectionType="AOI") == [e3]
    assert await ids(stationCode="ST-SPI-01,ST-AOI-01", sort="eventTime.desc") == [e3, e2, e1]
    window = {"eventFrom": iso(base + timedelta(minutes=5)), "eventTo": iso(base + timedelta(minutes=15))}
    assert await ids(**window) == [e2]
    assert await ids(search=e3) == [e3]
    page = (await api.get(LIST, A, params={"pageSize": 2, "page": 2, "sort": "eventTime.asc"})).data
    assert (page["total"], page["page"], page["pageSize"], [x["eventId"] for x in page["items"]]) == (
        3,
        2,
        2,
        [e3],
    )
    item = (await api.get(LIST, A, params={"result": "FAIL"})).data["items"][0]
    assert item["defects"] == [{"code": "SPI-BRIDGE", "location": "U3"}] and len(item["defectIds"]) == 1
    assert item["eventTime"] == sent[0]["eventTime"] and item["source"] == "AUTO"
    bad_window = {"eventFrom": window["eventTo"], "eventTo": window["eventFrom"]}
    expect(await api.get(LIST, A, params=bad_window), 422, "VALIDATION_FAILED")
    expect(await api.get(LIST, A, params={"sort": "defects.asc"}), 422, "VALIDATION_FAILED")


async def test_permissions(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    body = result(flow, flow["sns"][0])
    for user in (OP, Q, PL, M):
        expect(await demo.post(PATH, user, json=body), 403, "FORBIDDEN")
        expect(await demo.get(LIST, user), 403, "FORBIDDEN")
    assert (await demo.post(PATH, EN, json=body)).status == 200
    assert (await demo.get(LIST, A)).data["total"] == 1


async def test_service_is_callable_with_a_unit_of_work(demo: Api, database: Database) -> None:
    """The MQTT consumer applies edge events through the same function, inside its own transaction."""
    flow = await authorized_run(demo, database)
    body = InspectionResultIn.model_validate(result(flow, flow["sns"][0], inspectionType="AOI"))
    async with UnitOfWork(database.writer) as uow:
        first = await receive_inspection_result(uow, body)
    async with UnitOfWork(database.writer) as uow:
        again = await receive_inspection_result(uow, body)
    assert (first["is_duplicate"], again["is_duplicate"], again["id"]) == (False, True, first["id"])
    assert first["defects_created"] == 1 and first["inspection_type"] == "AOI"
