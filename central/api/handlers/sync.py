"""ERP/TPM pull sync (domain.md §9 "Pull"): one page per call, the jobs' status, the built-in mocks."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.domain.errors import NotFound
from central.integration import mock_server, sources
from central.schemas.sync import ErpSyncQuery, IntegrationStatus, MockPage, MockQuery, SyncOut, TpmSyncQuery
from central.services import sync
from central.services.sync import Job

router = Router(tag="integration", entity_type="INTEGRATION")
PERMS = ("system:integration",)


async def _erp(rq: Req, job: Job, query: ErpSyncQuery) -> SyncOut:
    source = sources.source_for(rq.settings, "ERP")
    return await rq.write(
        sync.pull, job, source, since=query.since, start_row=query.start_row, limit=query.limit
    )


async def _tpm(rq: Req, job: Job, query: TpmSyncQuery) -> SyncOut:
    return await rq.write(sync.pull, job, sources.source_for(rq.settings, "TPM"), since=query.since)


@router.post("/integration/erp/routes/sync", perms=PERMS, action="ERP_ROUTE_SYNC")
async def sync_erp_routes(rq: Req, query: ErpSyncQuery) -> SyncOut:
    """Pull one page of ERP routings and upsert them with their steps (502 when ERP fails)."""
    return await _erp(rq, sync.ERP_ROUTES, query)


@router.post("/integration/erp/work-orders/sync", perms=PERMS, action="ERP_WORK_ORDER_SYNC")
async def sync_erp_work_orders(rq: Req, query: ErpSyncQuery) -> SyncOut:
    """Pull one page of ERP work orders; always re-applied (status only moves forward)."""
    return await _erp(rq, sync.ERP_WORK_ORDERS, query)


@router.post("/integration/erp/materials/sync", perms=PERMS, action="ERP_MATERIAL_SYNC")
async def sync_erp_materials(rq: Req, query: ErpSyncQuery) -> SyncOut:
    """Pull one page of ERP materials (an identical page is logged DUPLICATE, not applied)."""
    return await _erp(rq, sync.ERP_MATERIALS, query)


@router.post("/integration/erp/boms/sync", perms=PERMS, action="ERP_BOM_SYNC")
async def sync_erp_boms(rq: Req, query: ErpSyncQuery) -> SyncOut:
    """Pull one page (default 50) of ERP BOM lines."""
    return await _erp(rq, sync.ERP_BOMS, query)


@router.post("/integration/erp/work-centers/sync", perms=PERMS, action="ERP_WORK_CENTER_SYNC")
async def sync_erp_work_centers(rq: Req, query: ErpSyncQuery) -> SyncOut:
    """Pull one page of ERP work centers."""
    return await _erp(rq, sync.ERP_WORK_CENTERS, query)


@router.post("/integration/tpm/equipment/sync", perms=PERMS, action="TPM_EQUIPMENT_SYNC")
async def sync_tpm_equipment(rq: Req, query: TpmSyncQuery) -> SyncOut:
    """Pull TPM equipment; a status change re-runs PRECHECK of PREP runs on the station's line."""
    return await _tpm(rq, sync.TPM_EQUIPMENT, query)


@router.post("/integration/tpm/status-logs/sync", perms=PERMS, action="TPM_STATUS_LOG_SYNC")
async def sync_tpm_status_logs(rq: Req, query: TpmSyncQuery) -> SyncOut:
    """Pull TPM equipment status history."""
    return await _tpm(rq, sync.TPM_STATUS_LOGS, query)


@router.post("/integration/tpm/maintenance-tasks/sync", perms=PERMS, action="TPM_MAINTENANCE_TASK_SYNC")
async def sync_tpm_maintenance_tasks(rq: Req, query: TpmSyncQuery) -> SyncOut:
    """Pull TPM maintenance tasks; a new task or status change re-runs PRECHECK for its line."""
    return await _tpm(rq, sync.TPM_MAINTENANCE_TASKS, query)


@router.get("/integration/status", perms=PERMS)
async def integration_status(rq: Req) -> IntegrationStatus:
    """Every pull job: configured or not, its cursor, the scheduler's last run and the latest message."""
    return await rq.read(sync.status)


def _mock(rq: Req, system: str, query: MockQuery) -> MockPage:
    entity = rq.path("entity")
    if not rq.settings.allow_demo_seed or (system, entity) not in mock_server.ENTITIES:
        raise NotFound("NOT_FOUND", f"No mock {system.upper()} entity {entity!r} (demo mode only)")
    items = mock_server.default_data()[system][entity]
    page = mock_server.page_of(system, entity, items, query.since, query.start_row, query.limit)
    return MockPage.model_validate(page)


@router.get("/integration/mock/erp/{entity}", perms=PERMS)
async def mock_erp(rq: Req, query: MockQuery) -> MockPage:
    """Demo ERP data in the pull format (only with MES_ALLOW_DEMO_SEED=true)."""
    return _mock(rq, "erp", query)


@router.get("/integration/mock/tpm/{entity}", perms=PERMS)
async def mock_tpm(rq: Req, query: MockQuery) -> MockPage:
    """Demo TPM data in the pull format (only with MES_ALLOW_DEMO_SEED=true)."""
    return _mock(rq, "tpm", query)
