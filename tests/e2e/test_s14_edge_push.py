"""S14 end to end over HTTP on the demo plant: the edge-agent push endpoints.

Steps 1–8 (device data, SPI/AOI results and their effects on track-out and FAI) run on LINE-A with every
preparation step through the API (loading, FORMAL readiness, FAI trial, sign, authorize). Steps 9–13
(stencil, solder paste, equipment) run on LINE-B, whose readiness is ROUTE, EQUIPMENT, STENCIL, SOLDER_PASTE.
"""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import Station
from central.domain.clock import iso, utcnow
from tests.client import Api
from tests.flows import EN, OP, PL, A, M, Q, seed

_seq = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}-{int(time.time() * 1000)}-{next(_seq)}"


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def new_run(api: Api, wo_no: str, line: str, qty: int) -> dict[str, Any]:
    r = await api.post(f"/work-orders/{wo_no}/runs", PL, json={"lineCode": line, "planQty": qty})
    assert r.status == 200 and r.data["status"] == "PREP", r.body
    run_no = r.data["runNo"]
    g = await api.post(f"/runs/{run_no}/generate-units", PL, json={"quantity": qty})
    assert g.status == 200, g.body
    return {"woNo": wo_no, "runNo": run_no, "sns": [u["sn"] for u in g.data["units"]]}


async def work_order(api: Api, product: str, routing: str, line: str) -> str:
    wo_no = uniq("WO-S14")
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": wo_no, "productCode": product, "plannedQty": 100, "routingCode": routing},
    )
    assert r.status == 200, r.body
    assert (await api.post(f"/work-orders/{wo_no}/release", PL, json={"lineCode": line})).status == 200
    return wo_no


async def fai_started(api: Api, run: dict[str, Any]) -> int:
    """LINE-A preparation through the API: load table, the right lot, FORMAL readiness, FAI started."""
    table = await api.post(f"/runs/{run['runNo']}/loading/load-table", M)
    assert table.status == 200 and table.data["created"] == 1, table.body
    lot = await api.post(
        "/loading/verify",
        M,
        json={
            "runNo": run["runNo"],
            "slotCode": "SLOT-01",
            "materialLotBarcode": f"MAT-001|{uniq('LOT')}",
            "operatorId": "OP-01",
        },
    )
    assert lot.status == 200 and lot.data["verifyResult"] == "PASS", lot.body
    check = await api.post(f"/runs/{run['runNo']}/readiness/check", Q)
    assert check.data["status"] == "PASSED", check.body
    fai = await api.post(f"/fai/run/{run['runNo']}", Q, json={"sampleQty": 1})
    assert fai.status == 201, fai.body
    assert (await api.post(f"/fai/{fai.data['id']}/start", Q)).data["status"] == "INSPECTING"
    return int(fai.data["id"])


async def track_in(api: Api, station: str, sn: str, run: dict[str, Any], as_: str = OP) -> Any:
    return await api.post(
        f"/stations/{station}/track-in", as_, json={"sn": sn, "woNo": run["woNo"], "runNo": run["runNo"]}
    )


async def track_out(api: Api, station: str, sn: str, run: dict[str, Any], result: str = "PASS") -> Any:
    return await api.post(
        f"/stations/{station}/track-out",
        OP,
        json={"sn": sn, "runNo": run["runNo"], "result": result, "operatorId": "OP-01"},
    )


async def move(api: Api, station: str, sn: str, run: dict[str, Any]) -> Any:
    r = await track_in(api, station, sn, run)
    assert r.status == 200 and r.data["status"] == "IN_STATION", (station, r.body)
    out = await track_out(api, station, sn, run)
    assert out.status == 200, (station, out.body)
    return out


async def test_s14_steps_1_to_8_device_data_and_spi_aoi_results(api: Api, database: Database) -> None:
    await seed(database)
    assert (await api.post("/routes/PCBA-STD-V1/compile", EN)).data["status"] == "READY"

    # 1. EN: an AUTO spec at REFLOW.
    spec = await api.post(
        "/data-collection-specs",
        EN,
        json={
            "operationCode": "REFLOW",
            "name": "PEAK_TEMP_AUTO",
            "itemType": "KEY",
            "dataType": "NUMBER",
            "method": "AUTO",
            "triggerType": "EACH_UNIT",
            "spec": {"min": 235, "max": 255, "unit": "C"},
        },
    )
    assert spec.status == 201, spec.body

    wo = await work_order(api, "P-1001", "PCBA-STD-V1", "LINE-A")
    run = await new_run(api, wo, "LINE-A", 2)
    sn1, sn2 = run["sns"]
    fai_id = await fai_started(api, run)
    await move(api, "ST-PRINT-01", sn1, run)  # the FAI trial
    assert (await api.post(f"/fai/{fai_id}/complete", Q, json={"decision": "PASS"})).status == 200
    assert (await api.post(f"/fai/{fai_id}/sign", Q, json={"remark": "ok"})).status == 200
    auth = await api.post(f"/runs/{run['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    assert auth.data["status"] == "AUTHORIZED", auth.body

    # 2. After the unit's track-in/out at the reflow oven (step 4), the oven pushes its peak temperature.
    for station in ("ST-SPI-01", "ST-MOUNT-01"):
        await move(api, station, sn1, run)
    reflow = await move(api, "ST-REFLOW-01", sn1, run)
    device = {
        "eventId": uniq("evt"),
        "eventTime": iso(utcnow()),
        "source": "AUTO",
        "runNo": run["runNo"],
        "unitSn": sn1,
        "stationCode": "ST-REFLOW-01",
        "stepNo": 4,
        "data": [{"specName": "PEAK_TEMP_AUTO", "valueNumber": 245, "collectedAt": iso(utcnow())}],
    }
    r = await api.post("/integration/device-data", A, json=device)
    assert r.status == 200, r.body
    assert {
        k: r.data[k] for k in ("eventId", "trackId", "carrierTrackId", "dataValuesCreated", "isDuplicate")
    } == {
        "eventId": device["eventId"],
        "trackId": reflow.data["trackId"],
        "carrierTrackId": None,
        "dataValuesCreated": 1,
        "isDuplicate": False,
    }
    assert r.data["id"] and r.data["receivedAt"]

    # 3. The same eventId again: a duplicate, no new value.
    again = await api.post("/integration/device-data", A, json=device)
    assert again.status == 200 and again.data["isDuplicate"] is True and again.data["id"] == r.data["id"]
    trace = (await api.get(f"/trace/units/{sn1}", Q)).data
    assert [(v["name"], v["valueNumber"], v["source"]) for v in trace["dataValues"]] == [
        ("PEAK_TEMP_AUTO", 245, "AUTO")
    ]
    listed = (await api.get("/integration/device-data", EN, params={"runNo": run["runNo"]})).data
    assert listed["total"] == 1 and listed["items"][0]["eventId"] == device["eventId"]

    # 4. Bad input: 4xx with a code, never 500.
    def bad(**kw: Any) -> dict[str, Any]:
        return {**device, "eventId": uniq("evt-bad"), **kw}

    expect(await api.post("/integration/device-data", A, json=bad(unitSn=sn2)), 400, "TRACK_NOT_FOUND")
    expect(await api.post("/integration/device-data", A, json=bad(source="MANUAL")), 400, "OPERATOR_REQUIRED")
    both = bad(trackId=reflow.data["trackId"], carrierTrackId=1)
    expect(await api.post("/integration/device-data", A, json=both), 400, "INGEST_PAYLOAD_INVALID")
    unknown = bad(data=[{"specName": "NO_SUCH_SPEC", "valueNumber": 1}])
    expect(await api.post("/integration/device-data", A, json=unknown), 400, "DATA_SPEC_NOT_FOUND")

    # 5. SPI FAIL pushed after the track-in at SPI: linked to the open track, one defect.
    await move(api, "ST-PRINT-01", sn2, run)
    tin = await track_in(api, "ST-SPI-01", sn2, run)
    assert tin.status == 200, tin.body
    spi = {
        "eventId": uniq("spi"),
        "eventTime": iso(utcnow()),
        "runNo": run["runNo"],
        "stationCode": "ST-SPI-01",
        "unitSn": sn2,
        "stepNo": 2,
        "inspectionType": "SPI",
        "result": "FAIL",
        "defects": [{"code": "SPI-BRIDGE", "location": "U3"}],
        "source": "AUTO",
    }
    r = await api.post("/integration/inspection-result", A, json=spi)
    assert r.status == 200, r.body
    assert (r.data["trackId"], r.data["defectsCreated"], r.data["isDuplicate"]) == (
        tin.data["trackId"],
        1,
        False,
    )

    # 6. The operator's PASS track-out at SPI is forced to FAIL.
    out = await track_out(api, "ST-SPI-01", sn2, run)
    assert out.status == 200, out.body
    assert (out.data["status"], out.data["inspectionOverride"]) == ("OUT_FAILED", True)
    defects = (await api.get("/defects", Q, params={"unitSn": sn2})).data["items"]
    assert any(d["code"] == "SPI-BRIDGE" and d["location"] == "U3" for d in defects)

    # 7. Replay → duplicate; FAIL without defects → DEFECTS_REQUIRED.
    replay = await api.post("/integration/inspection-result", A, json=spi)
    assert replay.status == 200 and replay.data["isDuplicate"] is True and replay.data["id"] == r.data["id"]
    no_defects = {k: v for k, v in spi.items() if k != "defects"} | {"eventId": uniq("spi")}
    expect(await api.post("/integration/inspection-result", A, json=no_defects), 400, "DEFECTS_REQUIRED")
    results = (await api.get("/integration/inspection-results", EN, params={"unitSn": sn2})).data
    assert results["total"] == 1 and results["items"][0]["result"] == "FAIL"

    # 8. Any SPI/AOI FAIL of a run blocks FAI PASS for that run (a second run of the WO, in its FAI trial).
    run_b = await new_run(api, wo, "LINE-A", 1)
    fai_b = await fai_started(api, run_b)
    await move(api, "ST-PRINT-01", run_b["sns"][0], run_b)
    aoi = {
        **spi,
        "eventId": uniq("aoi"),
        "runNo": run_b["runNo"],
        "unitSn": run_b["sns"][0],
        "stationCode": "ST-AOI-01",
        "stepNo": 5,
        "inspectionType": "AOI",
        "defects": [{"code": "AOI-MISSING", "location": "C12"}],
    }
    assert (await api.post("/integration/inspection-result", A, json=aoi)).status == 200
    expect(
        await api.post(f"/fai/{fai_b}/complete", Q, json={"decision": "PASS"}),
        400,
        "INSPECTION_FAILURES_EXIST",
    )


async def test_s14_steps_9_to_13_consumables_and_equipment(
    api: Api, database: Database, make_user: Any
) -> None:
    await seed(database)
    wo = await work_order(api, "P-2001", "PCBA-AUTO-V1", "LINE-B")
    run = await new_run(api, wo, "LINE-B", 1)
    sn = run["sns"][0]
    lines = (await api.get("/lines", EN, params={"search": "LINE-B"})).data["items"]
    line_id = next(x["id"] for x in lines if x["code"] == "LINE-B")
    t0 = utcnow() - timedelta(minutes=9)

    def at(minutes: int) -> str:
        return iso(t0 + timedelta(minutes=minutes))

    # 9. Bind a stencil to the line.
    r = await api.post(f"/integration/lines/{line_id}/stencil/bind", EN, json={"stencilId": "STENCIL-S14"})
    assert r.status == 200 and r.data["isCurrent"] is True, r.body

    # 10. Stencil status: new, replayed, MANUAL without operator.
    st = {
        "eventId": uniq("st"),
        "eventTime": at(0),
        "stencilId": "STENCIL-S14",
        "status": "READY",
        "source": "AUTO",
    }
    first = await api.post("/integration/stencil-status", A, json={**st, "tensionValue": 42})
    assert first.status == 200 and first.data["isDuplicate"] is False, first.body
    replay = await api.post("/integration/stencil-status", A, json={**st, "tensionValue": 42})
    assert replay.data["isDuplicate"] is True and replay.data["id"] == first.data["id"]
    manual = {**st, "eventId": uniq("st"), "source": "MANUAL"}
    expect(await api.post("/integration/stencil-status", A, json=manual), 400, "OPERATOR_REQUIRED")

    # 11. Solder paste the same way.
    r = await api.post(f"/integration/lines/{line_id}/solder-paste/bind", EN, json={"lotId": "SP-S14"})
    assert r.status == 200 and r.data["lotId"] == "SP-S14", r.body
    sp = {
        "eventId": uniq("sp"),
        "eventTime": at(0),
        "lotId": "SP-S14",
        "status": "COMPLIANT",
        "source": "AUTO",
    }
    first = await api.post("/integration/solder-paste-status", A, json=sp)
    assert first.status == 200 and first.data["isDuplicate"] is False, first.body
    assert (await api.post("/integration/solder-paste-status", A, json=sp)).data["isDuplicate"] is True
    manual = {**sp, "eventId": uniq("sp"), "source": "MANUAL"}
    expect(await api.post("/integration/solder-paste-status", A, json=manual), 400, "OPERATOR_REQUIRED")

    # 12. Readiness: STENCIL / SOLDER_PASTE pass only for READY / COMPLIANT; otherwise authorize is refused.
    async def check() -> dict[str, Any]:
        r = await api.post(f"/runs/{run['runNo']}/readiness/check", Q)
        assert r.status == 200, r.body
        return r.data

    def status_of(data: dict[str, Any], item_type: str, key: str | None = None) -> str:
        (item,) = [
            i for i in data["items"] if i["itemType"] == item_type and (key is None or i["itemKey"] == key)
        ]
        return str(item["status"])

    ok = await check()
    assert ok["status"] == "PASSED", ok
    assert (status_of(ok, "STENCIL"), status_of(ok, "SOLDER_PASTE")) == ("PASSED", "PASSED")
    for status in ("NOT_READY", "MAINTENANCE"):
        ev = {**st, "eventId": uniq("st"), "eventTime": at(1), "status": status}
        assert (await api.post("/integration/stencil-status", A, json=ev)).status == 200
        data = await check()
        assert (data["status"], status_of(data, "STENCIL")) == ("FAILED", "FAILED"), status
        expect(
            await api.post(f"/runs/{run['runNo']}/authorize", PL, json={"action": "AUTHORIZE"}),
            400,
            "READINESS_CHECK_FAILED",
        )
    ev = {**st, "eventId": uniq("st"), "eventTime": at(2), "status": "READY"}
    assert (await api.post("/integration/stencil-status", A, json=ev)).status == 200
    for status in ("NON_COMPLIANT", "EXPIRED"):
        ev = {**sp, "eventId": uniq("sp"), "eventTime": at(3), "status": status}
        assert (await api.post("/integration/solder-paste-status", A, json=ev)).status == 200
        data = await check()
        assert (data["status"], status_of(data, "STENCIL"), status_of(data, "SOLDER_PASTE")) == (
            "FAILED",
            "PASSED",
            "FAILED",
        ), status
        expect(
            await api.post(f"/runs/{run['runNo']}/authorize", PL, json={"action": "AUTHORIZE"}),
            400,
            "READINESS_CHECK_FAILED",
        )
    ev = {**sp, "eventId": uniq("sp"), "eventTime": at(4), "status": "COMPLIANT"}
    assert (await api.post("/integration/solder-paste-status", A, json=ev)).status == 200
    assert (await check())["status"] == "PASSED"

    # 13. Equipment: a TPM status other than "normal", then a maintenance task in progress.
    async with database.reader() as s:
        ids = list((await s.scalars(select(Station.id).where(Station.code.like("ST-B-%")))).all())
    op_b = "operator.b@example.com"
    await make_user(op_b, "operator", station_ids=ids)
    printer = "ST-B-PRINT-01"
    r = await api.patch(f"/tpm/equipment/{printer}", A, json={"status": "down"})
    assert r.status == 200 and r.data["available"] is False, r.body
    expect(await track_in(api, printer, sn, run, op_b), 400, "TPM_EQUIPMENT_UNAVAILABLE")
    data = await check()
    assert (data["status"], status_of(data, "EQUIPMENT", printer)) == ("FAILED", "FAILED")
    assert (await api.patch(f"/tpm/equipment/{printer}", A, json={"status": "normal"})).status == 200
    task = {"taskNo": uniq("MT"), "equipmentCode": printer, "type": "REPAIR", "status": "in_progress"}
    assert (await api.post("/tpm/maintenance-tasks", A, json=task)).status == 200
    expect(await track_in(api, printer, sn, run, op_b), 400, "TPM_MAINTENANCE_IN_PROGRESS")
    data = await check()
    assert (data["status"], status_of(data, "EQUIPMENT", printer)) == ("FAILED", "FAILED")
    done = await api.patch(f"/tpm/maintenance-tasks/{task['taskNo']}", A, json={"status": "completed"})
    assert done.status == 200, done.body
    assert (await check())["status"] == "PASSED"
    auth = await api.post(f"/runs/{run['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    assert auth.status == 200 and auth.data["status"] == "AUTHORIZED", auth.body
    r = await track_in(api, printer, sn, run, op_b)
    assert r.status == 200 and r.data["status"] == "IN_STATION", r.body
