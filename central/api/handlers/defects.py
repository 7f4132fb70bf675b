"""Defects, dispositions (REWORK / SCRAP / HOLD), hold release and rework tasks (domain.md §7.6)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.defects import (
    DefectCreate,
    DefectOut,
    DefectQuery,
    DispositionCreate,
    ReleaseBody,
    RepairRecordBody,
    ReworkCompleteBody,
    ReworkTaskOut,
    ReworkTaskQuery,
)
from central.services import defects, rework

router = Router(tag="quality", entity_type="DEFECT")
PERMS = defects.PERMS


def _defect_id(rq: Req) -> int:
    return rq.path_int("defectId", "DEFECT_NOT_FOUND")


def _task_id(rq: Req) -> int:
    return rq.path_int("taskId", "REWORK_TASK_NOT_FOUND")


@router.get("/defects", perms=PERMS)
async def list_defects(rq: Req, query: DefectQuery) -> Page[DefectOut]:
    """Defects (unitSn, runNo, status=A,B, code=A,B) with their failure step and disposition, newest first."""
    return await rq.read(defects.list_defects, query)


@router.get("/defects/{defectId}", perms=PERMS)
async def get_defect(rq: Req) -> DefectOut:
    """A defect with its failure step, disposition and rework task."""
    return await rq.read(defects.defect_detail, _defect_id(rq))


@router.post("/defects", perms=PERMS, status=201, action="DEFECT_CREATE")
async def create_defect(rq: Req, body: DefectCreate) -> DefectOut:
    """Record a defect by hand (RECORDED); its failure step is the unit's latest track."""
    return await rq.write(defects.create_defect, body)


@router.post(
    "/defects/{defectId}/disposition", perms=PERMS, action="DISPOSITION_CREATE", entity_type="DISPOSITION"
)
async def decide_disposition(rq: Req, body: DispositionCreate) -> DefectOut:
    """Decide REWORK (unit back to toStepNo, task OPEN), SCRAP (unit scrapped) or HOLD for a failed unit."""
    return await rq.write(defects.decide, _defect_id(rq), body)


@router.post("/defects/{defectId}/release", perms=PERMS, action="DEFECT_RELEASE")
async def release_hold(rq: Req, body: ReleaseBody) -> DefectOut:
    """Release a HOLD disposition: the unit is queued again and the defect closes."""
    return await rq.write(defects.release, _defect_id(rq), body)


@router.get("/rework-tasks", perms=PERMS)
async def list_rework_tasks(rq: Req, query: ReworkTaskQuery) -> Page[ReworkTaskOut]:
    """Rework tasks (unitSn, runNo, status=OPEN,DONE,CANCELLED), newest first."""
    return await rq.read(rework.list_tasks, query)


@router.post(
    "/rework-tasks/{taskId}/repair-record",
    perms=PERMS,
    action="REWORK_REPAIR_RECORD",
    entity_type="REWORK_TASK",
)
async def record_repair(rq: Req, body: RepairRecordBody) -> ReworkTaskOut:
    """Record the repair (reason, action, result, remark) on an OPEN rework task."""
    return await rq.write(rework.record_repair, _task_id(rq), body)


@router.post(
    "/rework-tasks/{taskId}/complete", perms=PERMS, action="REWORK_COMPLETE", entity_type="REWORK_TASK"
)
async def complete_rework(rq: Req, body: ReworkCompleteBody) -> ReworkTaskOut:
    """Complete an OPEN rework task by hand; its defect closes."""
    return await rq.write(rework.complete_task, _task_id(rq), body)
