"""Rework tasks (domain.md §3 Defect/Disposition/Rework, §7.6): list, repair record, manual completion.
Tasks are created by a REWORK disposition (services/defects.py) and also completed automatically by a PASS
track-out at or after their failure step (services/execution.py `close_rework_tasks`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import Defect, Disposition, ExecutableRouteVersion, ReworkTask, Run, Unit
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import NotFound, Rejected
from central.domain.states import DEFECT, REWORK_TASK
from central.schemas.defects import RepairRecordBody, ReworkCompleteBody, ReworkTaskQuery
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

PERMS = ("quality:disposition",)


async def unit_snapshot(uow: UnitOfWork, unit: Unit) -> dict[str, Any] | None:
    """The frozen route snapshot of the unit's run (None without a run or version)."""
    if unit.run_id is None:
        return None
    return await uow.session.scalar(
        select(ExecutableRouteVersion.snapshot_json)
        .join(Run, Run.route_version_id == ExecutableRouteVersion.id)
        .where(Run.id == unit.run_id)
    )


def task_brief(task: ReworkTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "status": task.status,
        "from_step_no": task.from_step_no,
        "to_step_no": task.to_step_no,
        "done_by": task.done_by,
        "done_at": task.done_at,
        "repair_record": (task.meta or {}).get("repairRecordV1"),
    }


async def rework_target(uow: UnitOfWork, unit: Unit, to_step_no: int | None) -> int:
    """Ours ([DRIFT]): toStepNo must be a stepNo of the frozen snapshot and ≤ the failure step (the unit's
    current step, unchanged by the FAIL); default = the first step."""
    nos = [int(st["stepNo"]) for st in route.steps(await unit_snapshot(uow, unit))]
    target = to_step_no if to_step_no is not None else (nos[0] if nos else None)
    if target is None or target not in nos or target > unit.current_step_no:
        raise Rejected(
            "REWORK_STEP_INVALID",
            f"Rework step {target} must be one of the run's steps {nos} and ≤ the failure step "
            f"{unit.current_step_no}",
            details={"toStepNo": target, "fromStepNo": unit.current_step_no, "stepNos": nos},
        )
    return target


async def cancel_open_tasks(uow: UnitOfWork, unit: Unit, reason: str) -> list[int]:
    """A scrapped unit will not come back: its OPEN rework tasks are CANCELLED and their defects CLOSED."""
    tasks = list(
        await uow.session.scalars(
            select(ReworkTask).where(ReworkTask.unit_id == unit.id, ReworkTask.status == "OPEN")
        )
    )
    now = utcnow()
    for task in tasks:
        REWORK_TASK.apply(task, "cancel")
        task.meta = {
            **(task.meta or {}),
            "cancelReason": reason,
            "cancelledBy": uow.actor.name,
            "cancelledAt": iso(now),
        }
        await close_task_defect(uow, task)
    return [t.id for t in tasks]


async def close_task_defect(uow: UnitOfWork, task: ReworkTask) -> Defect | None:
    """Closes the defect behind a finished rework task (DISPOSITIONED → CLOSED)."""
    defect = await uow.session.scalar(
        select(Defect)
        .join(Disposition, Disposition.defect_id == Defect.id)
        .where(Disposition.id == task.disposition_id)
    )
    if defect is not None and DEFECT.allows(defect.status, "close"):
        DEFECT.apply(defect, "close")
    return defect


async def get_task(uow: UnitOfWork, task_id: int, *, lock: bool = False) -> ReworkTask:
    stmt = select(ReworkTask).where(ReworkTask.id == task_id)
    if lock:
        stmt = stmt.with_for_update()
    task = await uow.session.scalar(stmt)
    if task is None:
        raise NotFound("REWORK_TASK_NOT_FOUND", f"Rework task {task_id} not found")
    return task


async def task_outs(uow: UnitOfWork, tasks: list[ReworkTask]) -> list[dict[str, Any]]:
    if not tasks:
        return []
    rows = (
        await uow.session.execute(
            select(
                ReworkTask.id,
                Defect.id.label("defect_id"),
                Defect.code,
                Defect.status.label("defect_status"),
                Unit.sn,
                Unit.status.label("unit_status"),
                Unit.current_step_no,
                Run.run_no,
            )
            .join(Disposition, Disposition.id == ReworkTask.disposition_id)
            .join(Defect, Defect.id == Disposition.defect_id)
            .join(Unit, Unit.id == ReworkTask.unit_id)
            .outerjoin(Run, Run.id == Unit.run_id)
            .where(ReworkTask.id.in_([t.id for t in tasks]))
        )
    ).all()
    ctx = {r.id: r for r in rows}
    out = []
    for t in tasks:
        r = ctx[t.id]
        meta = t.meta or {}
        out.append(
            {
                **task_brief(t),
                "defect_id": r.defect_id,
                "defect_code": r.code,
                "defect_status": r.defect_status,
                "disposition_id": t.disposition_id,
                "unit_sn": r.sn,
                "unit_status": r.unit_status,
                "unit_current_step_no": r.current_step_no,
                "run_no": r.run_no,
                "complete_remark": meta.get("completeRemark"),
                "cancel_reason": meta.get("cancelReason"),
                "created_at": t.created_at,
            }
        )
    return out


async def _one(uow: UnitOfWork, task: ReworkTask) -> dict[str, Any]:
    return (await task_outs(uow, [task]))[0]


async def list_tasks(uow: UnitOfWork, q: ReworkTaskQuery) -> dict[str, Any]:
    stmt = select(ReworkTask).join(Unit, Unit.id == ReworkTask.unit_id).outerjoin(Run, Run.id == Unit.run_id)
    if q.unit_sn:
        stmt = stmt.where(Unit.sn == q.unit_sn)
    if q.run_no:
        stmt = stmt.where(Run.run_no == q.run_no)
    if statuses := split_csv(q.status):
        stmt = stmt.where(ReworkTask.status.in_(statuses))
    lines = await scoped_line_ids(uow, PERMS)
    if lines is not None:
        stmt = stmt.where(Run.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        search=[Unit.sn],
        sort_fields={
            "createdAt": ReworkTask.created_at,
            "updatedAt": ReworkTask.updated_at,
            "status": ReworkTask.status,
            "doneAt": ReworkTask.done_at,
            "unit.sn": Unit.sn,
        },
    )
    page["items"] = await task_outs(uow, page["items"])
    return page


async def record_repair(uow: UnitOfWork, task_id: int, body: RepairRecordBody) -> dict[str, Any]:
    """What was repaired and how (meta.repairRecordV1, the latest record wins); only while OPEN."""
    task = await get_task(uow, task_id, lock=True)
    if task.status != "OPEN":
        raise Rejected("REWORK_TASK_NOT_OPEN", f"Rework task {task_id} is {task.status}")
    meta = task.meta or {}
    before = meta.get("repairRecordV1")
    record = {
        "reason": body.reason,
        "action": body.action,
        "result": body.result,
        "remark": body.remark,
        "recordedBy": uow.actor.name,
        "recordedAt": iso(utcnow()),
    }
    task.meta = {**meta, "repairRecordV1": record}
    uow.audit(
        task.id,
        f"rework task {task.id}",
        entity_type="REWORK_TASK",
        action="REWORK_REPAIR_RECORD",
        before={"repairRecord": before} if before else None,
        after={"repairRecord": record},
    )
    return await _one(uow, task)


async def complete_task(uow: UnitOfWork, task_id: int, body: ReworkCompleteBody) -> dict[str, Any]:
    """OPEN → DONE by hand; the defect closes. The unit is already QUEUED at the rework step."""
    task = await get_task(uow, task_id, lock=True)
    before = {"status": task.status}
    REWORK_TASK.apply(task, "complete")  # REWORK_NOT_OPEN
    task.done_by, task.done_at = uow.actor.name, utcnow()
    if body.remark:
        task.meta = {**(task.meta or {}), "completeRemark": body.remark}
    defect = await close_task_defect(uow, task)
    uow.audit(
        task.id,
        f"rework task {task.id}",
        entity_type="REWORK_TASK",
        action="REWORK_COMPLETE",
        before=before,
        after={
            "status": task.status,
            "doneAt": iso(task.done_at),
            "defectId": defect.id if defect else None,
            "defectStatus": defect.status if defect else None,
            "remark": body.remark,
        },
    )
    return await _one(uow, task)
