"""TPM equipment and maintenance tasks (domain.md §2 "TPM"): the local copies the track-in gate reads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from central.db.models import TpmEquipment, TpmMaintenanceTask
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.tpm import (
    TpmEquipmentCreate,
    TpmEquipmentQuery,
    TpmEquipmentUpdate,
    TpmTaskCreate,
    TpmTaskQuery,
    TpmTaskUpdate,
)
from central.services.listing import paginate, split_csv
from central.services.readiness import precheck_for_stations
from central.services.uow import UnitOfWork

# Task status words (compared case-insensitively, as TPM spells them either way).
IN_PROGRESS = "in_progress"
DONE = frozenset({"completed", "done"})


async def _flush_or(uow: UnitOfWork, code: str, message: str) -> None:
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Conflict(code, message) from None


def _lower_in(col: Any, csv: str | None) -> Any:
    values = [v.lower() for v in split_csv(csv)]
    return func.lower(col).in_(values) if values else None


# ---- equipment ------------------------------------------------------------------------------------------


def _equipment_view(e: TpmEquipment) -> dict[str, Any]:
    return {"equipmentCode": e.equipment_code, "name": e.name, "status": e.status}


async def _equipment(uow: UnitOfWork, code: str) -> TpmEquipment:
    row = await uow.session.scalar(select(TpmEquipment).where(TpmEquipment.equipment_code == code))
    if row is None:
        raise NotFound("TPM_EQUIPMENT_NOT_FOUND", f"TPM equipment {code} not found")
    return row


async def list_equipment(uow: UnitOfWork, q: TpmEquipmentQuery) -> dict[str, Any]:
    stmt = select(TpmEquipment)
    if (cond := _lower_in(TpmEquipment.status, q.status)) is not None:
        stmt = stmt.where(cond)
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": TpmEquipment.created_at,
            "updatedAt": TpmEquipment.updated_at,
            "equipmentCode": TpmEquipment.equipment_code,
            "status": TpmEquipment.status,
        },
        search=[TpmEquipment.equipment_code, TpmEquipment.name],
    )


async def create_equipment(uow: UnitOfWork, body: TpmEquipmentCreate) -> TpmEquipment:
    message = f"TPM equipment {body.equipment_code} already exists"
    if await uow.session.scalar(
        select(TpmEquipment.id).where(TpmEquipment.equipment_code == body.equipment_code)
    ):
        raise Conflict("TPM_EQUIPMENT_CODE_EXISTS", message)
    e = TpmEquipment(equipment_code=body.equipment_code, name=body.name or None, status=body.status, meta={})
    uow.session.add(e)
    await _flush_or(uow, "TPM_EQUIPMENT_CODE_EXISTS", message)
    uow.audit(
        e.id,
        e.equipment_code,
        entity_type="TPM_EQUIPMENT",
        action="TPM_EQUIPMENT_CREATE",
        after=_equipment_view(e),
    )
    return e


async def update_equipment(uow: UnitOfWork, code: str, body: TpmEquipmentUpdate) -> TpmEquipment:
    e = await _equipment(uow, code)
    before = _equipment_view(e)
    if body.name is not None:
        e.name = body.name or None
    if body.status is not None:
        e.status = body.status
    await uow.session.flush()
    uow.audit(
        e.id,
        e.equipment_code,
        entity_type="TPM_EQUIPMENT",
        action="TPM_EQUIPMENT_UPDATE",
        before=before,
        after=_equipment_view(e),
    )
    if body.status is not None and before.get("status") != e.status:
        # domain.md §5: an equipment status change re-runs the advisory PRECHECK of PREP runs on its line.
        await precheck_for_stations(uow, [e.equipment_code])
    return e


# ---- maintenance tasks ----------------------------------------------------------------------------------


def _task_view(t: TpmMaintenanceTask) -> dict[str, Any]:
    return {
        "taskNo": t.task_no,
        "equipmentCode": t.equipment_code,
        "type": t.type,
        "status": t.status,
        "startedAt": iso(t.started_at),
        "completedAt": iso(t.completed_at),
    }


async def list_tasks(uow: UnitOfWork, q: TpmTaskQuery) -> dict[str, Any]:
    stmt = select(TpmMaintenanceTask)
    if codes := split_csv(q.equipment_code):
        stmt = stmt.where(TpmMaintenanceTask.equipment_code.in_(codes))
    if (cond := _lower_in(TpmMaintenanceTask.status, q.status)) is not None:
        stmt = stmt.where(cond)
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": TpmMaintenanceTask.created_at,
            "taskNo": TpmMaintenanceTask.task_no,
            "equipmentCode": TpmMaintenanceTask.equipment_code,
            "startedAt": TpmMaintenanceTask.started_at,
            "completedAt": TpmMaintenanceTask.completed_at,
        },
        search=[TpmMaintenanceTask.task_no, TpmMaintenanceTask.equipment_code],
    )


async def create_task(uow: UnitOfWork, body: TpmTaskCreate) -> TpmMaintenanceTask:
    message = f"Maintenance task {body.task_no} already exists"
    if await uow.session.scalar(
        select(TpmMaintenanceTask.id).where(TpmMaintenanceTask.task_no == body.task_no)
    ):
        raise Conflict("TPM_TASK_NO_EXISTS", message)
    await _equipment(uow, body.equipment_code)
    started = body.started_at
    if started is None and body.status.lower() == IN_PROGRESS:
        started = utcnow()
    t = TpmMaintenanceTask(
        task_no=body.task_no,
        equipment_code=body.equipment_code,
        type=body.type,
        status=body.status,
        started_at=started,
        meta={},
    )
    uow.session.add(t)
    await _flush_or(uow, "TPM_TASK_NO_EXISTS", message)
    uow.audit(
        t.id,
        t.task_no,
        entity_type="TPM_MAINTENANCE_TASK",
        action="TPM_MAINTENANCE_TASK_CREATE",
        after=_task_view(t),
    )
    await precheck_for_stations(uow, [t.equipment_code])
    return t


async def update_task(uow: UnitOfWork, task_no: str, body: TpmTaskUpdate) -> TpmMaintenanceTask:
    t = await uow.session.scalar(select(TpmMaintenanceTask).where(TpmMaintenanceTask.task_no == task_no))
    if t is None:
        raise NotFound("TPM_MAINTENANCE_TASK_NOT_FOUND", f"Maintenance task {task_no} not found")
    before = _task_view(t)
    if body.type is not None:
        t.type = body.type
    if body.status is not None:
        t.status = body.status
        if t.status.lower() == IN_PROGRESS and t.started_at is None:
            t.started_at = utcnow()
    if body.completed_at is not None:
        t.completed_at = body.completed_at
    elif body.status is not None and body.status.lower() in DONE and t.completed_at is None:
        t.completed_at = utcnow()
    if t.started_at is not None and t.completed_at is not None and t.completed_at < t.started_at:
        raise Rejected("TPM_TASK_TIME_INVALID", f"Task {task_no} cannot complete before it started")
    await uow.session.flush()
    uow.audit(
        t.id,
        t.task_no,
        entity_type="TPM_MAINTENANCE_TASK",
        action="TPM_MAINTENANCE_TASK_UPDATE",
        before=before,
        after=_task_view(t),
    )
    if body.status is not None and before["status"] != t.status:
        # Maintenance starting or completing changes the EQUIPMENT item: re-run the PRECHECK (domain.md §5).
        await precheck_for_stations(uow, [t.equipment_code])
    return t
