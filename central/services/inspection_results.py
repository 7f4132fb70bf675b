"""SPI/AOI inspection results (domain.md §4.4): pushed by the machines (AUTO) or keyed in (MANUAL).

A result is linked to the unit's track at (stepNo, station); a FAIL on that track forces its track-out to FAIL
(services/execution.py), and any FAIL of a run blocks that run's FAI PASS (services/fai.py, by runNo). A FAIL
records one RECORDED Defect per reported defect, on the linked track when there is one. Results are accepted
whatever the run's status: a buffered edge delivers late, and the FAI trial of a PREP run is exactly when an
SPI failure must be on record.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import Defect, InspectionResultRecord, Station, Track, Unit
from central.domain.clock import iso, utcnow
from central.domain.errors import Rejected
from central.schemas.device_inputs import InspectionResultIn, InspectionResultQuery
from central.services import device_inputs as ctx
from central.services.exec_guards import station_fits
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

PERMS = ctx.PERMS
ACTION = "INSPECTION_RESULT_RECEIVE"
ENTITY = "INSPECTION_RESULT"


async def receive_inspection_result(uow: UnitOfWork, body: InspectionResultIn) -> dict[str, Any]:
    """Store one SPI/AOI result; a replayed eventId returns the original (isDuplicate) with no new effect."""
    original = await ctx.by_event_id(uow, InspectionResultRecord, body.event_id)
    if original is None:
        ctx.require_operator(body.source, body.operator_id)
        if body.result == "FAIL" and not body.defects:
            raise Rejected("DEFECTS_REQUIRED", "A FAIL result needs the defects the machine found")
        run = await ctx.find_run(uow, body.run_no)
        unit = await ctx.find_unit(uow, body.unit_sn, run)
        station = await ctx.find_station(uow, body.station_code)
        if station.line_id != run.line_id:
            raise Rejected(
                "STATION_LINE_MISMATCH", f"Station {station.code} is not on the line of run {run.run_no}"
            )
        step = await ctx.snapshot_step(uow, run, body.step_no)
        station_fits(station, step)
        track_id = await _track_id(uow, body, unit, station)
        row = InspectionResultRecord(
            event_id=body.event_id,
            event_time=body.event_time,
            run_id=run.id,
            run_no=run.run_no,
            station_code=station.code,
            unit_sn=unit.sn,
            step_no=body.step_no,
            inspection_type=body.inspection_type,
            result=body.result,
            defects=[d.model_dump(mode="json", by_alias=True, exclude_none=True) for d in body.defects or []],
            raw_data=body.raw_data,
            source=body.source,
            equipment_id=body.equipment_id,
            operator_id=body.operator_id,
            track_id=track_id,
            defect_ids=[],
            received_at=utcnow(),
            meta=body.meta or {},
        )
        if await ctx.insert_once(uow, row):
            if row.result == "FAIL":
                row.defect_ids = await _record_defects(uow, body, row, unit)
            _log(uow, body, row, "SUCCESS")
            uow.audit(
                row.id,
                f"{row.inspection_type} {row.unit_sn}",
                entity_type="INTEGRATION",
                action=ACTION,
                station_id=station.id,
                after={
                    "eventId": row.event_id,
                    "result": row.result,
                    "trackId": row.track_id,
                    "defectIds": row.defect_ids,
                },
            )
            return receipt(row, duplicate=False)
        original = await ctx.by_event_id(uow, InspectionResultRecord, body.event_id)
        assert original is not None  # insert_once saw it
    _log(uow, body, original, "DUPLICATE")
    uow.audit(
        original.id,
        f"{original.inspection_type} {original.unit_sn}",
        entity_type="INTEGRATION",
        action=ACTION,
        payload={"eventId": body.event_id, "isDuplicate": True},
    )
    return receipt(original, duplicate=True)


async def _track_id(uow: UnitOfWork, body: InspectionResultIn, unit: Unit, station: Station) -> int | None:
    """The given track, which must be this unit's at this step and station; else the latest such track."""
    s = uow.session
    if body.track_id is not None:
        track = await s.get(Track, body.track_id)
        # Linking a foreign track would force another unit's track-out to FAIL: refused, not ignored.
        if track is None or (track.unit_id, track.step_no, track.station_id) != (
            unit.id,
            body.step_no,
            station.id,
        ):
            raise Rejected(
                "TRACK_NOT_FOUND",
                f"Unit {unit.sn} has no track {body.track_id} at step {body.step_no} on {station.code}",
            )
        return track.id
    found: int | None = await s.scalar(
        select(Track.id)
        .where(Track.unit_id == unit.id, Track.step_no == body.step_no, Track.station_id == station.id)
        .order_by(Track.in_at.desc(), Track.id.desc())
        .limit(1)
    )
    return found


async def _record_defects(
    uow: UnitOfWork, body: InspectionResultIn, row: InspectionResultRecord, unit: Unit
) -> list[int]:
    """One RECORDED Defect per reported defect; qty is the machine's count at that location (default 1)."""
    defects = [
        Defect(
            unit_id=unit.id,
            track_id=row.track_id,
            code=d.code,
            location=d.location,
            qty=d.qty or 1,
            status="RECORDED",
            recorded_by=body.operator_id or body.equipment_id or uow.actor.name,
            meta={
                **({"remark": d.description} if d.description else {}),
                "inspectionType": row.inspection_type,
                "inspectionResultId": row.id,
                "eventId": row.event_id,
            },
        )
        for d in body.defects or []
    ]
    uow.session.add_all(defects)
    await uow.session.flush()
    return [d.id for d in defects]


def _log(uow: UnitOfWork, body: InspectionResultIn, row: InspectionResultRecord, status: str) -> None:
    meta: dict[str, Any] = {"recordId": row.id, "source": body.source}
    if status == "DUPLICATE":  # a resend whose content differs is worth a look
        meta["payloadDiffers"] = (
            row.run_no,
            row.unit_sn,
            row.station_code,
            row.step_no,
            row.inspection_type,
            row.result,
            iso(row.event_time),
        ) != (
            body.run_no,
            body.unit_sn,
            body.station_code,
            body.step_no,
            body.inspection_type,
            body.result,
            iso(body.event_time),
        )
    ctx.log_message(
        uow,
        entity_type=ENTITY,
        dedupe_prefix="inspection-result",
        event_id=body.event_id,
        business_key=body.unit_sn,
        body=body,
        status=status,
        meta=meta,
    )


def receipt(row: InspectionResultRecord, *, duplicate: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "event_time": row.event_time,
        "run_no": row.run_no,
        "station_code": row.station_code,
        "unit_sn": row.unit_sn,
        "step_no": row.step_no,
        "inspection_type": row.inspection_type,
        "result": row.result,
        "source": row.source,
        "track_id": row.track_id,
        "defects_created": len(row.defect_ids or []),
        "defect_ids": list(row.defect_ids or []),
        "received_at": row.received_at,
        "is_duplicate": duplicate,
    }


async def list_inspection_results(uow: UnitOfWork, q: InspectionResultQuery) -> dict[str, Any]:
    stmt = select(InspectionResultRecord)
    m = InspectionResultRecord
    for column, value in (
        (m.run_no, q.run_no),
        (m.unit_sn, q.unit_sn),
        (m.station_code, q.station_code),
        (m.inspection_type, q.inspection_type),
        (m.result, q.result),
    ):
        if values := split_csv(value):
            stmt = stmt.where(column.in_(values))
    if q.event_from is not None:
        stmt = stmt.where(m.event_time >= q.event_from)
    if q.event_to is not None:
        stmt = stmt.where(m.event_time <= q.event_to)
    return await paginate(
        uow.session,
        stmt,
        q,
        search=[m.event_id, m.run_no, m.unit_sn, m.station_code],
        sort_fields={
            "createdAt": m.created_at,
            "eventTime": m.event_time,
            "receivedAt": m.received_at,
            "runNo": m.run_no,
            "unitSn": m.unit_sn,
            "stepNo": m.step_no,
        },
    )
