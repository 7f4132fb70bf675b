"""BATCH ingest (domain.md §4.3 step 7): guards and codes, all-or-nothing writes (carrier upsert, one carrier
track, load reconcile, a track per unit, carrier-level values), INGEST_CONFLICT, concurrency, typed form."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import select, text, update

from central.db.engine import Database
from central.db.models import Carrier, CarrierLoad, CarrierTrack, DataValue, Defect, IngestEvent, Track, Unit
from tests.client import Api
from tests.flows import EN, PL, Q, released_run, seed, set_run_status
from tests.ingest_helpers import A, batch_event, counts, ing_run, line_b_run, patch_spec

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


async def _two_batch_steps(api: Api) -> dict[str, Any]:
    """A route with two BATCH steps on LINE-ING (10, 20), mapping at route scope, and an authorized run."""
    r = await api.post(
        "/routes",
        EN,
        json={
            "code": "ROUTE-BATCH-2X",
            "name": "Two oven passes",
            "productCode": "P-ING-B2",
            "processType": "SMT",
            "steps": [
                {
                    "stepNo": 10,
                    "operationCode": "OP-BATCH",
                    "stationGroupCode": "GRP-BATCH",
                    "stationType": "BATCH",
                },
                {
                    "stepNo": 20,
                    "operationCode": "OP-BATCH",
                    "stationGroupCode": "GRP-BATCH",
                    "stationType": "BATCH",
                    "isLast": True,
                },
            ],
        },
    )
    assert r.status in (200, 201), r.body
    mapping = {
        "eventType": "BATCH",
        "carrierCodePath": "payload.carrierCode",
        "snListPath": "payload.snList",
        "stationCodePath": "payload.stationCode",
        "result": {"path": "payload.result", "passValues": ["PASS"], "failValues": ["FAIL"]},
        "measurements": {"itemsPath": "payload.measurements", "namePath": "name", "valuePath": "value"},
    }
    r = await api.post(
        "/routes/ROUTE-BATCH-2X/execution-config", EN, json={"scopeType": "ROUTE", "ingestMapping": mapping}
    )
    assert r.status in (200, 201), r.body
    r = await api.post("/routes/ROUTE-BATCH-2X/compile", EN)
    assert r.status == 200 and r.data["status"] == "READY", r.body
    flow = await released_run(api, product="P-ING-B2", routing="ROUTE-BATCH-2X", line="LINE-ING", qty=3)
    assert (await api.post(f"/runs/{flow['runNo']}/readiness/check", Q)).data["status"] == "PASSED"
    assert (
        await api.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    ).status == 200
    return flow


# ---- guards ----------------------------------------------------------------------------------------------


async def test_batch_guards(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "BATCH", qty=3)
    a, b, c = flow["sns"]
    start = await counts(database)
    body = batch_event(flow, [a, b])
    del body["payload"]["stationCode"]
    r = await demo.post(EVENTS, A, json=body)
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    assert r.body["error"]["details"]["missing"] == ["stationCode"]
    expect(
        await demo.post(EVENTS, A, json=batch_event(flow, [a, b], stationCode="ST-NOPE")),
        404,
        "STATION_NOT_FOUND",
    )
    expect(
        await demo.post(EVENTS, A, json=batch_event(flow, [a, b], stationCode="ST-AUTO-01")),
        400,
        "STATION_MISMATCH",
    )
    expect(
        await demo.post(EVENTS, A, json=batch_event(flow, [a, b], result="HALF")),
        400,
        "INGEST_PAYLOAD_INVALID",
    )
    expect(await demo.post(EVENTS, A, json=batch_event(flow, [a, a])), 400, "INGEST_PAYLOAD_INVALID")
    long_carrier = batch_event(flow, [a, b], carrier="C" * 65)  # longer than the column: refused, not a 500
    expect(await demo.post(EVENTS, A, json=long_carrier), 400, "INGEST_PAYLOAD_INVALID")
    expect(
        await demo.post(EVENTS, A, json=batch_event(flow, [a, b], value="warm")), 400, "DATA_VALUE_INVALID"
    )
    r = await demo.post(EVENTS, A, json=batch_event(flow, [a, b], measurements=[]))
    expect(r, 400, "REQUIRED_DATA_MISSING")
    assert r.body["error"]["details"]["specNames"] == ["TEMP-BATCH"]
    assert await counts(database) == start

    # FAIL needs no data; every unit goes OUT_FAILED with a defect; they cannot ride again.
    r = await demo.post(EVENTS, A, json=batch_event(flow, [a, b], result="fail", measurements=[]))
    assert r.status == 200, r.body
    defects = await _all(database, select(Defect).order_by(Defect.id))
    tracks = {t.id: t for t in await _all(database, select(Track))}
    assert [(d.code, d.status) for d in defects] == [("STATION_FAIL", "RECORDED")] * 2
    assert {tracks[d.track_id].result for d in defects} == {"FAIL"}
    expect(await demo.post(EVENTS, A, json=batch_event(flow, [c, a])), 400, "UNIT_OUT_FAILED")

    for status in ("PREP", "ON_HOLD", "COMPLETED"):
        await set_run_status(database, flow["runNo"], status)
        expect(await demo.post(EVENTS, A, json=batch_event(flow, [c])), 400, "RUN_NOT_AUTHORIZED")
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    # A numeric string is coerced; the run comes from snList when runNo is absent.
    r = await demo.post(EVENTS, A, json=batch_event(None, [c], value="240.5"))
    assert r.status == 200, r.body
    [value] = await _all(database, select(DataValue))
    assert (value.value_number, value.source, value.track_id) == (240.5, "BATCH", None)


async def test_required_bound_spec_must_be_collected_per_carrier(demo: Api) -> None:
    """A bound, required spec collected per unit refuses the batch; once optional it may ride along."""
    flow = await ing_run(demo, "BATCH", qty=1)
    await patch_spec(demo, "TEMP-BATCH", triggerType="EACH_UNIT")
    r = await demo.post(EVENTS, A, json=batch_event(flow, flow["sns"]))
    expect(r, 400, "DATA_SPEC_TRIGGER_MISMATCH")
    await patch_spec(demo, "TEMP-BATCH", isRequired=False)  # not required: a per-unit spec may ride along
    assert (await demo.post(EVENTS, A, json=batch_event(flow, flow["sns"]))).status == 200


async def test_batch_unit_state_codes(demo: Api, database: Database) -> None:
    flow = await line_b_run(demo, qty=2)
    x, y = flow["sns"]
    async with database.writer() as s, s.begin():  # every unit at the oven step 40, one in each state
        await s.execute(update(Unit).where(Unit.sn.in_([x, y])).values(current_step_no=40))
    for status, code in (
        ("IN_STATION", "UNIT_ALREADY_IN_STATION"),
        ("DONE", "UNIT_ALREADY_DONE"),
        ("SCRAPPED", "UNIT_SCRAPPED"),
        ("ON_HOLD", "UNIT_ON_HOLD"),
    ):
        async with database.writer() as s, s.begin():
            await s.execute(update(Unit).where(Unit.sn == y).values(status=status))
        r = await demo.post(
            EVENTS, A, json=batch_event(flow, [x, y], stationCode="ST-B-REFLOW-01", measurements=[])
        )
        expect(r, 400, code)
        assert r.body["error"]["details"] == {"sn": y}
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn == y).values(status="QUEUED"))
    r = await demo.post(
        EVENTS, A, json=batch_event(flow, [x, y], stationCode="ST-B-REFLOW-01", measurements=[])
    )
    assert r.status == 200, r.body
    t = (await demo.get(f"/trace/units/{x}", Q)).data
    assert (t["unit"]["status"], t["unit"]["currentStepNo"]) == ("QUEUED", 50)  # PASS → next step, not DONE


# ---- writes ----------------------------------------------------------------------------------------------


async def test_carrier_upsert_and_load_reconcile(demo: Api, database: Database) -> None:
    flow = await _two_batch_steps(demo)
    a, b, c = flow["sns"]
    r1 = await demo.post(EVENTS, A, json=batch_event(flow, [a, b], carrier="CX", measurements=[]))
    assert r1.status == 200, r1.body
    # `a` goes on another carrier for step 20: it leaves CX; `b` stays loaded on CX.
    assert (
        await demo.post(EVENTS, A, json=batch_event(flow, [a], carrier="CY", measurements=[]))
    ).status == 200
    # CX now carries `c` only (step 10): the load of `b` ends.
    assert (
        await demo.post(EVENTS, A, json=batch_event(flow, [c], carrier="CX", measurements=[]))
    ).status == 200

    carriers = {cr.id: cr.carrier_no for cr in await _all(database, select(Carrier))}
    assert sorted(carriers.values()) == ["CX", "CY"]
    units = {u.id: u.sn for u in await _all(database, select(Unit))}
    loads = await _all(database, select(CarrierLoad).order_by(CarrierLoad.id))
    state = [(carriers[x.carrier_id], units[x.unit_id], x.unloaded_at is None) for x in loads]
    assert state == [("CX", a, False), ("CX", b, False), ("CY", a, True), ("CX", c, True)]
    cts = await _all(database, select(CarrierTrack).order_by(CarrierTrack.id))
    assert [(carriers[x.carrier_id], x.step_no, x.source) for x in cts] == [
        ("CX", 10, "BATCH"),
        ("CY", 20, "BATCH"),
        ("CX", 10, "BATCH"),
    ]
    t = (await demo.get(f"/trace/units/{a}", Q)).data
    assert (t["unit"]["status"], [x["stepNo"] for x in t["tracks"]]) == ("DONE", [10, 20])
    assert [x["carrierNo"] for x in t["carrierTracks"]] == ["CX", "CY"] and len(t["ingestEvents"]) == 2
    first = (await _all(database, select(IngestEvent).order_by(IngestEvent.id)))[0]
    assert first.meta["batch"] == {
        "policy": "ALL_OR_NOTHING",
        "carrierNo": "CX",
        "stepNo": 10,
        "stationCode": "ST-BATCH-01",
        "unitCount": 2,
        "unitStatus": "QUEUED",
    }
    assert first.meta["links"]["carrierDataValueCount"] == 0 and first.sn_list == [a, b]
    # The unbound spec set (no dataSpecIds) does not demand TEMP-BATCH; the run is still open (c at 20).
    assert (await demo.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "IN_PROGRESS"


async def test_identical_batches_at_once_apply_once(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "BATCH", qty=2)
    body = batch_event(flow, flow["sns"])
    results = await asyncio.gather(*(demo.post(EVENTS, A, json=body) for _ in range(3)))
    assert [r.status for r in results] == [200] * 3, [r.body for r in results]
    assert sorted(r.data["duplicate"] for r in results) == [False, True, True]
    c = await counts(database)
    assert (c["ingest_events"], c["carrier_tracks"], c["tracks"], c["data_values"], c["carriers"]) == (
        1,
        1,
        2,
        1,
        1,
    )


async def _wait_for_lock_waiter(database: Database, deadline_s: float = 10.0) -> None:
    """PostgreSQL: until some session of this database waits on a row lock (the request's unit update)."""
    end = time.monotonic() + deadline_s
    async with database.engine.connect() as conn:
        while time.monotonic() < end:
            n = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            await conn.rollback()
            if n:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the ingest request never waited on the units' row locks")


async def test_units_changed_meanwhile_roll_the_batch_back(demo: Api, database: Database) -> None:
    """Another transaction holds and changes the units while the batch runs. PostgreSQL: the batch read them
    QUEUED, its conditional update then finds them changed → INGEST_CONFLICT, nothing written. SQLite: writers
    are serial, so the batch only starts after the change and sees it (UNIT_ON_HOLD)."""
    flow = await ing_run(demo, "BATCH", qty=2)
    before = await counts(database)
    async with database.writer() as side, side.begin():
        await side.execute(update(Unit).where(Unit.sn.in_(flow["sns"])).values(status="ON_HOLD"))
        request = asyncio.create_task(demo.post(EVENTS, A, json=batch_event(flow, flow["sns"])))
        if database.dialect == "postgresql":
            await _wait_for_lock_waiter(database)
    r = await request
    expect(r, 400, "INGEST_CONFLICT" if database.dialect == "postgresql" else "UNIT_ON_HOLD")
    assert await counts(database) == before


# ---- typed form ------------------------------------------------------------------------------------------


async def test_typed_batch_form(demo: Api, database: Database) -> None:
    flow = await ing_run(demo, "BATCH", qty=2)
    seed_form = {
        "stationCode": "ST-BATCH-01",
        "carrierNo": "OVEN-LOT-01",
        "type": "TRACK_OUT",
        "result": "PASS",
        "sns": flow["sns"],
        "data": {"TEMP-BATCH": 246.8},
    }
    r = await demo.post("/ingest/batch/events", A, json=seed_form)
    assert r.status == 200 and r.data["duplicate"] is False, r.body
    assert (await demo.post("/ingest/batch/events", A, json=seed_form)).data["duplicate"] is True
    [ev] = await _all(database, select(IngestEvent))
    assert (ev.event_type, ev.source_system, ev.sn_list) == ("BATCH", "BATCH", flow["sns"])
    t = (await demo.get(f"/trace/units/{flow['sns'][0]}", Q)).data
    assert [(v["name"], v["valueNumber"]) for v in t["carrierDataValues"]] == [("TEMP-BATCH", 246.8)]
    no_carrier = {**seed_form, "carrierNo": None, "dedupeKey": "k-2"}
    expect(await demo.post("/ingest/batch/events", A, json=no_carrier), 400, "INGEST_PAYLOAD_INVALID")
