"""Steps shared by the ingest tests: LINE-ING runs (demo-plant.md §3), event bodies, row counts."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from central.db.engine import Database
from central.db.models import (
    Carrier,
    CarrierLoad,
    CarrierTrack,
    DataValue,
    Defect,
    IngestEvent,
    MesEvent,
    Track,
)
from central.domain.clock import iso, utcnow
from tests.client import Api
from tests.flows import EN, PL, Q, released_run

A = "admin@example.com"
# event type → (routing, product, station, spec)
ING = {
    "AUTO": ("ROUTE-AUTO-V1", "P-ING-AUTO", "ST-AUTO-01", "TEMP-AUTO"),
    "TEST": ("ROUTE-TEST-V1", "P-ING-TEST", "ST-TEST-01", "TEMP-TEST"),
    "BATCH": ("ROUTE-BATCH-V1", "P-ING-BATCH", "ST-BATCH-01", "TEMP-BATCH"),
}
_seq = itertools.count(1)


def uniq(prefix: str) -> str:
    return f"{prefix}-{next(_seq):05d}"


async def ing_run(api: Api, event_type: str, *, qty: int = 1, authorize: bool = True) -> dict[str, Any]:
    """S11 setup: receive + release to LINE-ING, a run, its units; readiness check by Q; authorize by PL."""
    routing, product, _station, _spec = ING[event_type]
    flow = await released_run(api, product=product, routing=routing, line="LINE-ING", qty=qty)
    if authorize:
        r = await api.post(f"/runs/{flow['runNo']}/readiness/check", Q)
        assert r.status == 200 and r.data["status"] == "PASSED", r.body
        r = await api.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
        assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body
    return flow


async def line_b_run(api: Api, *, qty: int = 1) -> dict[str, Any]:
    """An authorized run of PCBA-AUTO-V1 on LINE-B (steps 10 AUTO, 20 TEST, 30 AUTO, 40 BATCH, 50/60 TEST)."""
    flow = await released_run(api, product="P-2001", routing="PCBA-AUTO-V1", line="LINE-B", qty=qty)
    r = await api.post(f"/runs/{flow['runNo']}/readiness/check", Q)
    assert r.status == 200 and r.data["status"] == "PASSED", r.body
    r = await api.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body
    return flow


def unit_event(
    event_type: str,
    flow: dict[str, Any] | None,
    sn: str | None,
    *,
    result: Any = "PASS",
    value: Any = 55.5,
    key: str | None = None,
    source: str = "TESTSYS",
    **payload: Any,
) -> dict[str, Any]:
    """An AUTO or TEST body in the S11/S12 shape; `payload` entries override (None removes a field)."""
    _routing, _product, station, spec = ING[event_type]
    body_payload: dict[str, Any] = {
        "stationCode": station,
        "sn": sn,
        "result": result,
        "measurements": [{"name": spec, "value": value, "unit": "C", "judge": "PASS"}],
    }
    if event_type == "TEST":
        body_payload["testResultId"] = uniq("TR")
    body_payload.update(payload)
    return {
        "dedupeKey": key or uniq(event_type.lower()),
        "sourceSystem": source,
        "eventType": event_type,
        "occurredAt": iso(utcnow() - timedelta(seconds=5)),
        **({"runNo": flow["runNo"]} if flow else {}),
        "payload": {k: v for k, v in body_payload.items() if v is not None},
    }


def batch_event(
    flow: dict[str, Any] | None,
    sns: list[str] | None,
    *,
    carrier: str | None = None,
    result: Any = "PASS",
    value: Any = 123.4,
    key: str | None = None,
    **payload: Any,
) -> dict[str, Any]:
    """A BATCH body in the S13 shape."""
    body_payload: dict[str, Any] = {
        "carrierCode": carrier or uniq("CARRIER"),
        "stationCode": "ST-BATCH-01",
        "snList": sns,
        "result": result,
        "measurements": [{"name": "TEMP-BATCH", "value": value, "unit": "C", "judge": "PASS"}],
    }
    body_payload.update(payload)
    return {
        "dedupeKey": key or uniq("batch"),
        "sourceSystem": "TESTSYS",
        "eventType": "BATCH",
        "occurredAt": iso(utcnow() - timedelta(seconds=5)),
        **({"runNo": flow["runNo"]} if flow else {}),
        "payload": {k: v for k, v in body_payload.items() if v is not None},
    }


async def counts(database: Database) -> dict[str, int]:
    """Rows of everything an ingest event may write (a refusal must leave these unchanged)."""
    out: dict[str, int] = {}
    async with database.reader() as s:
        for model in (IngestEvent, Track, DataValue, Carrier, CarrierTrack, CarrierLoad, Defect, MesEvent):
            out[model.__tablename__] = int(await s.scalar(select(func.count()).select_from(model)) or 0)
    return out


async def set_mapping(api: Api, routing: str, step_no: int | None = None, **changes: Any) -> None:
    """Change a step config of a seeded route (default: its first) and compile; only later runs see it."""
    configs = (await api.get(f"/routes/{routing}/execution-config", EN)).data
    cfg = next(c for c in configs if c["scopeType"] == "STEP" and step_no in (None, c["stepNo"]))
    mapping = {**cfg["ingestMapping"], **changes.pop("mapping", {})}
    for k in [k for k, v in mapping.items() if v is None]:
        del mapping[k]
    r = await api.patch(
        f"/routes/{routing}/execution-config/{cfg['id']}", EN, json={"ingestMapping": mapping, **changes}
    )
    assert r.status == 200, r.body
    r = await api.post(f"/routes/{routing}/compile", EN)
    assert r.status == 200 and r.data["status"] == "READY", r.body


async def patch_spec(api: Api, name: str, **changes: Any) -> None:
    specs = (await api.get("/data-collection-specs", EN, params={"search": name})).data["items"]
    spec = next(s for s in specs if s["name"] == name)
    r = await api.patch(f"/data-collection-specs/{spec['id']}", EN, json=changes)
    assert r.status == 200, r.body
