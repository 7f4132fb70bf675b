"""S11 (ingest AUTO + replay), S12 (ingest TEST), S13 (ingest BATCH / carrier) over HTTP on the demo plant's
LINE-ING fixture (demo-plant.md §3), each with its listed negatives and trace checks."""

from __future__ import annotations

from typing import Any

import pytest

from central.db.engine import Database
from tests.client import Api
from tests.flows import PL, Q, seed, set_run_status
from tests.ingest_helpers import (
    A,
    batch_event,
    counts,
    ing_run,
    line_b_run,
    patch_spec,
    set_mapping,
    unit_event,
)

EVENTS = "/ingest/events"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def _trace(api: Api, sn: str) -> dict[str, Any]:
    r = await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})
    assert r.status == 200, r.body
    return r.data


async def test_s11_auto_ingest_and_replay(demo: Api, database: Database) -> None:
    api = demo
    flow = await ing_run(api, "AUTO")
    sn = flow["sns"][0]
    body = unit_event("AUTO", flow, sn, key="auto-s11")
    r = await api.post(EVENTS, A, json=body)
    assert r.status == 200, r.body
    assert r.body == {
        "ok": True,
        "data": {"eventId": r.data["eventId"], "duplicate": False, "status": "RECEIVED"},
    }
    event_id = r.data["eventId"]
    run = (await api.get(f"/runs/{flow['runNo']}", PL)).data
    assert run["status"] == "COMPLETED" and run["startedAt"] and run["endedAt"]  # no sampling rule
    before = await counts(database)

    again = await api.post(EVENTS, A, json=body)
    assert again.status == 200 and again.data == {
        "eventId": event_id,
        "duplicate": True,
        "status": "RECEIVED",
    }
    assert await counts(database) == before  # no new track, value or event

    t = await _trace(api, sn)
    assert t["unit"]["status"] == "DONE"
    assert t["routeVersion"]["id"] == run["routeVersion"]["id"]
    assert [(x["source"], x["result"], x["stationCode"]) for x in t["tracks"]] == [
        ("AUTO", "PASS", "ST-AUTO-01")
    ]
    assert t["tracks"][0]["inAt"] == t["tracks"][0]["outAt"] == body["occurredAt"]
    [ie] = t["ingestEvents"]
    assert {k: ie[k] for k in ("dedupeKey", "eventType", "sourceSystem", "stationCode", "sn", "result")} == {
        "dedupeKey": "auto-s11",
        "eventType": "AUTO",
        "sourceSystem": "TESTSYS",
        "stationCode": "ST-AUTO-01",
        "sn": sn,
        "result": "PASS",
    }
    assert ie["snList"] is None and ie["links"] is None and ie["id"] == event_id
    assert ie["lineCode"] == "LINE-ING" and ie["occurredAt"] == body["occurredAt"]
    [dv] = t["dataValues"]
    assert (dv["name"], dv["valueNumber"], dv["judge"], dv["source"]) == ("TEMP-AUTO", 55.5, "PASS", "AUTO")

    # The same dedupeKey under another sourceSystem is another event (here: the unit is already DONE).
    other = await api.post(EVENTS, A, json={**body, "sourceSystem": "OTHERSYS"})
    expect(other, 400, "UNIT_ALREADY_DONE")


async def test_s11_negatives_write_nothing_and_retry_is_evaluated_again(
    demo: Api, database: Database
) -> None:
    api = demo
    prep = await ing_run(api, "AUTO", authorize=False)
    flow = await ing_run(api, "AUTO", qty=3)
    sn1, sn2, sn3 = flow["sns"]
    test_flow = await ing_run(api, "TEST", authorize=False)
    start = await counts(database)

    refused = unit_event("AUTO", prep, prep["sns"][0], key="auto-retry")
    expect(await api.post(EVENTS, A, json=refused), 400, "RUN_IN_PREP")
    unknown_run = {**unit_event("AUTO", flow, sn1), "runNo": "RUN-NOPE"}
    expect(await api.post(EVENTS, A, json=unknown_run), 404, "RUN_NOT_FOUND")
    expect(await api.post(EVENTS, A, json=unit_event("AUTO", None, "SN-NOPE")), 404, "UNIT_RUN_NOT_FOUND")
    no_auto_step = unit_event("AUTO", test_flow, test_flow["sns"][0])
    expect(await api.post(EVENTS, A, json=no_auto_step), 400, "INGEST_MAPPING_MISSING")
    for missing in ("stationCode", "sn", "result"):
        body = unit_event("AUTO", flow, sn1)
        del body["payload"][missing]
        r = await api.post(EVENTS, A, json=body)
        expect(r, 400, "INGEST_PAYLOAD_INVALID")
        assert r.body["error"]["details"]["missing"] == [missing]
    bad_time = {**unit_event("AUTO", flow, sn1), "occurredAt": "yesterday"}
    expect(await api.post(EVENTS, A, json=bad_time), 400, "INGEST_PAYLOAD_INVALID")
    wrong_station = unit_event("AUTO", flow, sn1, stationCode="ST-TEST-01")
    expect(await api.post(EVENTS, A, json=wrong_station), 400, "STATION_MISMATCH")
    expect(
        await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn1, stationCode="ST-NOPE")),
        404,
        "STATION_NOT_FOUND",
    )
    expect(
        await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn1, measurements=[])),
        400,
        "REQUIRED_DATA_MISSING",
    )
    assert await counts(database) == start  # a rejected event writes nothing

    # FAIL: track FAIL, unit OUT_FAILED (no data needed); the next event for it is refused.
    r = await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn1, result="FAIL", measurements=[]))
    assert r.status == 200 and r.data["duplicate"] is False, r.body
    t = await _trace(api, sn1)
    assert t["unit"]["status"] == "OUT_FAILED" and [x["result"] for x in t["tracks"]] == ["FAIL"]
    expect(await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn1)), 400, "UNIT_OUT_FAILED")
    assert (await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn2))).status == 200
    expect(await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn2)), 400, "UNIT_ALREADY_DONE")
    for status in ("COMPLETED", "SCRAPPED", "CLOSED_REWORK"):  # closed runs with a pending unit
        await set_run_status(database, flow["runNo"], status)
        expect(await api.post(EVENTS, A, json=unit_event("AUTO", flow, sn3)), 400, "RUN_CLOSED")

    # The refused event was not stored: once the run is authorized the same key is evaluated again.
    r = await api.post(f"/runs/{prep['runNo']}/readiness/check", Q)
    assert r.data["status"] == "PASSED"
    assert (
        await api.post(f"/runs/{prep['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    ).status == 200
    r = await api.post(EVENTS, A, json=refused)
    assert r.status == 200 and r.data["duplicate"] is False, r.body


async def test_s11_step_requiring_authorization(demo: Api) -> None:
    api = demo
    await set_mapping(api, "ROUTE-AUTO-V1", requiresAuthorization=True)
    prep = await ing_run(api, "AUTO", authorize=False)
    expect(
        await api.post(EVENTS, A, json=unit_event("AUTO", prep, prep["sns"][0])), 400, "RUN_NOT_AUTHORIZED"
    )


async def test_s12_test_ingest(demo: Api, database: Database) -> None:
    api = demo
    flow = await ing_run(api, "TEST")
    sn = flow["sns"][0]
    body = unit_event("TEST", flow, sn, value=99.9, testResultId="TR-S12-1")
    no_id = unit_event("TEST", flow, sn, value=99.9, testResultId=None)
    r = await api.post(EVENTS, A, json=no_id)
    expect(r, 400, "INGEST_PAYLOAD_INVALID")
    assert r.body["error"]["details"]["missing"] == ["testResultId"]
    r = await api.post(EVENTS, A, json=body)
    assert r.status == 200 and r.data["duplicate"] is False, r.body
    again = await api.post(EVENTS, A, json=body)
    assert again.data == {"eventId": r.data["eventId"], "duplicate": True, "status": "RECEIVED"}

    t = await _trace(api, sn)
    assert [(x["source"], x["result"]) for x in t["tracks"]] == [("TEST", "PASS")]
    assert [e["eventType"] for e in t["ingestEvents"]] == ["TEST"]
    assert [(v["name"], v["valueNumber"]) for v in t["dataValues"]] == [("TEMP-TEST", 99.9)]
    assert (await api.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "COMPLETED"


async def test_s13_batch_ingest(demo: Api, database: Database) -> None:
    api = demo
    flow = await ing_run(api, "BATCH", qty=2)
    sn1, sn2 = flow["sns"]
    body = batch_event(flow, [sn1, sn2], carrier="CARRIER-S13", key="batch-s13")
    r = await api.post(EVENTS, A, json=body)
    assert r.status == 200 and r.data["duplicate"] is False, r.body
    again = await api.post(EVENTS, A, json=body)
    assert again.data == {"eventId": r.data["eventId"], "duplicate": True, "status": "RECEIVED"}
    c = await counts(database)
    assert (c["carriers"], c["carrier_tracks"], c["tracks"], c["data_values"], c["carrier_loads"]) == (
        1,
        1,
        2,
        1,
        2,
    )
    assert (await api.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "COMPLETED"

    t = await _trace(api, sn1)
    assert t["unit"]["status"] == "DONE"
    assert [(x["source"], x["result"], x["stationCode"]) for x in t["tracks"]] == [
        ("BATCH", "PASS", "ST-BATCH-01")
    ]
    [ie] = t["ingestEvents"]
    assert ie["snList"] == [sn1, sn2] and ie["eventType"] == "BATCH" and ie["carrierCode"] == "CARRIER-S13"
    links = ie["links"]
    assert isinstance(links["carrierTrackId"], str) and isinstance(links["unitTracks"][sn1], str)
    assert links["unitTracks"][sn1] == str(t["tracks"][0]["id"]) and links["carrierDataValueCount"] == 1
    [ct] = t["carrierTracks"]
    assert (
        ct["carrierNo"] == "CARRIER-S13"
        and ct["dataValueCount"] >= 1
        and str(ct["id"]) == links["carrierTrackId"]
    )
    assert (ct["source"], ct["result"], ct["stationCode"]) == ("BATCH", "PASS", "ST-BATCH-01")
    [cv] = t["carrierDataValues"]
    assert (cv["name"], cv["valueNumber"], cv["carrierNo"]) == ("TEMP-BATCH", 123.4, "CARRIER-S13")
    assert [cl["carrierNo"] for cl in t["carrierLoads"]] == ["CARRIER-S13"]
    assert t["dataValues"] == []  # carrier-level values hang off the carrier track, not the unit track
    assert [x["sn"] for x in (await _trace(api, sn2))["ingestEvents"]] == [None]


async def test_s13_negatives(demo: Api, database: Database) -> None:
    api = demo
    prep = await ing_run(api, "BATCH", qty=2, authorize=False)
    flow = await ing_run(api, "BATCH", qty=4)
    other = await ing_run(api, "BATCH", qty=1)
    a, b, c, d = flow["sns"]
    start = await counts(database)

    expect(await api.post(EVENTS, A, json=batch_event(prep, prep["sns"])), 400, "RUN_NOT_AUTHORIZED")
    r = await api.post(EVENTS, A, json=batch_event(flow, [a, "SN-NOPE"]))
    expect(r, 404, "UNIT_NOT_FOUND")
    assert r.body["error"]["details"]["sns"] == ["SN-NOPE"]
    expect(await api.post(EVENTS, A, json=batch_event(flow, [a, other["sns"][0]])), 400, "RUN_MISMATCH")
    # Without runNo the run comes from snList, and two runs there are the same refusal.
    expect(await api.post(EVENTS, A, json=batch_event(None, [a, other["sns"][0]])), 400, "RUN_MISMATCH")
    for missing in ("carrierCode", "snList"):
        body = batch_event(flow, [a, b])
        del body["payload"][missing]
        r = await api.post(EVENTS, A, json=body)
        expect(r, 400, "INGEST_PAYLOAD_INVALID")
        assert r.body["error"]["details"]["missing"] == [missing]
    assert await counts(database) == start

    # Units at different steps: one of them already passed the (only) step.
    assert (await api.post(EVENTS, A, json=batch_event(flow, [a]))).status == 200
    expect(await api.post(EVENTS, A, json=batch_event(flow, [b, c, a])), 400, "UNIT_ALREADY_DONE")

    await patch_spec(api, "TEMP-BATCH", triggerType="EACH_UNIT")
    expect(await api.post(EVENTS, A, json=batch_event(flow, [b, c])), 400, "DATA_SPEC_TRIGGER_MISMATCH")
    await patch_spec(api, "TEMP-BATCH", triggerType="EACH_CARRIER", method="MANUAL")
    expect(await api.post(EVENTS, A, json=batch_event(flow, [b, c])), 400, "DATA_SPEC_METHOD_MISMATCH")
    await patch_spec(api, "TEMP-BATCH", method="AUTO")
    assert (await api.post(EVENTS, A, json=batch_event(flow, [b, c, d]))).status == 200

    # Units at different steps, or at a step that is not a BATCH step (LINE-B: 10 AUTO … 40 BATCH …).
    line_b = await line_b_run(api, qty=2)
    x, y = line_b["sns"]
    r = await api.post(
        EVENTS, A, json=unit_event("AUTO", line_b, x, stationCode="ST-B-PRINT-01", measurements=[])
    )
    assert r.status == 200, r.body
    expect(await api.post(EVENTS, A, json=batch_event(line_b, [x, y])), 400, "STEP_MISMATCH")
    expect(await api.post(EVENTS, A, json=batch_event(line_b, [y])), 400, "STEP_MISMATCH")

    await set_mapping(api, "ROUTE-BATCH-V1", mapping={"batchPolicy": "PARTIAL"})
    partial = await ing_run(api, "BATCH", qty=1)
    r = await api.post(EVENTS, A, json=batch_event(partial, partial["sns"]))
    expect(r, 400, "BATCH_POLICY_NOT_SUPPORTED")
