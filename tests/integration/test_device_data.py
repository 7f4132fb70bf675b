"""Device data (domain.md §4.5, §1 idempotency, §11 "manual data is never overwritten"; S14 steps 1–4)."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    Carrier,
    CarrierTrack,
    DataCollectionSpec,
    DataValue,
    DeviceDataRecord,
    IntegrationMessage,
    Run,
    Station,
    Unit,
)
from central.domain.clock import iso, utcnow
from central.schemas.device_inputs import DeviceDataIn
from central.services.device_data import receive_device_data
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, A, M, Q, authorized_run, move, released_run, seed

PATH = "/integration/device-data"
REFLOW = "ST-REFLOW-01"
_ids = itertools.count(1)


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def make_spec(api: Api, name: str, method: str = "AUTO", data_type: str = "NUMBER", **kw: Any) -> int:
    r = await api.post(
        "/data-collection-specs",
        EN,
        json={
            "operationCode": kw.pop("operation", "REFLOW"),
            "name": name,
            "itemType": "KEY",
            "dataType": data_type,
            "method": method,
            "triggerType": "EACH_UNIT",
            **kw,
        },
    )
    assert r.status == 201, r.body
    return int(r.data["id"])


def event(flow: dict[str, Any], sn: str | None, *items: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Data for the unit's track at the reflow oven (step 4) unless overridden."""
    return {
        "eventId": f"dd-{next(_ids)}",
        "eventTime": iso(utcnow()),
        "source": "AUTO",
        "runNo": flow["runNo"],
        "unitSn": sn,
        "stationCode": REFLOW,
        "stepNo": 4,
        "data": list(items) or [{"specName": "PEAK_TEMP_AUTO", "valueNumber": 245}],
        **kw,
    }


async def through_reflow(api: Api, flow: dict[str, Any], sn: str, **extra: Any) -> int:
    """Moves the unit through steps 1–4 (PASS); → the reflow track id."""
    for station in SMT_STATIONS[:3]:
        assert (await move(api, station, sn, flow)).status == 200
    r = await move(api, REFLOW, sn, flow, **extra)
    assert r.status == 200 and r.data["status"] == "QUEUED", r.body
    return int(r.data["trackId"])


async def rows(database: Database, stmt: Any) -> list[Any]:
    async with database.reader() as s:
        return list((await s.scalars(stmt)).all())


async def count(database: Database, model: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def reflowed(demo: Api, database: Database) -> dict[str, Any]:
    """S14 step 1 (EN creates the AUTO spec) and an authorized run whose first unit left the reflow oven."""
    spec_id = await make_spec(demo, "PEAK_TEMP_AUTO", spec={"min": 230, "max": 250, "unit": "C"})
    flow = await authorized_run(demo, database, qty=2)
    track_id = await through_reflow(demo, flow, flow["sns"][0])
    return {**flow, "specId": spec_id, "trackId": track_id, "sn": flow["sns"][0]}


async def test_s14_device_data_resolves_the_latest_track_and_never_moves_the_unit(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    api, flow, sn = demo, reflowed, reflowed["sn"]
    at = iso(utcnow() - timedelta(minutes=2))
    body = event(
        flow, sn, {"specName": "PEAK_TEMP_AUTO", "valueNumber": 245, "collectedAt": at}, equipmentId="OVEN-1"
    )
    r = await api.post(PATH, A, json=body)
    assert r.status == 200, r.body
    assert {
        k: r.data[k] for k in ("eventId", "trackId", "carrierTrackId", "dataValuesCreated", "isDuplicate")
    } == {
        "eventId": body["eventId"],
        "trackId": flow["trackId"],
        "carrierTrackId": None,
        "dataValuesCreated": 1,
        "isDuplicate": False,
    }
    assert (r.data["runNo"], r.data["unitSn"], r.data["stationCode"], r.data["stepNo"]) == (
        flow["runNo"],
        sn,
        REFLOW,
        4,
    )
    assert r.data["receivedAt"].endswith("Z")
    (value,) = await rows(database, select(DataValue))
    assert (value.spec_id, value.track_id, value.carrier_track_id, value.value_number) == (
        flow["specId"],
        flow["trackId"],
        None,
        245,
    )
    assert (value.source, value.judge, value.collected_by, iso(value.collected_at)) == (
        "AUTO",
        "PASS",
        "OVEN-1",
        at,
    )
    (record,) = await rows(database, select(DeviceDataRecord))
    assert (record.step_no, record.equipment_id, record.data) == (
        4,
        "OVEN-1",
        [{"specName": "PEAK_TEMP_AUTO", "valueNumber": 245.0, "collectedAt": at}],
    )
    (unit,) = await rows(database, select(Unit).where(Unit.sn == sn))
    assert (unit.status, unit.current_step_no) == ("QUEUED", 5)
    t = (await api.get(f"/trace/units/{sn}", Q)).data
    assert [(v["stepNo"], v["name"], v["valueNumber"], v["source"]) for v in t["dataValues"]] == [
        (4, "PEAK_TEMP_AUTO", 245, "AUTO")
    ]
    # An out-of-limit value is stored and judged, not refused.
    hot = await api.post(PATH, A, json=event(flow, sn, {"specName": "PEAK_TEMP_AUTO", "valueNumber": 262.5}))
    assert hot.status == 200, hot.body
    judged = await rows(database, select(DataValue.judge).order_by(DataValue.id))
    assert judged == ["PASS", "FAIL"]


async def test_s14_replay_is_a_duplicate_without_a_new_value(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    body = event(reflowed, reflowed["sn"])
    first = await demo.post(PATH, A, json=body)
    assert first.status == 200, first.body
    replay = await demo.post(PATH, EN, json=body)
    assert replay.status == 200 and replay.data == {**first.data, "isDuplicate": True}, replay.body
    assert await count(database, DataValue) == 1 and await count(database, DeviceDataRecord) == 1
    msgs = await rows(
        database,
        select(IntegrationMessage)
        .where(IntegrationMessage.dedupe_key == f"device-data:{body['eventId']}")
        .order_by(IntegrationMessage.id),
    )
    assert [(m.direction, m.system, m.entity_type, m.business_key, m.status) for m in msgs] == [
        ("IN", "DEVICE", "DEVICE_DATA", reflowed["sn"], "SUCCESS"),
        ("IN", "DEVICE", "DEVICE_DATA", reflowed["sn"], "DUPLICATE"),
    ]
    assert msgs[0].payload["eventId"] == body["eventId"] and msgs[1].meta["payloadDiffers"] is False
    audits = await rows(
        database, select(AuditEvent).where(AuditEvent.action == "DEVICE_DATA_RECEIVE").order_by(AuditEvent.id)
    )
    assert [(x.status, x.entity_type, x.entity_id) for x in audits] == [
        ("SUCCESS", "INTEGRATION", str(first.data["id"]))
    ] * 2


async def test_concurrent_deliveries_store_one_record(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    body = event(reflowed, reflowed["sn"])
    answers = await asyncio.gather(*(demo.post(PATH, A, json=body) for _ in range(4)))
    assert [r.status for r in answers] == [200] * 4, [r.body for r in answers]
    assert sorted(r.data["isDuplicate"] for r in answers) == [False, True, True, True]
    assert await count(database, DataValue) == 1 and await count(database, DeviceDataRecord) == 1


async def test_a_receipt_that_loses_the_race_on_the_unique_index_is_a_duplicate(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    """Two transactions pass the first look-up together; the unique eventId decides (savepoint, no error)."""
    body = DeviceDataIn.model_validate(event(reflowed, reflowed["sn"]))

    async def second() -> dict[str, Any]:
        async with UnitOfWork(database.writer) as uow:
            return await receive_device_data(uow, body)

    first = UnitOfWork(database.writer)
    await first.__aenter__()
    won = await receive_device_data(first, body)  # inserted, not yet committed
    racer = asyncio.create_task(second())
    await asyncio.sleep(0.3)  # PostgreSQL: blocked on the unique index; SQLite: on BEGIN IMMEDIATE
    await first.__aexit__(None, None, None)
    lost = await racer
    assert (won["is_duplicate"], lost["is_duplicate"], lost["id"]) == (False, True, won["id"])
    assert await count(database, DataValue) == 1


async def test_manual_data_is_never_overwritten_by_later_automatic_data(
    demo: Api, database: Database
) -> None:
    api = demo
    await make_spec(api, "PEAK_TEMP_AUTO")
    await make_spec(api, "OVEN_NOTE", method="MANUAL", data_type="TEXT")
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    # The operator keys the peak temperature at track-out (the oven's link was down)...
    await through_reflow(api, flow, sn, data=[{"specName": "PEAK_TEMP_AUTO", "valueNumber": 240}])
    # ...then the oven's buffered value arrives.
    r = await api.post(PATH, A, json=event(flow, sn))
    assert r.status == 200, r.body
    values = await rows(database, select(DataValue).order_by(DataValue.id))
    assert [(v.value_number, v.source) for v in values] == [(240, "MANUAL"), (245, "AUTO")]
    # MANUAL device data (keyed in, with the operator) may feed MANUAL and AUTO specs alike.
    keyed = event(
        flow,
        sn,
        {"specName": "OVEN_NOTE", "valueText": "conveyor slow"},
        {"specName": "PEAK_TEMP_AUTO", "valueNumber": 241},
        source="MANUAL",
        operatorId="OP-02",
    )
    r = await api.post(PATH, A, json=keyed)
    assert r.status == 200 and r.data["dataValuesCreated"] == 2, r.body
    values = await rows(database, select(DataValue).order_by(DataValue.id))
    assert [(v.value_number, v.value_text, v.source, v.collected_by) for v in values[2:]] == [
        (None, "conveyor slow", "MANUAL", "OP-02"),
        (241, None, "MANUAL", "OP-02"),
    ]
    assert values[0].value_number == 240 and values[0].source == "MANUAL"


async def test_track_id_path_with_spec_id_and_consistency_checks(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    api, flow, sn = demo, reflowed, reflowed["sn"]
    item = {"specId": flow["specId"], "valueNumber": 238}
    by_id = {"eventId": "dd-by-track", "eventTime": iso(utcnow()), "source": "AUTO", "data": [item]}
    r = await api.post(PATH, A, json={**by_id, "trackId": flow["trackId"]})
    assert r.status == 200, r.body
    assert (r.data["trackId"], r.data["unitSn"], r.data["stepNo"], r.data["runNo"]) == (
        flow["trackId"],
        sn,
        4,
        flow["runNo"],
    )
    ok = {**by_id, "eventId": "dd-op", "trackId": flow["trackId"], "unitSn": sn, "stepNo": 4}
    async with database.reader() as s:
        op_id = await s.scalar(
            select(DataCollectionSpec.operation_id).where(DataCollectionSpec.id == flow["specId"])
        )
    assert (await api.post(PATH, A, json={**ok, "operationId": op_id})).status == 200

    fresh = {**ok, "eventId": "dd-refused"}  # refused events are not stored: one id serves every try
    expect(
        await api.post(PATH, A, json={**fresh, "trackId": 999_999, "unitSn": None}), 400, "TRACK_NOT_FOUND"
    )
    contradicts = await api.post(PATH, A, json={**fresh, "unitSn": flow["sns"][1]})
    expect(contradicts, 400, "INGEST_PAYLOAD_INVALID")
    assert contradicts.body["error"]["details"] == {"unitSn": {"given": flow["sns"][1], "track": sn}}
    expect(await api.post(PATH, A, json={**fresh, "stepNo": 5}), 400, "INGEST_PAYLOAD_INVALID")
    expect(await api.post(PATH, A, json={**fresh, "operationId": op_id + 1}), 400, "INGEST_PAYLOAD_INVALID")
    assert await count(database, DataValue) == 2


async def test_carrier_track_path(demo: Api, database: Database) -> None:
    """Carrier-level values (BATCH reflow lots) hang off the carrier track, not a unit track."""
    api = demo
    flow = await released_run(api, product="P-ING-BATCH", routing="ROUTE-BATCH-V1", line="LINE-ING", qty=2)
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == flow["runNo"]))
        station_id = await s.scalar(select(Station.id).where(Station.code == "ST-BATCH-01"))
        carrier = Carrier(carrier_no="CARRIER-DD-1", status="IDLE", meta={})
        s.add(carrier)
        await s.flush()
        ct = CarrierTrack(
            carrier_id=carrier.id,
            run_id=run_id,
            step_no=1,
            station_id=station_id,
            source="BATCH",
            in_at=utcnow(),
            out_at=utcnow(),
            result="PASS",
            meta={},
        )
        s.add(ct)
        await s.flush()
        ct_id = ct.id
    base = {
        "eventTime": iso(utcnow()),
        "source": "AUTO",
        "carrierTrackId": ct_id,
        "data": [{"specName": "TEMP-BATCH", "valueNumber": 123.4}],
    }
    r = await api.post(PATH, A, json={**base, "eventId": "dd-ct-1", "runNo": flow["runNo"]})
    assert r.status == 200, r.body
    assert (r.data["carrierTrackId"], r.data["trackId"], r.data["unitSn"], r.data["stationCode"]) == (
        ct_id,
        None,
        None,
        "ST-BATCH-01",
    )
    (value,) = await rows(database, select(DataValue))
    assert (value.carrier_track_id, value.track_id, value.value_number) == (ct_id, None, 123.4)

    expect(
        await api.post(PATH, A, json={**base, "eventId": "x1", "carrierTrackId": 999_999}),
        400,
        "TRACK_NOT_FOUND",
    )
    both = {**base, "eventId": "x2", "trackId": 1}
    expect(await api.post(PATH, A, json=both), 400, "INGEST_PAYLOAD_INVALID")
    with_unit = {**base, "eventId": "x3", "unitSn": flow["sns"][0]}
    expect(await api.post(PATH, A, json=with_unit), 400, "INGEST_PAYLOAD_INVALID")
    assert await count(database, DataValue) == 1


async def test_only_specs_bound_to_the_step_are_writable(demo: Api, database: Database) -> None:
    api = demo
    bound = await make_spec(api, "PEAK_TEMP_AUTO")
    await make_spec(api, "ZONE_7_AUTO")  # same operation, not bound
    r = await api.post(
        "/routes/PCBA-STD-V1/execution-config",
        EN,
        json={"scopeType": "STEP", "stepNo": 4, "dataSpecIds": [bound]},
    )
    assert r.status == 200, r.body
    assert (await api.post("/routes/PCBA-STD-V1/compile", EN)).data["status"] == "READY"
    flow = await authorized_run(api, database)
    sn = flow["sns"][0]
    await through_reflow(api, flow, sn, data=[{"specName": "PEAK_TEMP_AUTO", "valueNumber": 244}])
    expect(
        await api.post(PATH, A, json=event(flow, sn, {"specName": "ZONE_7_AUTO", "valueNumber": 1})),
        400,
        "DATA_SPEC_NOT_FOUND",
    )
    assert (await api.post(PATH, A, json=event(flow, sn))).status == 200


async def test_refusals_have_their_codes_and_write_nothing(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    api, flow, sn = demo, reflowed, reflowed["sn"]
    await make_spec(api, "OVEN_NOTE", method="MANUAL", data_type="TEXT")
    other = await authorized_run(api, database)
    foreign_spec = await make_spec(api, "AOI_SCORE", operation="AOI")
    sn2 = flow["sns"][1]  # still at step 1: no track at the reflow oven
    cases: list[tuple[dict[str, Any], int, str]] = [
        (event(flow, sn, source="MANUAL"), 400, "OPERATOR_REQUIRED"),
        ({**event(flow, sn), "data": []}, 400, "INGEST_PAYLOAD_INVALID"),
        (event(flow, sn, {"valueNumber": 1}), 400, "INGEST_PAYLOAD_INVALID"),
        (
            event(flow, sn, {"specId": flow["specId"], "specName": "PEAK_TEMP_AUTO", "valueNumber": 1}),
            400,
            "INGEST_PAYLOAD_INVALID",
        ),
        (event(flow, sn, trackId=flow["trackId"], carrierTrackId=1), 400, "INGEST_PAYLOAD_INVALID"),
        (event(flow, sn, stationCode=None), 400, "INGEST_PAYLOAD_INVALID"),
        (event(flow, sn, runNo="RUN-NOPE"), 404, "RUN_NOT_FOUND"),
        (event(flow, "SN-NOPE"), 404, "UNIT_NOT_FOUND"),
        (event(flow, other["sns"][0]), 400, "UNIT_RUN_MISMATCH"),
        (event(flow, sn, stationCode="ST-NOPE"), 404, "STATION_NOT_FOUND"),
        (event(flow, sn2), 400, "TRACK_NOT_FOUND"),
        (event(flow, sn, stepNo=3), 400, "TRACK_NOT_FOUND"),
        (event(flow, sn, {"specName": "NOPE", "valueNumber": 1}), 400, "DATA_SPEC_NOT_FOUND"),
        (event(flow, sn, {"specId": foreign_spec, "valueNumber": 1}), 400, "DATA_SPEC_NOT_FOUND"),
        (event(flow, sn, {"specName": "PEAK_TEMP_AUTO", "valueText": "hot"}), 400, "DATA_VALUE_INVALID"),
        (
            event(flow, sn, {"specName": "PEAK_TEMP_AUTO", "valueNumber": 1, "valueText": "x"}),
            400,
            "DATA_VALUE_INVALID",
        ),
        (event(flow, sn, {"specName": "OVEN_NOTE", "valueText": "x"}), 400, "DATA_SPEC_METHOD_MISMATCH"),
        # one bad item refuses the whole event
        (
            event(
                flow,
                sn,
                {"specName": "PEAK_TEMP_AUTO", "valueNumber": 1},
                {"specName": "NOPE", "valueNumber": 1},
            ),
            400,
            "DATA_SPEC_NOT_FOUND",
        ),
    ]
    for body, status, code in cases:
        expect(await api.post(PATH, A, json=body), status, code)
    for model in (DataValue, DeviceDataRecord, IntegrationMessage):
        assert await count(database, model) == 0, model
    fails = await rows(
        database,
        select(AuditEvent.error_code).where(
            AuditEvent.action == "DEVICE_DATA_RECEIVE", AuditEvent.status == "FAIL"
        ),
    )
    assert sorted(fails) == sorted(code for _, _, code in cases)
    # stepNo may be left out: the latest track of the unit at that station
    r = await api.post(PATH, A, json=event(flow, sn, stepNo=None))
    assert r.status == 200 and r.data["trackId"] == flow["trackId"], r.body


async def test_bad_input_is_422_never_500(demo: Api, database: Database, reflowed: dict[str, Any]) -> None:
    good = event(reflowed, reflowed["sn"])
    for patch in (
        {"source": "PUSH"},
        {"eventTime": "2024-05-01T08:00:00"},
        {"eventId": "x" * 129},
        {"stepNo": 0},
        {"trackId": -1},
        {"carrierTrackId": 2**70},
        {"data": [{"specName": "PEAK_TEMP_AUTO", "valueNumber": "245"}]},  # strict: no string → number
        {"data": [{"specName": "PEAK_TEMP_AUTO", "valueBoolean": "yes"}]},
        {"data": [{"specName": "PEAK_TEMP_AUTO", "valueNumber": 1, "collectedAt": "yesterday"}]},
        {"data": [{"specName": "PEAK_TEMP_AUTO", "valueNumber": 1}] * 501},
        {"unexpected": True},
    ):
        expect(await demo.post(PATH, A, json={**good, **patch}), 422, "VALIDATION_FAILED")
    assert await count(database, DeviceDataRecord) == 0


async def test_list_filters_window_and_pagination(
    demo: Api, database: Database, reflowed: dict[str, Any]
) -> None:
    api, flow, sn = demo, reflowed, reflowed["sn"]
    sn2 = flow["sns"][1]
    await through_reflow(api, flow, sn2)
    base = utcnow() - timedelta(hours=1)
    sent = [
        event(flow, sn, eventTime=iso(base)),
        event(flow, sn2, eventTime=iso(base + timedelta(minutes=10)), source="MANUAL", operatorId="OP-3"),
        event(flow, sn2, eventTime=iso(base + timedelta(minutes=20))),
    ]
    for body in sent:
        assert (await api.post(PATH, A, json=body)).status == 200
    e1, e2, e3 = (b["eventId"] for b in sent)

    async def ids(**params: Any) -> list[str]:
        r = await api.get(PATH, EN, params=params)
        assert r.status == 200, r.body
        return [x["eventId"] for x in r.data["items"]]

    assert await ids(sort="eventTime.asc") == [e1, e2, e3]
    assert await ids(eventId=e2) == [e2]
    assert await ids(unitSn=sn2, sort="eventTime.asc") == [e2, e3]
    assert await ids(runNo=flow["runNo"], source="MANUAL") == [e2]
    assert await ids(stationCode=REFLOW, stepNo=4, sort="eventTime.desc") == [e3, e2, e1]
    assert await ids(stepNo=5) == []
    window = {"eventFrom": iso(base + timedelta(minutes=5)), "eventTo": iso(base + timedelta(minutes=15))}
    assert await ids(**window) == [e2]
    assert await ids(search=sn) == [e1]
    page = (await api.get(PATH, A, params={"pageSize": 2, "page": 2, "sort": "eventTime.asc"})).data
    assert (page["total"], page["page"], page["pageSize"]) == (3, 2, 2)
    (item,) = page["items"]
    assert (item["eventId"], item["runNo"], item["unitSn"], item["stationCode"], item["stepNo"]) == (
        e3,
        flow["runNo"],
        sn2,
        REFLOW,
        4,
    )
    assert item["dataValuesCreated"] == 1 and item["data"] == [
        {"specName": "PEAK_TEMP_AUTO", "valueNumber": 245.0}
    ]
    assert item["trackId"] and item["operationId"] and item["eventTime"] == sent[2]["eventTime"]
    expect(
        await api.get(PATH, A, params={"eventFrom": window["eventTo"], "eventTo": window["eventFrom"]}),
        422,
        "VALIDATION_FAILED",
    )
    expect(await api.get(PATH, A, params={"stepNo": "four"}), 422, "VALIDATION_FAILED")


async def test_permissions(demo: Api, database: Database, reflowed: dict[str, Any]) -> None:
    body = event(reflowed, reflowed["sn"])
    for user in (OP, Q, PL, M):
        expect(await demo.post(PATH, user, json=body), 403, "FORBIDDEN")
        expect(await demo.get(PATH, user), 403, "FORBIDDEN")
    assert (await demo.post(PATH, EN, json=body)).status == 200
    assert (await demo.get(PATH, A)).data["total"] == 1
