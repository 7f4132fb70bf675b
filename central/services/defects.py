"""Defects and their dispositions (domain.md §3 Defect/Disposition/Rework, §7.6): list, read, manual record,
disposition REWORK | SCRAP | HOLD, hold release. Rework tasks themselves live in services/rework.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import (
    Defect,
    Disposition,
    ExecutableRouteVersion,
    Operation,
    ReworkTask,
    Run,
    Station,
    Track,
    Unit,
    WorkOrder,
)
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import NotFound, Rejected
from central.domain.states import DEFECT, UNIT
from central.schemas.defects import DefectCreate, DefectQuery, DispositionCreate, ReleaseBody
from central.services import closeout, rework
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

PERMS = rework.PERMS
# Ours ([DRIFT]): a disposition needs a failed or held unit.
DISPOSABLE_UNIT_STATES = ("OUT_FAILED", "ON_HOLD")


# ---------------------------------------------------------------- loading


async def get_defect(uow: UnitOfWork, defect_id: int, *, lock: bool = False) -> Defect:
    stmt = select(Defect).where(Defect.id == defect_id)
    if lock:
        stmt = stmt.with_for_update()
    defect = await uow.session.scalar(stmt)
    if defect is None:
        raise NotFound("DEFECT_NOT_FOUND", f"Defect {defect_id} not found")
    return defect


async def _unit(uow: UnitOfWork, unit_id: int, *, lock: bool = False) -> Unit:
    stmt = select(Unit).where(Unit.id == unit_id)
    if lock:  # serialises with track-in/out of the same unit
        stmt = stmt.with_for_update()
    unit = await uow.session.scalar(stmt)
    assert unit is not None  # defects.unit_id is a RESTRICT foreign key
    return unit


async def _check_scope(uow: UnitOfWork, defect: Defect) -> None:
    """Line-scoped callers only see defects of their lines (404, like runs)."""
    lines = await scoped_line_ids(uow, PERMS)
    if lines is None:
        return
    line_id = await uow.session.scalar(
        select(Run.line_id).join(Unit, Unit.run_id == Run.id).where(Unit.id == defect.unit_id)
    )
    if line_id not in lines:
        raise NotFound("DEFECT_NOT_FOUND", f"Defect {defect.id} not found")


# ---------------------------------------------------------------- output


async def _failure_steps(uow: UnitOfWork, defects: list[Defect], units: dict[int, Any]) -> dict[int, Any]:
    """trackId → {stepNo, operationCode/Name (frozen snapshot of the unit's run), stationCode/Name}."""
    s = uow.session
    track_ids = {d.track_id for d in defects if d.track_id is not None}
    if not track_ids:
        return {}
    tracks = (
        await s.execute(
            select(Track.id, Track.unit_id, Track.step_no, Station.code, Station.name)
            .join(Station, Station.id == Track.station_id)
            .where(Track.id.in_(track_ids))
        )
    ).all()
    version_ids = {u.route_version_id for u in units.values() if u.route_version_id is not None}
    snapshots = dict(
        (
            await s.execute(
                select(ExecutableRouteVersion.id, ExecutableRouteVersion.snapshot_json).where(
                    ExecutableRouteVersion.id.in_(version_ids)
                )
            )
        ).all()
        if version_ids
        else []
    )
    op_of: dict[int, int | None] = {}
    for tid, unit_id, step_no, _, _ in tracks:
        step = route.step(snapshots.get(units[unit_id].route_version_id), step_no)
        op_of[tid] = int(step["operationId"]) if step and step.get("operationId") is not None else None
    op_ids = {o for o in op_of.values() if o is not None}
    ops = {
        oid: (code, name)
        for oid, code, name in (
            await s.execute(
                select(Operation.id, Operation.code, Operation.name).where(Operation.id.in_(op_ids))
            )
        ).all()
    }
    out: dict[int, Any] = {}
    for tid, _, step_no, st_code, st_name in tracks:
        op_code, op_name = ops.get(op_of[tid] or -1, (None, None))
        out[tid] = {
            "step_no": step_no,
            "operation_code": op_code,
            "operation_name": op_name,
            "station_code": st_code,
            "station_name": st_name,
        }
    return out


async def defect_outs(uow: UnitOfWork, defects: list[Defect]) -> list[dict[str, Any]]:
    """Defects with unit/run/WO, failure step, disposition and rework task (a few batched queries)."""
    if not defects:
        return []
    s = uow.session
    unit_rows = (
        await s.execute(
            select(Unit.id, Unit.sn, Unit.status, Run.run_no, Run.route_version_id, WorkOrder.wo_no)
            .outerjoin(Run, Run.id == Unit.run_id)
            .join(WorkOrder, WorkOrder.id == Unit.wo_id)
            .where(Unit.id.in_({d.unit_id for d in defects}))
        )
    ).all()
    units = {row.id: row for row in unit_rows}
    steps = await _failure_steps(uow, defects, units)
    ids = [d.id for d in defects]
    disps = {
        d.defect_id: d for d in await s.scalars(select(Disposition).where(Disposition.defect_id.in_(ids)))
    }
    tasks = {
        t.disposition_id: t
        for t in await s.scalars(
            select(ReworkTask).where(ReworkTask.disposition_id.in_([d.id for d in disps.values()]))
        )
    }
    out = []
    for d in defects:
        u = units[d.unit_id]
        disp = disps.get(d.id)
        task = tasks.get(disp.id) if disp else None
        meta = d.meta or {}
        out.append(
            {
                "id": d.id,
                "unit_sn": u.sn,
                "unit_status": u.status,
                "run_no": u.run_no,
                "wo_no": u.wo_no,
                "track_id": d.track_id,
                "code": d.code,
                "location": d.location,
                "qty": d.qty,
                "status": d.status,
                "remark": meta.get("remark"),
                "recorded_by": d.recorded_by,
                "failure_step": steps.get(d.track_id) if d.track_id is not None else None,
                "disposition": None
                if disp is None
                else {
                    "id": disp.id,
                    "type": disp.type,
                    "reason": disp.reason,
                    "decided_by": disp.decided_by,
                    "decided_at": disp.decided_at,
                    "rework_task": rework.task_brief(task) if task else None,
                },
                "released_by": meta.get("releasedBy"),
                "release_reason": meta.get("releaseReason"),
                "released_at": meta.get("releasedAt"),
                "created_at": d.created_at,
                "updated_at": d.updated_at,
            }
        )
    return out


async def _one(uow: UnitOfWork, defect: Defect) -> dict[str, Any]:
    return (await defect_outs(uow, [defect]))[0]


# ---------------------------------------------------------------- reads


async def list_defects(uow: UnitOfWork, q: DefectQuery) -> dict[str, Any]:
    stmt = select(Defect).join(Unit, Unit.id == Defect.unit_id).outerjoin(Run, Run.id == Unit.run_id)
    if q.unit_sn:
        stmt = stmt.where(Unit.sn == q.unit_sn)
    if q.run_no:
        stmt = stmt.where(Run.run_no == q.run_no)
    if statuses := split_csv(q.status):
        stmt = stmt.where(Defect.status.in_(statuses))
    if codes := split_csv(q.code):
        stmt = stmt.where(Defect.code.in_(codes))
    lines = await scoped_line_ids(uow, PERMS)
    if lines is not None:
        stmt = stmt.where(Run.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        search=[Defect.code, Unit.sn, Defect.location],
        sort_fields={
            "createdAt": Defect.created_at,
            "updatedAt": Defect.updated_at,
            "code": Defect.code,
            "status": Defect.status,
            "unit.sn": Unit.sn,
        },
    )
    page["items"] = await defect_outs(uow, page["items"])
    return page


async def defect_detail(uow: UnitOfWork, defect_id: int) -> dict[str, Any]:
    defect = await get_defect(uow, defect_id)
    await _check_scope(uow, defect)
    return await _one(uow, defect)


# ---------------------------------------------------------------- writes


async def create_defect(uow: UnitOfWork, body: DefectCreate) -> dict[str, Any]:
    """A defect recorded by hand; its failure step is the unit's latest track, if any."""
    s = uow.session
    unit = await s.scalar(select(Unit).where(Unit.sn == body.unit_sn))
    if unit is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {body.unit_sn} not found")
    track_id = await s.scalar(
        select(Track.id)
        .where(Track.unit_id == unit.id)
        .order_by(Track.in_at.desc(), Track.id.desc())
        .limit(1)
    )
    meta: dict[str, Any] = {"source": "MANUAL"}
    if body.remark:
        meta["remark"] = body.remark
    defect = Defect(
        unit_id=unit.id,
        track_id=track_id,
        code=body.code,
        location=body.location,
        qty=body.qty,
        status="RECORDED",
        recorded_by=uow.actor.name,
        meta=meta,
    )
    s.add(defect)
    await s.flush()
    uow.audit(
        defect.id,
        f"{defect.code} {unit.sn}",
        entity_type="DEFECT",
        action="DEFECT_CREATE",
        after={
            "unitSn": unit.sn,
            "code": defect.code,
            "location": defect.location,
            "qty": defect.qty,
            "status": defect.status,
            "trackId": track_id,
        },
    )
    return await _one(uow, defect)


def _state(defect: Defect, unit: Unit) -> dict[str, Any]:
    return {"defectStatus": defect.status, "unitStatus": unit.status, "unitStepNo": unit.current_step_no}


async def decide(uow: UnitOfWork, defect_id: int, body: DispositionCreate) -> dict[str, Any]:
    """The one disposition of a defect. REWORK → OPEN task, unit QUEUED at toStepNo; SCRAP → unit SCRAPPED,
    defect CLOSED, run close-out; HOLD → unit ON_HOLD."""
    s = uow.session
    defect = await get_defect(uow, defect_id, lock=True)
    if defect.disposition is not None:
        raise Rejected("ALREADY_DISPOSITIONED", f"Defect {defect_id} already has a disposition")
    DEFECT.target(defect.status, "disposition")  # ALREADY_DISPOSITIONED for any non-RECORDED defect
    unit = await _unit(uow, defect.unit_id, lock=True)
    if unit.status not in DISPOSABLE_UNIT_STATES:
        raise Rejected(
            "UNIT_NOT_FAILED",
            f"Unit {unit.sn} is {unit.status}; a disposition needs it OUT_FAILED or ON_HOLD",
        )
    before = _state(defect, unit)
    now = utcnow()
    disp = Disposition(
        defect_id=defect.id,
        type=body.type,
        reason=body.reason,
        decided_by=uow.actor.name,
        decided_at=now,
        meta={},
    )
    task: ReworkTask | None = None
    side: dict[str, Any] = {}
    if body.type == "REWORK":
        target = await rework.rework_target(uow, unit, body.to_step_no)
        task = ReworkTask(
            unit_id=unit.id, from_step_no=unit.current_step_no, to_step_no=target, status="OPEN", meta={}
        )
        DEFECT.apply(defect, "disposition")
        UNIT.apply(unit, "rework")
        unit.current_step_no = target
    elif body.type == "SCRAP":
        DEFECT.apply(defect, "scrap")
        UNIT.apply(unit, "scrap")
        side["cancelledReworkTaskIds"] = await rework.cancel_open_tasks(
            uow, unit, f"unit scrapped (defect {defect.id})"
        )
    else:  # HOLD; a unit already held by another defect stays held
        DEFECT.apply(defect, "disposition")
        if unit.status != "ON_HOLD":
            UNIT.apply(unit, "hold")
    if before["unitStatus"] == "ON_HOLD" and unit.status != "ON_HOLD":
        side["supersededHoldDefectIds"] = await _supersede_holds(uow, unit, defect, body.type)
    s.add(disp)
    await s.flush()
    if task is not None:
        task.disposition_id = disp.id
        s.add(task)
        await s.flush()
    uow.audit(
        disp.id,
        f"{body.type} {defect.code} {unit.sn}",
        entity_type="DISPOSITION",
        action=f"DISPOSITION_{body.type}",
        before=before,
        after={
            **_state(defect, unit),
            "defectId": defect.id,
            "type": body.type,
            "reason": body.reason,
            **(
                {"reworkTaskId": task.id, "fromStepNo": task.from_step_no, "toStepNo": task.to_step_no}
                if task
                else {}
            ),
            **{k: v for k, v in side.items() if v},
        },
    )
    if unit.status == "SCRAPPED" and unit.run_id is not None:
        run = await s.get(Run, unit.run_id)
        assert run is not None
        await closeout.after_units_changed(uow, run)  # the last open unit scrapped may complete the run / OQC
    return await _one(uow, defect)


async def _open_holds(uow: UnitOfWork, unit: Unit, but: Defect) -> list[Defect]:
    """The unit's other defects whose HOLD disposition is not released yet."""
    return list(
        await uow.session.scalars(
            select(Defect)
            .join(Disposition, Disposition.defect_id == Defect.id)
            .where(
                Defect.unit_id == unit.id,
                Defect.id != but.id,
                Defect.status == "DISPOSITIONED",
                Disposition.type == "HOLD",
            )
        )
    )


def _mark_released(uow: UnitOfWork, defect: Defect, reason: str) -> None:
    DEFECT.apply(defect, "close")
    defect.meta = {
        **(defect.meta or {}),
        "releasedBy": uow.actor.name,
        "releaseReason": reason,
        "releasedAt": iso(utcnow()),
    }


async def _supersede_holds(uow: UnitOfWork, unit: Unit, by: Defect, kind: str) -> list[int]:
    """A held unit that leaves ON_HOLD through another disposition releases its open HOLD defects."""
    held = await _open_holds(uow, unit, by)
    for d in held:
        _mark_released(uow, d, f"superseded by the {kind} disposition of defect {by.id}")
    return [d.id for d in held]


async def release(uow: UnitOfWork, defect_id: int, body: ReleaseBody) -> dict[str, Any]:
    """Release a HOLD: unit ON_HOLD → QUEUED (at its current step), defect CLOSED with the release in meta.
    Ours: while another HOLD of the unit is still open the unit stays ON_HOLD."""
    defect = await get_defect(uow, defect_id, lock=True)
    disp = defect.disposition
    if disp is None or disp.type != "HOLD":
        raise Rejected("NOT_HOLD_DISPOSITION", f"Defect {defect_id} has no HOLD disposition")
    unit = await _unit(uow, defect.unit_id, lock=True)
    UNIT.target(unit.status, "release")  # UNIT_NOT_HELD
    DEFECT.target(defect.status, "close")
    before = _state(defect, unit)
    _mark_released(uow, defect, body.reason)
    if not await _open_holds(uow, unit, defect):
        UNIT.apply(unit, "release")
    uow.audit(
        defect.id,
        f"{defect.code} {unit.sn}",
        entity_type="DEFECT",
        action="DEFECT_RELEASE",
        before=before,
        after={**_state(defect, unit), "releaseReason": body.reason},
    )
    return await _one(uow, defect)
