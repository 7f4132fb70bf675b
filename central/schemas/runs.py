"""Runs: create, list, detail, units, authorize/revoke."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime


class RunCreate(CamelModel):
    line_code: str = Field(min_length=1, max_length=64)
    plan_qty: int = Field(ge=1, le=1_000_000)
    shift_code: str | None = Field(None, max_length=32)
    changeover_no: str | None = Field(None, max_length=64)


class RunQuery(ListQuery):
    status: str | None = Field(None, max_length=200)
    wo_no: str | None = Field(None, max_length=64)
    line_code: str | None = Field(None, max_length=64)


class UnitQuery(ListQuery):
    page_size: int = Field(50, ge=1, le=200)
    status: str | None = Field(None, max_length=200)
    station_code: str | None = Field(None, max_length=64)


class GenerateUnits(CamelModel):
    quantity: int = Field(ge=1, le=10_000)
    sn_prefix: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:/#-]+$")


class AuthorizeBody(CamelModel):
    action: Literal["AUTHORIZE", "REVOKE"] = "AUTHORIZE"


class RunOut(OutModel):
    id: int
    run_no: str
    status: str
    wo_no: str
    product_code: str
    line_code: str
    plan_qty: int
    shift_code: str | None
    changeover_no: str | None
    route_version_id: int | None
    route_version_no: int | None
    routing_code: str | None
    started_at: UtcTime | None
    ended_at: UtcTime | None
    parent_run_no: str | None = None
    rework_type: str | None
    authorization_type: str
    mrb_fai_waiver: bool
    authorized_by: str | None
    authorized_at: UtcTime | None
    created_at: UtcTime


class RunDetail(RunOut):
    work_order: dict[str, Any]
    line: dict[str, Any]
    route_version: dict[str, Any] | None
    route_steps: list[dict[str, Any]]
    unit_stats: dict[str, int]
    fai_trial: dict[str, Any] | None
    recent_units: list[dict[str, Any]]


class UnitOut(OutModel):
    id: int
    sn: str
    status: str
    current_step_no: int
    run_no: str | None
    wo_no: str
    current_step: dict[str, Any] | None = None
    next_step: dict[str, Any] | None = None
    updated_at: UtcTime


class GeneratedUnits(OutModel):
    generated: int
    units: list[UnitOut]
