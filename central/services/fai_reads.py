"""First-article inspection reads (domain.md §7.1): lookup, trial progress, detail, trial summary, gate."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import (
    DataCollectionSpec,
    DataValue,
    Inspection,
    InspectionItem,
    InspectionResultRecord,
    Run,
    Station,
    Track,
    Unit,
)
from central.domain.clock import iso
from central.domain.errors import NotFound, Rejected
from central.domain.route import requires_fai
from central.schemas.fai import FaiQuery
from central.services import gates
from central.services.listing import paginate, split_csv
from central.services.runs import get_run, version_of
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

FAI_PERMS = ("quality:fai",)


async def get_fai(uow: UnitOfWork, fai_id: int, *, lock: bool = False) -> Inspection:
    """The inspection `fai_id`: 404 FAI_NOT_FOUND; another inspection type → NOT_FAI_INSPECTION."""
    fai = await uow.session.get(Inspection, fai_id, with_for_update=lock or None)
    if fai is None:
        raise NotFound("FAI_NOT_FOUND", f"FAI {fai_id} not found")
    if fai.type != "FAI":
        raise Rejected("NOT_FAI_INSPECTION", f"Inspection {fai_id} is a {fai.type} inspection, not an FAI")
    return fai


async def run_of(uow: UnitOfWork, fai: Inspection, *, lock: bool = False) -> Run:
    run = await uow.session.get(Run, fai.run_id, with_for_update=lock or None)
    assert run is not None
    return run


async def active_fai(uow: UnitOfWork, run: Run) -> Inspection | None:
    return await uow.session.scalar(select(Inspection).where(Inspection.active_key == f"{run.id}:FAI"))


async def trial_tracks(uow: UnitOfWork, run: Run, fai: Inspection) -> list[tuple[Track, str]]:
    """The FAI's trial tracks (meta.faiId, written by track-in) with their unit SN, oldest first."""
    if fai.started_at is None:
        return []
    stmt = (
        select(Track, Unit.sn)
        .join(Unit, Unit.id == Track.unit_id)
        .where(Unit.run_id == run.id, Track.in_at >= fai.started_at)
        .order_by(Track.in_at, Track.id)
    )
    if fai.decided_at is not None:
        stmt = stmt.where(Track.in_at <= fai.decided_at)
    rows = (await uow.session.execute(stmt)).tuples().all()
    return [(t, sn) for t, sn in rows if (t.meta or {}).get("faiId") == fai.id]


async def trial_progress(uow: UnitOfWork, run: Run, fai: Inspection) -> tuple[int, int]:
    """(distinct units tracked in the trial, distinct units with a closed trial track)."""
    tracks = await trial_tracks(uow, run, fai)
    return len({t.unit_id for t, _ in tracks}), len({t.unit_id for t, _ in tracks if t.out_at is not None})


async def require_trial_done(uow: UnitOfWork, run: Run, fai: Inspection) -> None:
    tracked, closed = await trial_progress(uow, run, fai)
    if tracked == 0:
        raise Rejected(
            "FAI_TRIAL_NOT_STARTED", f"No unit of run {run.run_no} has been tracked in the FAI trial yet"
        )
    if closed < fai.sample_qty:
        raise Rejected(
            "FAI_TRIAL_REQUIRED",
            f"The FAI trial finished {closed} of {fai.sample_qty} sample units",
            details={"sampleQty": fai.sample_qty, "trackedQty": tracked, "finishedQty": closed},
        )


def item_out(item: InspectionItem) -> dict[str, Any]:
    meta = item.meta or {}
    return {
        "id": item.id,
        "item_id": item.id,
        "fai_id": item.inspection_id,
        "unit_sn": item.unit_sn,
        "item_name": item.item_name,
        "item_spec": item.item_spec,
        "actual_value": item.actual_value,
        "result": item.result,
        "defect_code": item.defect_code,
        "remark": item.remark,
        "template_item_id": meta.get("templateItemId"),
        "seq": meta.get("seq"),
        "required": meta.get("required"),
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }


def item_view(item: InspectionItem) -> dict[str, Any]:
    """Audit before/after of an item (wire names, JSON-safe)."""
    return {
        "unitSn": item.unit_sn,
        "itemName": item.item_name,
        "itemSpec": item.item_spec,
        "actualValue": item.actual_value,
        "result": item.result,
        "defectCode": item.defect_code,
        "remark": item.remark,
    }


def fai_view(fai: Inspection) -> dict[str, Any]:
    """Audit before/after of an FAI (wire names, JSON-safe)."""
    return {
        "status": fai.status,
        "sampleQty": fai.sample_qty,
        "passedQty": fai.passed_qty,
        "failedQty": fai.failed_qty,
        "inspectorId": fai.inspector_id,
        "startedAt": iso(fai.started_at),
        "decidedBy": fai.decided_by,
        "decidedAt": iso(fai.decided_at),
        "signedBy": fai.signed_by,
        "signedAt": iso(fai.signed_at),
        "activeKey": fai.active_key,
    }


def fai_fields(fai: Inspection, run: Run) -> dict[str, Any]:
    return {
        **{
            c: getattr(fai, c)
            for c in (
                "id",
                "type",
                "status",
                "sample_qty",
                "passed_qty",
                "failed_qty",
                "inspector_id",
                "started_at",
                "decided_by",
                "decided_at",
                "remark",
                "signed_by",
                "signed_at",
                "signature_remark",
                "created_at",
                "updated_at",
            )
        },
        "run_no": run.run_no,
        "run_status": run.status,
        "fai_template": (fai.data or {}).get("faiTemplate"),
    }


async def items_of(uow: UnitOfWork, fai: Inspection) -> list[InspectionItem]:
    return list(
        (
            await uow.session.scalars(
                select(InspectionItem)
                .where(InspectionItem.inspection_id == fai.id)
                .order_by(InspectionItem.id)
            )
        ).all()
    )


async def detail(uow: UnitOfWork, fai: Inspection, run: Run | None = None) -> dict[str, Any]:
    run = run or await run_of(uow, fai)
    return {
        **fai_fields(fai, run),
        "items": [item_out(i) for i in await items_of(uow, fai)],
        "trial_summary": await trial_summary(uow, run, fai),
    }


async def trial_summary(uow: UnitOfWork, run: Run, fai: Inspection) -> dict[str, Any]:
    s = uow.session
    tracks = await trial_tracks(uow, run, fai)
    track_ids = [t.id for t, _ in tracks]
    stations = dict(
        (
            await s.execute(
                select(Station.id, Station.code).where(Station.id.in_({t.station_id for t, _ in tracks}))
            )
        )
        .tuples()
        .all()
        if tracks
        else []
    )
    values: dict[int, list[dict[str, Any]]] = {}
    if track_ids:
        rows = await s.execute(
            select(DataValue, DataCollectionSpec.name)
            .join(DataCollectionSpec, DataCollectionSpec.id == DataValue.spec_id)
            .where(DataValue.track_id.in_(track_ids))
            .order_by(DataValue.id)
        )
        for dv, name in rows.tuples():
            value = next(
                (
                    v
                    for v in (dv.value_number, dv.value_text, dv.value_boolean, dv.value_json)
                    if v is not None
                ),
                None,
            )
            values.setdefault(dv.track_id or 0, []).append(
                {
                    "name": name,
                    "value": value,
                    "valueNumber": dv.value_number,
                    "valueText": dv.value_text,
                    "valueBoolean": dv.value_boolean,
                    "valueJson": dv.value_json,
                    "judge": dv.judge,
                    "source": dv.source,
                }
            )
    sns = list(dict.fromkeys(sn for _, sn in tracks))
    inspections: dict[str, list[dict[str, Any]]] = {}
    if sns:
        recs = await s.scalars(
            select(InspectionResultRecord)
            .where(InspectionResultRecord.run_no == run.run_no, InspectionResultRecord.unit_sn.in_(sns))
            .order_by(InspectionResultRecord.event_time, InspectionResultRecord.id)
        )
        for r in recs:
            inspections.setdefault(r.unit_sn, []).append(
                {
                    "id": r.id,
                    "eventId": r.event_id,
                    "inspectionType": r.inspection_type,
                    "result": r.result,
                    "stationCode": r.station_code,
                    "stepNo": r.step_no,
                    "trackId": r.track_id,
                    "defects": r.defects,
                    "source": r.source,
                    "eventTime": iso(r.event_time),
                }
            )
    units = [
        {
            "sn": sn,
            "trackOuts": [
                {
                    "trackId": t.id,
                    "stepNo": t.step_no,
                    "stationCode": stations.get(t.station_id),
                    "result": t.result,
                    "inAt": iso(t.in_at),
                    "outAt": iso(t.out_at),
                    "operatorId": t.operator_id,
                    "dataValues": values.get(t.id, []),
                }
                for t, unit_sn in tracks
                if unit_sn == sn and t.out_at is not None
            ],
            "inspections": inspections.get(sn, []),
        }
        for sn in sns
    ]
    closed = {sn for t, sn in tracks if t.out_at is not None}
    return {
        "sampleQty": fai.sample_qty,
        "trackedQty": len(sns),
        "finishedQty": len(closed),
        "done": len(closed) >= fai.sample_qty,
        "units": units,
    }


async def list_fai(uow: UnitOfWork, q: FaiQuery) -> dict[str, Any]:
    stmt = select(Inspection, Run).join(Run, Run.id == Inspection.run_id).where(Inspection.type == "FAI")
    if runs := split_csv(q.run_no):
        stmt = stmt.where(Run.run_no.in_(runs))
    if statuses := split_csv(q.status):
        stmt = stmt.where(Inspection.status.in_(statuses))
    lines = await scoped_line_ids(uow, FAI_PERMS)
    if lines is not None:
        stmt = stmt.where(Run.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        scalars=False,
        search=[Run.run_no],
        sort_fields={
            "createdAt": Inspection.created_at,
            "status": Inspection.status,
            "startedAt": Inspection.started_at,
            "decidedAt": Inspection.decided_at,
            "run.runNo": Run.run_no,
        },
    )
    page["items"] = [fai_fields(fai, run) for fai, run in page["items"]]
    return page


async def get_detail(uow: UnitOfWork, fai_id: int) -> dict[str, Any]:
    return await detail(uow, await get_fai(uow, fai_id))


async def latest_for_run(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    run = await get_run(uow, run_no)
    fai = await gates.latest_fai(uow, run)
    if fai is None:
        raise NotFound("FAI_NOT_FOUND", f"Run {run_no} has no FAI")
    return await detail(uow, fai, run)


async def gate(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    """What the authorization FAI gate sees: the frozen snapshot's requirement and the latest FAI."""
    run = await get_run(uow, run_no)
    version = await version_of(uow, run)
    fai = await gates.latest_fai(uow, run)
    return {
        "requires_fai": requires_fai(version.snapshot_json if version else None),
        "fai_passed": fai is not None and fai.status == "PASS",
        "fai_signed": fai is not None and fai.status == "PASS" and fai.signed_at is not None,
        "fai_waived": gates.fai_waived(run),
        "fai_id": fai.id if fai else None,
        "fai_status": fai.status if fai else None,
    }
