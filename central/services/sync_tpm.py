"""What a pulled TPM page does (domain.md §9 "Pull"): equipment, maintenance tasks, status history.

An equipment or task change that can change the EQUIPMENT readiness item re-runs the PRECHECK of the PREP
runs on the affected lines, as the REST changes of central/services/tpm.py do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import TpmEquipment, TpmMaintenanceTask, TpmStatusLog
from central.domain.clock import iso
from central.schemas.sync import TpmEquipmentItem, TpmMaintenanceTaskItem, TpmStatusLogItem
from central.services.readiness import precheck_for_stations
from central.services.sync_apply import Counts, Pairs, set_changed
from central.services.uow import UnitOfWork


def _equipment_view(e: TpmEquipment) -> dict[str, Any]:
    return {"equipmentCode": e.equipment_code, "name": e.name, "status": e.status}


async def apply_equipment(uow: UnitOfWork, items: Pairs[TpmEquipmentItem]) -> Counts:
    """Upserts TPM equipment; a new or re-statused one re-runs PRECHECK of PREP runs on its line."""
    s, c = uow.session, Counts()
    codes = [it.equipment_code for _, it in items]
    stmt = select(TpmEquipment).where(TpmEquipment.equipment_code.in_(codes))
    rows = {e.equipment_code: e for e in await s.scalars(stmt)}
    restated: set[str] = set()
    audits: list[tuple[TpmEquipment, dict[str, Any] | None]] = []
    for raw, it in items:
        e = rows.get(it.equipment_code)
        before = _equipment_view(e) if e is not None else None
        if e is None:
            rows[it.equipment_code] = e = TpmEquipment(equipment_code=it.equipment_code, meta={})
            s.add(e)
        set_changed(e, name=it.name if it.name is not None else e.name, status=it.status)
        if (e.meta or {}).get("tpm") != raw:
            e.meta = {**(e.meta or {}), "tpm": raw}
        if before is None or before["status"] != e.status:
            restated.add(e.equipment_code)
        if before is None or before != _equipment_view(e):
            audits.append((e, before))
        else:
            c.unchanged += 1
    await s.flush()
    for e, before in audits:
        c.created += before is None
        c.updated += before is not None
        after = _equipment_view(e)
        uow.audit(
            e.id,
            e.equipment_code,
            entity_type="TPM_EQUIPMENT",
            action="TPM_EQUIPMENT_SYNC",
            before=before,
            after=after,
        )
    if restated:
        await precheck_for_stations(uow, sorted(restated))
    return c


def _task_view(t: TpmMaintenanceTask) -> dict[str, Any]:
    return {
        "taskNo": t.task_no,
        "equipmentCode": t.equipment_code,
        "type": t.type,
        "status": t.status,
        "startedAt": iso(t.started_at),
        "completedAt": iso(t.completed_at),
    }


async def apply_maintenance_tasks(uow: UnitOfWork, items: Pairs[TpmMaintenanceTaskItem]) -> Counts:
    """Upserts TPM tasks; a new task or a status change re-runs PRECHECK for its equipment's line."""
    s, c = uow.session, Counts()
    nos = [it.task_no for _, it in items]
    rows = {
        t.task_no: t
        for t in await s.scalars(select(TpmMaintenanceTask).where(TpmMaintenanceTask.task_no.in_(nos)))
    }
    touched: set[str] = set()
    audits: list[tuple[TpmMaintenanceTask, dict[str, Any] | None]] = []
    for raw, it in items:
        t = rows.get(it.task_no)
        before = _task_view(t) if t is not None else None
        if t is None:
            rows[it.task_no] = t = TpmMaintenanceTask(task_no=it.task_no, meta={})
            s.add(t)
        set_changed(
            t,
            equipment_code=it.equipment_code,
            type=it.type,
            status=it.status,
            started_at=it.started_at,
            completed_at=it.completed_at,
        )
        if (t.meta or {}).get("tpm") != raw:
            t.meta = {**(t.meta or {}), "tpm": raw, "scheduledDate": iso(it.scheduled_date)}
        if before is None or before["status"] != t.status or before["equipmentCode"] != t.equipment_code:
            touched.add(t.equipment_code)
            if before is not None:
                touched.add(before["equipmentCode"])
        if before is None or before != _task_view(t):
            audits.append((t, before))
        else:
            c.unchanged += 1
    await s.flush()
    for t, before in audits:
        c.created += before is None
        c.updated += before is not None
        after = _task_view(t)
        uow.audit(
            t.id,
            t.task_no,
            entity_type="TPM_MAINTENANCE_TASK",
            action="TPM_MAINTENANCE_TASK_SYNC",
            before=before,
            after=after,
        )
    if touched:
        await precheck_for_stations(uow, sorted(touched))
    return c


async def apply_status_logs(uow: UnitOfWork, items: Pairs[TpmStatusLogItem]) -> Counts:
    """Equipment status history, upserted by (equipmentCode, startedAt); history re-runs nothing."""
    s, c = uow.session, Counts()
    stmt = select(TpmStatusLog).where(
        TpmStatusLog.equipment_code.in_({it.equipment_code for _, it in items}),
        TpmStatusLog.started_at.in_({it.started_at for _, it in items}),
    )
    rows = {(row.equipment_code, row.started_at): row for row in await s.scalars(stmt)}
    for raw, it in items:
        key = (it.equipment_code, it.started_at)
        row = rows.get(key)
        if row is None:
            rows[key] = row = TpmStatusLog(
                equipment_code=it.equipment_code, started_at=it.started_at, meta={}
            )
            s.add(row)
            c.created += 1
        elif (row.meta or {}).get("tpm") == raw:
            c.unchanged += 1
            continue
        else:
            c.updated += 1
        set_changed(row, status=it.status, reason=it.reason, ended_at=it.ended_at)
        row.meta = {**(row.meta or {}), "tpm": raw}
    await s.flush()
    return c
