"""Unit trace (domain.md §8): everything that happened to one serial number, and lot → units."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select

from central.db.models import (
    Carrier,
    CarrierLoad,
    CarrierTrack,
    DataCollectionSpec,
    DataValue,
    Defect,
    ExecutableRouteVersion,
    FeederSlot,
    IngestEvent,
    Inspection,
    InspectionItem,
    Line,
    LoadingRecord,
    MaterialLot,
    Operation,
    ReadinessCheck,
    Routing,
    Run,
    Station,
    Track,
    Unit,
    WorkOrder,
)
from central.domain import route
from central.domain.clock import iso
from central.domain.errors import NotFound, Rejected
from central.services.uow import UnitOfWork


def _value(dv: DataValue) -> dict[str, Any]:
    value = next(
        (v for v in (dv.value_number, dv.value_text, dv.value_boolean, dv.value_json) if v is not None), None
    )
    return {
        "value": value,
        "valueNumber": dv.value_number,
        "valueText": dv.value_text,
        "valueBoolean": dv.value_boolean,
        "valueJson": dv.value_json,
        "judge": dv.judge,
        "source": dv.source,
        "collectedAt": iso(dv.collected_at),
    }


async def _version(
    uow: UnitOfWork, unit: Unit, run: Run | None, wo: WorkOrder, mode: str
) -> ExecutableRouteVersion:
    s = uow.session
    if mode == "run":
        version = (
            await s.get(ExecutableRouteVersion, run.route_version_id)
            if run and run.route_version_id
            else None
        )
        if version is None:
            raise NotFound("ROUTE_VERSION_NOT_READY", f"Unit {unit.sn} has no frozen route version")
        return version
    if wo.routing_id is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Work order {wo.wo_no} has no routing")
    version = await s.scalar(
        select(ExecutableRouteVersion)
        .where(ExecutableRouteVersion.routing_id == wo.routing_id, ExecutableRouteVersion.status == "READY")
        .order_by(ExecutableRouteVersion.version_no.desc())
        .limit(1)
    )
    if version is None:
        raise NotFound("ROUTE_VERSION_NOT_READY", f"The routing of {wo.wo_no} has no READY version")
    return version


async def unit_trace(uow: UnitOfWork, sn: str, mode: str) -> dict[str, Any]:
    s = uow.session
    unit = await s.scalar(select(Unit).where(Unit.sn == sn))
    if unit is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    wo = await s.get(WorkOrder, unit.wo_id)
    assert wo is not None
    run = await s.get(Run, unit.run_id) if unit.run_id else None
    version = await _version(uow, unit, run, wo, mode)
    snapshot = version.snapshot_json or {}
    steps = route.steps(snapshot)
    if not steps:
        raise Rejected("ROUTING_EMPTY", "The route version has no steps")
    routing = await s.get(Routing, version.routing_id)
    assert routing is not None

    tracks = (
        await s.execute(
            select(Track, Station.code)
            .join(Station, Station.id == Track.station_id)
            .where(Track.unit_id == unit.id)
            .order_by(Track.in_at, Track.id)
        )
    ).all()
    op_by_step = await _step_operations(uow, steps)
    track_rows = [t for t, _ in tracks]
    track_ids = [t.id for t in track_rows]
    carrier_track_ids = sorted(
        {
            int(t.meta["carrierTrackId"])
            for t in track_rows
            if (t.meta or {}).get("carrierTrackId") is not None
        }
    )
    event_ids = {int(t.meta["ingestEventId"]) for t in track_rows if (t.meta or {}).get("ingestEventId")}
    step_of_track = {t.id: t.step_no for t in track_rows}

    values = (
        (
            await s.execute(
                select(DataValue, DataCollectionSpec.name)
                .join(DataCollectionSpec, DataCollectionSpec.id == DataValue.spec_id)
                .where(DataValue.track_id.in_(track_ids))
                .order_by(DataValue.id)
            )
        ).all()
        if track_ids
        else []
    )
    return {
        "unit": {
            "sn": unit.sn,
            "status": unit.status,
            "currentStepNo": unit.current_step_no,
            "woNo": wo.wo_no,
            "runNo": run.run_no if run else None,
        },
        "route": {
            "code": routing.code,
            "sourceSystem": routing.source_system,
            "sourceKey": routing.source_key,
        },
        "routeVersion": {
            "id": version.id,
            "versionNo": version.version_no,
            "compiledAt": iso(version.compiled_at),
        },
        "steps": [{**st, "operationCode": op_by_step.get(int(st["stepNo"]))} for st in steps],
        "tracks": [
            {
                "id": t.id,
                "stepNo": t.step_no,
                "operation": op_by_step.get(t.step_no),
                "stationCode": code,
                "source": t.source,
                "inAt": iso(t.in_at),
                "outAt": iso(t.out_at),
                "result": t.result,
                "operatorId": t.operator_id,
                "executionMode": (t.meta or {}).get("executionMode"),
            }
            for t, code in tracks
        ],
        "ingestEvents": await _ingest_events(uow, unit, event_ids),
        **await _carriers(uow, unit, carrier_track_ids),
        "dataValues": [
            {"stepNo": step_of_track.get(dv.track_id), "trackId": dv.track_id, "name": name, **_value(dv)}
            for dv, name in values
        ],
        "defects": await _defects(uow, unit),
        "inspections": await _inspections(uow, unit, run),
        "loadingRecords": await _loading(uow, run, track_rows),
        "materials": await _materials(uow, run),
        "readiness": await _readiness(uow, run),
        "snapshot": {},
    }


async def _step_operations(uow: UnitOfWork, steps: list[route.Step]) -> dict[int, str | None]:
    ids = {st.get("operationId") for st in steps}
    codes = (
        dict(
            (await uow.session.execute(select(Operation.id, Operation.code).where(Operation.id.in_(ids))))
            .tuples()
            .all()
        )
        if ids
        else {}
    )
    return {int(st["stepNo"]): codes.get(st.get("operationId")) for st in steps}


async def _ingest_events(uow: UnitOfWork, unit: Unit, event_ids: set[int]) -> list[dict[str, Any]]:
    s = uow.session
    cond = IngestEvent.unit_id == unit.id
    if event_ids:
        cond = or_(cond, IngestEvent.id.in_(event_ids))
    rows = (
        await s.execute(
            select(IngestEvent, Station.code, Line.code, Carrier.carrier_no)
            .outerjoin(Station, Station.id == IngestEvent.station_id)
            .outerjoin(Line, Line.id == IngestEvent.line_id)
            .outerjoin(Carrier, Carrier.id == IngestEvent.carrier_id)
            .where(cond)
            .order_by(IngestEvent.occurred_at, IngestEvent.id)
        )
    ).all()
    return [
        {
            "id": e.id,
            "eventType": e.event_type,
            "sourceSystem": e.source_system,
            "dedupeKey": e.dedupe_key,
            "occurredAt": iso(e.occurred_at),
            "stationCode": st,
            "lineCode": ln,
            "carrierCode": cn,
            "sn": e.sn,
            "snList": e.sn_list,
            "result": e.result,
            "links": (e.meta or {}).get("links"),
        }
        for e, st, ln, cn in rows
    ]


async def _carriers(uow: UnitOfWork, unit: Unit, carrier_track_ids: list[int]) -> dict[str, Any]:
    s = uow.session
    loads = (
        await s.execute(
            select(CarrierLoad, Carrier.carrier_no)
            .join(Carrier, Carrier.id == CarrierLoad.carrier_id)
            .where(CarrierLoad.unit_id == unit.id)
            .order_by(CarrierLoad.loaded_at)
        )
    ).all()
    cts: list[Any] = []
    cvals: list[Any] = []
    if carrier_track_ids:
        counts = dict(
            (
                await s.execute(
                    select(DataValue.carrier_track_id, func.count(DataValue.id))
                    .where(DataValue.carrier_track_id.in_(carrier_track_ids))
                    .group_by(DataValue.carrier_track_id)
                )
            )
            .tuples()
            .all()
        )
        cts = [
            {
                "id": ct.id,
                "carrierNo": no,
                "stepNo": ct.step_no,
                "stationCode": st,
                "inAt": iso(ct.in_at),
                "outAt": iso(ct.out_at),
                "result": ct.result,
                "source": ct.source,
                "dataValueCount": counts.get(ct.id, 0),
            }
            for ct, no, st in (
                await s.execute(
                    select(CarrierTrack, Carrier.carrier_no, Station.code)
                    .join(Carrier, Carrier.id == CarrierTrack.carrier_id)
                    .outerjoin(Station, Station.id == CarrierTrack.station_id)
                    .where(CarrierTrack.id.in_(carrier_track_ids))
                )
            ).all()
        ]
        by_id = {c["id"]: c for c in cts}
        cvals = [
            {
                "carrierTrackId": dv.carrier_track_id,
                "carrierNo": by_id[dv.carrier_track_id]["carrierNo"],
                "stepNo": by_id[dv.carrier_track_id]["stepNo"],
                "name": name,
                **_value(dv),
            }
            for dv, name in (
                await s.execute(
                    select(DataValue, DataCollectionSpec.name)
                    .join(DataCollectionSpec, DataCollectionSpec.id == DataValue.spec_id)
                    .where(DataValue.carrier_track_id.in_(carrier_track_ids))
                    .order_by(DataValue.id)
                )
            ).all()
        ]
    return {
        "carrierTracks": cts,
        "carrierLoads": [
            {"id": cl.id, "carrierNo": no, "loadedAt": iso(cl.loaded_at), "unloadedAt": iso(cl.unloaded_at)}
            for cl, no in loads
        ],
        "carrierDataValues": cvals,
    }


async def _defects(uow: UnitOfWork, unit: Unit) -> list[dict[str, Any]]:
    rows = (
        await uow.session.scalars(select(Defect).where(Defect.unit_id == unit.id).order_by(Defect.id))
    ).all()
    out = []
    for d in rows:
        disp = d.disposition
        task = disp.rework_task if disp else None
        out.append(
            {
                "id": d.id,
                "code": d.code,
                "location": d.location,
                "qty": d.qty,
                "status": d.status,
                "trackId": d.track_id,
                "createdAt": iso(d.created_at),
                "disposition": None
                if disp is None
                else {
                    "type": disp.type,
                    "reason": disp.reason,
                    "decidedBy": disp.decided_by,
                    "decidedAt": iso(disp.decided_at),
                    "reworkTask": None
                    if task is None
                    else {
                        "id": task.id,
                        "status": task.status,
                        "fromStepNo": task.from_step_no,
                        "toStepNo": task.to_step_no,
                        "doneAt": iso(task.done_at),
                        "doneBy": task.done_by,
                        "repairRecord": (task.meta or {}).get("repairRecordV1"),
                    },
                },
            }
        )
    return out


async def _inspections(uow: UnitOfWork, unit: Unit, run: Run | None) -> list[dict[str, Any]]:
    if run is None:
        return []
    s = uow.session
    rows = (
        await s.scalars(select(Inspection).where(Inspection.run_id == run.id).order_by(Inspection.id))
    ).all()
    counts: dict[tuple[int, str], int] = (
        {
            (i, r): n
            for i, r, n in (
                await s.execute(
                    select(InspectionItem.inspection_id, InspectionItem.result, func.count(InspectionItem.id))
                    .where(
                        InspectionItem.inspection_id.in_([r.id for r in rows]),
                        InspectionItem.unit_sn == unit.sn,
                    )
                    .group_by(InspectionItem.inspection_id, InspectionItem.result)
                )
            )
            .tuples()
            .all()
        }
        if rows
        else {}
    )
    return [
        {
            "id": i.id,
            "type": i.type,
            "status": i.status,
            "startedAt": iso(i.started_at),
            "inspectorId": i.inspector_id,
            "decidedAt": iso(i.decided_at),
            "decidedBy": i.decided_by,
            "remark": i.remark,
            "signedBy": i.signed_by,
            "signedAt": iso(i.signed_at),
            "unitItems": {
                "pass": counts.get((i.id, "PASS"), 0),
                "fail": counts.get((i.id, "FAIL"), 0),
                "na": counts.get((i.id, "NA"), 0),
            },
        }
        for i in rows
    ]


async def _loading(uow: UnitOfWork, run: Run | None, tracks: list[Track]) -> list[dict[str, Any]]:
    """Loading records of the run whose loaded period overlaps the unit's production window."""
    if run is None:
        return []
    start: datetime | None = min((t.in_at for t in tracks), default=None)
    # A unit still inside a station is still being built: its window has no end yet.
    still_inside = any(t.out_at is None for t in tracks)
    end: datetime | None = None if still_inside else max((t.out_at for t in tracks if t.out_at), default=None)
    stmt = (
        select(LoadingRecord, FeederSlot, MaterialLot.lot_no)
        .join(FeederSlot, FeederSlot.id == LoadingRecord.slot_id)
        .join(MaterialLot, MaterialLot.id == LoadingRecord.material_lot_id)
        .where(LoadingRecord.run_id == run.id, LoadingRecord.status.in_(("LOADED", "REPLACED")))
    )
    if end is not None:
        stmt = stmt.where(LoadingRecord.loaded_at <= end)
    if start is not None:
        stmt = stmt.where(or_(LoadingRecord.unloaded_at.is_(None), LoadingRecord.unloaded_at >= start))
    rows = (await uow.session.execute(stmt.order_by(LoadingRecord.loaded_at))).all()
    return [
        {
            "id": r.id,
            "slotCode": slot.slot_code,
            "slotName": slot.name,
            "position": slot.position,
            "materialCode": r.material_code,
            "lotNo": lot,
            "status": r.status,
            "verifyResult": r.verify_result,
            "loadedAt": iso(r.loaded_at),
            "loadedBy": r.loaded_by,
            "unloadedAt": iso(r.unloaded_at),
            "unloadedBy": r.unloaded_by,
        }
        for r, slot, lot in rows
    ]


async def _materials(uow: UnitOfWork, run: Run | None) -> list[dict[str, Any]]:
    """Lots loaded for the run (Ours: derived from loading, since the reference never wrote MaterialUse)."""
    if run is None:
        return []
    rows = (
        await uow.session.execute(
            select(FeederSlot.position, LoadingRecord.material_code, MaterialLot.lot_no)
            .join(FeederSlot, FeederSlot.id == LoadingRecord.slot_id)
            .join(MaterialLot, MaterialLot.id == LoadingRecord.material_lot_id)
            .where(LoadingRecord.run_id == run.id, LoadingRecord.status.in_(("LOADED", "REPLACED")))
            .order_by(FeederSlot.position, LoadingRecord.loaded_at)
        )
    ).all()
    return [{"position": p, "materialCode": m, "lotNo": lot, "isKeyPart": False} for p, m, lot in rows]


async def _readiness(uow: UnitOfWork, run: Run | None) -> dict[str, Any] | None:
    if run is None:
        return None
    check = await uow.session.scalar(
        select(ReadinessCheck)
        .where(ReadinessCheck.run_id == run.id, ReadinessCheck.type == "FORMAL")
        .order_by(ReadinessCheck.checked_at.desc(), ReadinessCheck.id.desc())
        .limit(1)
    )
    if check is None:
        return None
    return {
        "status": check.status,
        "checkedAt": iso(check.checked_at),
        "checkedBy": check.checked_by,
        "waivedItems": [
            {
                "itemType": i.item_type,
                "itemKey": i.item_key,
                "waivedAt": iso(i.waived_at),
                "waivedBy": i.waived_by,
                "waiveReason": i.waive_reason,
                "source": "WAIVE",
            }
            for i in check.items
            if i.status == "WAIVED"
        ],
    }


async def lot_units(uow: UnitOfWork, material_code: str, lot_no: str) -> dict[str, Any]:
    """Units built with a lot: the units of every run that loaded it (Ours; docs/decisions.md)."""
    if not material_code.strip() or not lot_no.strip():
        raise Rejected("TRACE_MATERIAL_LOT_INVALID", "Material code and lot number are required")
    s = uow.session
    lot = await s.scalar(
        select(MaterialLot).where(MaterialLot.material_code == material_code, MaterialLot.lot_no == lot_no)
    )
    if lot is None:
        raise NotFound("TRACE_MATERIAL_LOT_NOT_FOUND", f"Lot {material_code}/{lot_no} not found")
    runs = select(LoadingRecord.run_id).where(
        LoadingRecord.material_lot_id == lot.id, LoadingRecord.status.in_(("LOADED", "REPLACED"))
    )
    rows = (
        await s.execute(
            select(Unit.sn, Unit.status, Run.run_no)
            .join(Run, Run.id == Unit.run_id)
            .where(Unit.run_id.in_(runs))
            .order_by(Unit.sn)
        )
    ).all()
    return {
        "materialCode": material_code,
        "lotNo": lot_no,
        "units": [{"sn": sn, "status": st, "runNo": rn} for sn, st, rn in rows],
    }
