"""Work order receive, list, release, routing override, pick status."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, Field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

CODE = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"


class WorkOrderReceive(CamelModel):
    wo_no: str = Field(min_length=1, max_length=64, pattern=CODE)
    product_code: str = Field(min_length=1, max_length=64)
    planned_qty: float = Field(gt=0, le=10_000_000)
    routing_code: str | None = Field(None, max_length=64)
    source_system: str | None = Field(None, max_length=32)
    pick_status: str | None = Field(None, max_length=32)
    due_date: AwareDatetime | None = None
    meta: dict[str, Any] | None = None


class WorkOrderQuery(ListQuery):
    status: str | None = Field(None, max_length=200)
    product_code: str | None = Field(None, max_length=64)


class ReleaseBody(CamelModel):
    line_code: str = Field(min_length=1, max_length=64)
    station_group_code: str | None = Field(None, max_length=64)


class RoutingOverrideBody(CamelModel):
    routing_code: str = Field(min_length=1, max_length=64)


class PickStatusBody(CamelModel):
    pick_status: str = Field(min_length=1, max_length=32)


class WorkOrderOut(OutModel):
    id: int
    wo_no: str
    product_code: str
    planned_qty: float
    routing_id: int | None
    routing_code: str | None = None
    status: str
    erp_status: str | None
    erp_pick_status: str | None
    pick_status: str | None
    due_date: UtcTime | None
    source_system: str
    meta: dict[str, Any]
    run_count: int = 0
    created_at: UtcTime
    updated_at: UtcTime
