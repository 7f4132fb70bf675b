"""Device data (domain.md §4.5): values pushed by equipment (AUTO) or keyed in (MANUAL) against a track.

Context is resolved in this order: `trackId`, else `carrierTrackId`, else the latest track of
runNo + unitSn + stationCode (+ stepNo). Which specs may be written comes from the run's frozen route version,
exactly as at track-out (services/data_collection.py). Device data only ever adds DataValue rows, so a manual
value is never overwritten by later automatic data (§11), and it never moves a unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import aliased

from central.db.models import CarrierTrack, DataValue, DeviceDataRecord, Run, Station, Track, Unit
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import Rejected
from central.schemas.device_inputs import DeviceDataIn, DeviceDataItem, DeviceDataQuery
from central.services import device_inputs as ctx
from central.services.data_collection import VALUE_FIELDS, Value, parse_values, specs_for_step
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

PERMS = ctx.PERMS
ACTION = "DEVICE_DATA_RECEIVE"
ENTITY = "DEVICE_DATA"


@dataclass
class Target:
    """Where the values go: a unit track or a carrier track, with the context it was resolved from."""

    run: Run
    step: route.Step
    unit: Unit | None = None
    station: Station | None = None
    track_id: int | None = None
    carrier_track_id: int | None = None

    @property
    def step_no(self) -> int:
        return int(self.step["stepNo"])


def invalid(message: str, details: Any = None) -> Rejected:
    return Rejected("INGEST_PAYLOAD_INVALID", message, details=details)


async def receive_device_data(uow: UnitOfWork, body: DeviceDataIn) -> dict[str, Any]:
    """Store the values of one device-data event; a replayed eventId returns the original (isDuplicate)."""
    original = await ctx.by_event_id(uow, DeviceDataRecord, body.event_id)
    if original is None:
        _check(body)
        target = await _resolve(uow, body)
        values = await _values(uow, body, target)
        row = DeviceDataRecord(
            event_id=body.event_id,
            event_time=body.event_time,
            source=body.source,
            run_id=target.run.id,
            unit_id=target.unit.id if target.unit else None,
            station_id=target.station.id if target.station else None,
            step_no=target.step_no,
            track_id=target.track_id,
            carrier_track_id=target.carrier_track_id,
            operation_id=target.step.get("operationId"),
            equipment_id=body.equipment_id,
            operator_id=body.operator_id,
            data=[_raw(d) for d in body.data],
            data_values_created=len(values),
            received_at=utcnow(),
            meta=body.meta or {},
        )
        if await ctx.insert_once(uow, row):
            _write(uow, body, target, values)
            _log(uow, body, row, "SUCCESS")
            uow.audit(
                row.id,
                target.unit.sn if target.unit else target.run.run_no,
                entity_type="INTEGRATION",
                action=ACTION,
                station_id=row.station_id,
                after={
                    "eventId": row.event_id,
                    "trackId": row.track_id,
                    "carrierTrackId": row.carrier_track_id,
                    "dataValuesCreated": row.data_values_created,
                },
            )
            return await receipt(uow, row, duplicate=False)
        original = await ctx.by_event_id(uow, DeviceDataRecord, body.event_id)
        assert original is not None  # insert_once saw it
    _log(uow, body, original, "DUPLICATE")
    uow.audit(
        original.id,
        body.unit_sn or body.run_no or body.event_id,
        entity_type="INTEGRATION",
        action=ACTION,
        payload={"eventId": body.event_id, "isDuplicate": True},
    )
    return await receipt(uow, original, duplicate=True)


def _check(body: DeviceDataIn) -> None:
    ctx.require_operator(body.source, body.operator_id)
    if not body.data:
        raise invalid("data must hold at least one value")
    if body.track_id is not None and body.carrier_track_id is not None:
        raise invalid("Give trackId or carrierTrackId, not both")
    unnamed = [i for i, d in enumerate(body.data) if (d.spec_id is None) == (d.spec_name is None)]
    if unnamed:
        raise invalid(
            "Each data item names its spec by specId or by specName (exactly one)", {"items": unnamed}
        )


async def _resolve(uow: UnitOfWork, body: DeviceDataIn) -> Target:
    s = uow.session
    if body.track_id is not None:
        track = await s.get(Track, body.track_id)
        unit = await s.get(Unit, track.unit_id) if track else None
        run = await s.get(Run, unit.run_id) if unit and unit.run_id else None
        if track is None or unit is None or run is None:
            raise Rejected("TRACK_NOT_FOUND", f"Track {body.track_id} not found")
        station = await s.get(Station, track.station_id)
        assert station is not None  # foreign key
        _agree(body, run=run, unit=unit, station=station, step_no=track.step_no)
        step = await ctx.snapshot_step(uow, run, track.step_no)
        return Target(run, step, unit, station, track_id=track.id)
    if body.carrier_track_id is not None:
        ct = await s.get(CarrierTrack, body.carrier_track_id)
        run = await s.get(Run, ct.run_id) if ct and ct.run_id else None
        if ct is None or run is None:
            raise Rejected("TRACK_NOT_FOUND", f"Carrier track {body.carrier_track_id} not found")
        if body.unit_sn is not None:
            raise invalid("Carrier-track data belongs to the carrier, not to one unit: leave out unitSn")
        station = await s.get(Station, ct.station_id) if ct.station_id else None
        _agree(body, run=run, unit=None, station=station, step_no=ct.step_no)
        step = await ctx.snapshot_step(uow, run, ct.step_no)
        return Target(run, step, None, station, carrier_track_id=ct.id)
    named = {"runNo": body.run_no, "unitSn": body.unit_sn, "stationCode": body.station_code}
    missing = [k for k, v in named.items() if v is None]
    if missing:
        raise invalid(
            "Name the track: trackId, carrierTrackId, or runNo + unitSn + stationCode (+ stepNo)",
            {"missing": missing},
        )
    assert body.run_no and body.unit_sn and body.station_code
    run = await ctx.find_run(uow, body.run_no)
    unit = await ctx.find_unit(uow, body.unit_sn, run)
    station = await ctx.find_station(uow, body.station_code)
    stmt = select(Track).where(Track.unit_id == unit.id, Track.station_id == station.id)
    if body.step_no is not None:
        stmt = stmt.where(Track.step_no == body.step_no)
    track = await s.scalar(stmt.order_by(Track.in_at.desc(), Track.id.desc()).limit(1))
    if track is None:
        at = "" if body.step_no is None else f" at step {body.step_no}"
        raise Rejected("TRACK_NOT_FOUND", f"Unit {unit.sn} has no track on {station.code}{at}")
    step = await ctx.snapshot_step(uow, run, track.step_no)
    return Target(run, step, unit, station, track_id=track.id)


def _agree(body: DeviceDataIn, *, run: Run, unit: Unit | None, station: Station | None, step_no: int) -> None:
    """Context given next to an explicit track id must describe that track: a contradiction is refused."""
    resolved = {
        "runNo": run.run_no,
        "unitSn": unit.sn if unit else None,
        "stationCode": station.code if station else None,
        "stepNo": step_no,
    }
    given = {
        "runNo": body.run_no,
        "unitSn": body.unit_sn,
        "stationCode": body.station_code,
        "stepNo": body.step_no,
    }
    conflicts = {
        k: {"given": v, "track": resolved[k]} for k, v in given.items() if v is not None and v != resolved[k]
    }
    if conflicts:
        raise invalid(f"The body contradicts the track it names: {', '.join(conflicts)}", conflicts)


async def _values(uow: UnitOfWork, body: DeviceDataIn, target: Target) -> list[tuple[Value, datetime]]:
    """Typed values of the step's writable specs, refusing the whole event on the first bad item."""
    if body.operation_id is not None and body.operation_id != target.step.get("operationId"):
        raise invalid(f"operationId {body.operation_id} is not the operation of step {target.step_no}")
    specs, _bound = await specs_for_step(uow, target.step)
    by_id = {sp.id: sp for sp in specs}
    by_name = {sp.name: sp for sp in specs}
    out: list[tuple[Value, datetime]] = []
    for item in body.data:
        spec = by_id.get(item.spec_id) if item.spec_id is not None else by_name.get(item.spec_name or "")
        if spec is None:
            named = item.spec_id if item.spec_id is not None else repr(item.spec_name)
            raise Rejected(
                "DATA_SPEC_NOT_FOUND", f"No data spec {named} is writable at step {target.step_no}"
            )
        if body.source == "AUTO" and spec.method != "AUTO":
            raise Rejected(
                "DATA_SPEC_METHOD_MISMATCH",
                f"Spec {spec.name} is collected {spec.method}: automatic data may only feed AUTO specs",
            )
        (value,) = parse_values([_item(item, spec.name)], [spec])
        out.append((value, item.collected_at or body.event_time))
    return out


def _raw(item: DeviceDataItem) -> dict[str, Any]:
    """The item as received, times in the wire format."""
    raw = item.model_dump(mode="json", by_alias=True, exclude_none=True)
    if item.collected_at is not None:
        raw["collectedAt"] = iso(item.collected_at)
    return raw


def _item(item: DeviceDataItem, name: str) -> dict[str, Any]:
    return {"spec_name": name, **{f: getattr(item, f) for f in VALUE_FIELDS.values()}}


def _write(uow: UnitOfWork, body: DeviceDataIn, target: Target, values: list[tuple[Value, datetime]]) -> None:
    """New rows only: values already collected for the track (manual ones included) stay as they are."""
    uow.session.add_all(
        [
            DataValue(
                spec_id=v.spec.id,
                track_id=target.track_id,
                carrier_track_id=target.carrier_track_id,
                value_number=v.number,
                value_text=v.text,
                value_boolean=v.boolean,
                value_json=v.json,
                judge=v.judge,
                alarmed=False,
                source=body.source,
                collected_at=at,
                collected_by=body.operator_id or body.equipment_id,
            )
            for v, at in values
        ]
    )


def _log(uow: UnitOfWork, body: DeviceDataIn, row: DeviceDataRecord, status: str) -> None:
    meta: dict[str, Any] = {"recordId": row.id, "source": body.source}
    if status == "DUPLICATE":  # a resend whose content differs is worth a look
        sent = [_raw(d) for d in body.data]
        meta["payloadDiffers"] = (row.data, iso(row.event_time), row.source) != (
            sent,
            iso(body.event_time),
            body.source,
        )
    ctx.log_message(
        uow,
        entity_type=ENTITY,
        dedupe_prefix="device-data",
        event_id=body.event_id,
        business_key=body.unit_sn or body.run_no,
        body=body,
        status=status,
        meta=meta,
    )


async def receipt(uow: UnitOfWork, row: DeviceDataRecord, *, duplicate: bool) -> dict[str, Any]:
    s = uow.session
    run = await s.get(Run, row.run_id) if row.run_id else None
    unit = await s.get(Unit, row.unit_id) if row.unit_id else None
    station = await s.get(Station, row.station_id) if row.station_id else None
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_time": row.event_time,
        "source": row.source,
        "run_no": run.run_no if run else None,
        "unit_sn": unit.sn if unit else None,
        "station_code": station.code if station else None,
        "step_no": row.step_no,
        "track_id": row.track_id,
        "carrier_track_id": row.carrier_track_id,
        "data_values_created": row.data_values_created,
        "received_at": row.received_at,
        "is_duplicate": duplicate,
    }


async def list_device_data(uow: UnitOfWork, q: DeviceDataQuery) -> dict[str, Any]:
    m = DeviceDataRecord
    run, unit, station = aliased(Run), aliased(Unit), aliased(Station)
    stmt = (
        select(m, run.run_no, unit.sn, station.code)
        .outerjoin(run, run.id == m.run_id)
        .outerjoin(unit, unit.id == m.unit_id)
        .outerjoin(station, station.id == m.station_id)
    )
    for column, value in (
        (m.event_id, q.event_id),
        (run.run_no, q.run_no),
        (unit.sn, q.unit_sn),
        (station.code, q.station_code),
        (m.source, q.source),
    ):
        if values := split_csv(value):
            stmt = stmt.where(column.in_(values))
    if q.step_no is not None:
        stmt = stmt.where(m.step_no == q.step_no)
    if q.event_from is not None:
        stmt = stmt.where(m.event_time >= q.event_from)
    if q.event_to is not None:
        stmt = stmt.where(m.event_time <= q.event_to)
    page = await paginate(
        uow.session,
        stmt,
        q,
        search=[m.event_id, run.run_no, unit.sn, station.code],
        sort_fields={
            "createdAt": m.created_at,
            "eventTime": m.event_time,
            "receivedAt": m.received_at,
            "stepNo": m.step_no,
        },
        scalars=False,
    )
    page["items"] = [
        {
            **{c.key: getattr(row, c.key) for c in m.__table__.columns},
            "run_no": run_no,
            "unit_sn": sn,
            "station_code": code,
        }
        for row, run_no, sn, code in page["items"]
    ]
    return page
