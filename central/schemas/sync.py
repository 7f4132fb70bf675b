"""ERP/TPM pull sync: the query of each sync, the upstream item shapes it accepts, and its responses.

Upstream items are read leniently (unknown fields are kept in the raw copy, not refused), but the fields the
MES stores are checked: an item that fails is reported in `summary.rejected` and never written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from central.schemas.base import CamelModel, OutModel, UtcTime
from central.schemas.catalog import MaterialCode
from central.schemas.routing import Code
from central.schemas.tpm import TpmWord
from central.schemas.work_orders import CODE as WO_CODE

PAGE_LIMIT_MAX = 1000


class ErpSyncQuery(CamelModel):
    """`since` (ISO-8601 with offset), `startRow` (≥0) and `limit` (1..1000) override the stored cursor."""

    since: AwareDatetime | None = None
    start_row: int | None = Field(None, ge=0, le=10_000_000)
    limit: int | None = Field(None, ge=1, le=PAGE_LIMIT_MAX)


class TpmSyncQuery(CamelModel):
    since: AwareDatetime | None = None


class MockQuery(BaseModel):
    """Query of the built-in mock ERP/TPM endpoints (same parameters the HTTP source adapter sends)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    since: AwareDatetime | None = None
    start_row: int = Field(0, ge=0, le=10_000_000)
    limit: int = Field(200, ge=1, le=PAGE_LIMIT_MAX)


# ---- upstream items -------------------------------------------------------------------------------------


class UpstreamItem(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", str_strip_whitespace=True
    )


Name = Annotated[str, Field(max_length=200)]
Short = Annotated[str, Field(max_length=64)]


class ErpRouteHeader(UpstreamItem):
    route_no: Code
    route_name: Name | None = None
    product_code: Short | None = None
    process_type: Annotated[str, Field(pattern=r"^(SMT|DIP)$")] | None = None
    version: Annotated[str, Field(max_length=32)] | None = None
    effective_from: AwareDatetime | None = None
    effective_to: AwareDatetime | None = None
    is_active: bool = True
    modified_at: AwareDatetime | None = None


class ErpRouteStep(UpstreamItem):
    step_no: int = Field(ge=1, le=1_000_000)
    process_code: Code
    process_name: Name | None = None
    work_center_code: Short | None = None
    department_code: Annotated[str, Field(max_length=120)] | None = None
    first_piece_inspect: bool = False
    key_oper: bool = False


class ErpRoute(UpstreamItem):
    header: ErpRouteHeader
    steps: list[ErpRouteStep] = Field(default_factory=list, max_length=500)
    updated_at: AwareDatetime | None = None

    def changed_at(self) -> datetime | None:
        return self.updated_at or self.header.modified_at


class ErpWorkOrder(UpstreamItem):
    wo_no: str = Field(min_length=1, max_length=64, pattern=WO_CODE)
    product_code: str = Field(min_length=1, max_length=64)
    planned_qty: float = Field(ge=0, le=10_000_000)
    routing_code: Short | None = None
    status: Annotated[str, Field(max_length=32)] | None = None  # ERP FStatus "1".."7"
    pick_status: Annotated[str, Field(max_length=32)] | None = None
    due_date: AwareDatetime | None = None
    updated_at: AwareDatetime

    def changed_at(self) -> datetime | None:
        return self.updated_at


class ErpMaterial(UpstreamItem):
    material_code: MaterialCode
    name: Name | None = None
    category: Short | None = None
    unit: Annotated[str, Field(max_length=32)] | None = None
    is_active: bool = True
    updated_at: AwareDatetime

    def changed_at(self) -> datetime | None:
        return self.updated_at


class ErpBomItem(UpstreamItem):
    parent_code: MaterialCode
    child_code: MaterialCode
    qty: float = Field(gt=0, le=1_000_000_000)  # numerator (ERP FNumerator)
    denominator: float = Field(1.0, gt=0, le=1_000_000_000)
    unit: Annotated[str, Field(max_length=32)] | None = None
    updated_at: AwareDatetime

    def changed_at(self) -> datetime | None:
        return self.updated_at


class ErpWorkCenter(UpstreamItem):
    work_center_code: Short = Field(min_length=1)
    name: Name | None = None
    department_code: Annotated[str, Field(max_length=120)] | None = None
    department_name: Name | None = None
    updated_at: AwareDatetime

    def changed_at(self) -> datetime | None:
        return self.updated_at


class TpmEquipmentItem(UpstreamItem):
    equipment_code: Code
    name: Name | None = None
    status: TpmWord
    updated_at: AwareDatetime

    def changed_at(self) -> datetime | None:
        return self.updated_at


class TpmStatusLogItem(UpstreamItem):
    equipment_code: Code
    status: TpmWord
    reason: Annotated[str, Field(max_length=2000)] | None = None
    started_at: AwareDatetime
    ended_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None

    def changed_at(self) -> datetime | None:
        return self.updated_at or self.ended_at or self.started_at


class TpmMaintenanceTaskItem(UpstreamItem):
    task_no: Code
    equipment_code: Code
    type: TpmWord | None = None
    status: TpmWord
    scheduled_date: AwareDatetime | None = None
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None

    def changed_at(self) -> datetime | None:
        return self.updated_at or self.completed_at or self.started_at or self.scheduled_date


# ---- responses ------------------------------------------------------------------------------------------


class SyncCursorOut(OutModel):
    next_sync_at: UtcTime | None = None
    has_more: bool
    next_start_row: int | None = None


class SyncRejection(OutModel):
    key: str | None = None
    code: str
    message: str


class SyncSummary(OutModel):
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[SyncRejection] = Field(default_factory=list)


class SyncOut(OutModel):
    """The pulled page as an envelope, plus what the MES did with it."""

    source_system: str
    entity_type: str
    cursor: SyncCursorOut
    items: list[dict[str, Any]]
    message_id: int
    status: str  # SUCCESS | DUPLICATE
    dedupe_key: str | None
    summary: SyncSummary


class SyncCursorState(OutModel):
    last_sync_at: UtcTime | None
    last_seq: str | None
    meta: dict[str, Any]
    updated_at: UtcTime


class LastMessage(OutModel):
    id: int
    status: str
    error: str | None
    created_at: UtcTime


class JobStatus(OutModel):
    source_system: str
    entity_type: str
    configured: bool
    cursor: SyncCursorState | None
    last_cron: dict[str, Any] | None
    last_message: LastMessage | None


class SchedulerState(OutModel):
    enabled: bool
    interval_seconds: int


class IntegrationStatus(OutModel):
    scheduler: SchedulerState
    jobs: list[JobStatus]


class MockPage(OutModel):
    source_system: str
    entity_type: str
    cursor: SyncCursorOut
    items: list[dict[str, Any]]
