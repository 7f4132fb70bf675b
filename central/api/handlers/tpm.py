"""TPM equipment and maintenance tasks kept locally (written by hand or by the TPM sync)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.tpm import (
    TpmEquipmentCreate,
    TpmEquipmentOut,
    TpmEquipmentQuery,
    TpmEquipmentUpdate,
    TpmTaskCreate,
    TpmTaskOut,
    TpmTaskQuery,
    TpmTaskUpdate,
)
from central.services import tpm

router = Router(tag="tpm", entity_type="TPM_EQUIPMENT")
WRITE = ("system:integration", "system:config")
READ = (*WRITE, "readiness:view", "readiness:check", "exec:read", "line:config")
TASK = "TPM_MAINTENANCE_TASK"


@router.get("/tpm/equipment", perms=READ)
async def list_tpm_equipment(rq: Req, query: TpmEquipmentQuery) -> Page[TpmEquipmentOut]:
    """TPM equipment (search: equipmentCode, name; filter: status, case-insensitive)."""
    return await rq.read(tpm.list_equipment, query)


@router.post("/tpm/equipment", perms=WRITE, action="TPM_EQUIPMENT_CREATE")
async def create_tpm_equipment(rq: Req, body: TpmEquipmentCreate) -> TpmEquipmentOut:
    """Register equipment (equipmentCode = station code); status defaults to "normal"."""
    return await rq.write(tpm.create_equipment, body)


@router.patch("/tpm/equipment/{code}", perms=WRITE, action="TPM_EQUIPMENT_UPDATE")
async def update_tpm_equipment(rq: Req, body: TpmEquipmentUpdate) -> TpmEquipmentOut:
    """Change equipment status or name (any status but "normal" blocks track-in)."""
    return await rq.write(tpm.update_equipment, rq.path("code"), body)


@router.get("/tpm/maintenance-tasks", perms=READ)
async def list_tpm_maintenance_tasks(rq: Req, query: TpmTaskQuery) -> Page[TpmTaskOut]:
    """Maintenance tasks (search: taskNo, equipmentCode; filters: equipmentCode, status)."""
    return await rq.read(tpm.list_tasks, query)


@router.post("/tpm/maintenance-tasks", perms=WRITE, entity_type=TASK, action="TPM_MAINTENANCE_TASK_CREATE")
async def create_tpm_maintenance_task(rq: Req, body: TpmTaskCreate) -> TpmTaskOut:
    """Record a maintenance task on known equipment (status in_progress blocks track-in)."""
    return await rq.write(tpm.create_task, body)


@router.patch(
    "/tpm/maintenance-tasks/{taskNo}", perms=WRITE, entity_type=TASK, action="TPM_MAINTENANCE_TASK_UPDATE"
)
async def update_tpm_maintenance_task(rq: Req, body: TpmTaskUpdate) -> TpmTaskOut:
    """Change a task's status, type or completion time."""
    return await rq.write(tpm.update_task, rq.path("taskNo"), body)
