"""First-article inspection (domain.md §7.1): create, start, items, complete, sign, reads and the gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

ItemResult = Literal["PASS", "FAIL", "NA"]


class FaiCreate(CamelModel):
    sample_qty: int = Field(ge=1, le=10_000)
    remark: str | None = Field(None, max_length=2000)


class FaiItemCreate(CamelModel):
    unit_sn: str | None = Field(None, min_length=1, max_length=128)
    item_name: str = Field(min_length=1, max_length=200)
    item_spec: str | None = Field(None, max_length=500)
    actual_value: str | None = Field(None, max_length=500)
    result: ItemResult
    defect_code: str | None = Field(None, max_length=64)
    remark: str | None = Field(None, max_length=2000)


class FaiItemUpdate(CamelModel):
    """Only the fields sent change; an explicit null clears an optional field."""

    unit_sn: str | None = Field(None, min_length=1, max_length=128)
    item_name: str | None = Field(None, min_length=1, max_length=200)
    item_spec: str | None = Field(None, max_length=500)
    actual_value: str | None = Field(None, max_length=500)
    result: ItemResult | None = None
    defect_code: str | None = Field(None, max_length=64)
    remark: str | None = Field(None, max_length=2000)


class FaiComplete(CamelModel):
    decision: Literal["PASS", "FAIL"]
    passed_qty: int | None = Field(None, ge=0, le=10_000)
    failed_qty: int | None = Field(None, ge=0, le=10_000)
    remark: str | None = Field(None, max_length=2000)


class FaiSign(CamelModel):
    remark: str | None = Field(None, max_length=2000)


class FaiQuery(ListQuery):
    run_no: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=200)


class FaiItemOut(OutModel):
    id: int
    item_id: int
    fai_id: int
    unit_sn: str | None
    item_name: str
    item_spec: str | None
    actual_value: str | None
    result: str
    defect_code: str | None
    remark: str | None
    template_item_id: int | None = None
    seq: int | None = None
    required: bool | None = None
    created_at: UtcTime
    updated_at: UtcTime


class FaiOut(OutModel):
    id: int
    type: str
    run_no: str
    run_status: str
    status: str
    sample_qty: int
    passed_qty: int | None
    failed_qty: int | None
    inspector_id: str | None
    started_at: UtcTime | None
    decided_by: str | None
    decided_at: UtcTime | None
    remark: str | None
    signed_by: str | None
    signed_at: UtcTime | None
    signature_remark: str | None
    fai_template: dict[str, Any] | None = None
    created_at: UtcTime
    updated_at: UtcTime


class FaiDetail(FaiOut):
    items: list[FaiItemOut]
    trial_summary: dict[str, Any]


class FaiGate(OutModel):
    requires_fai: bool
    fai_passed: bool
    fai_signed: bool
    fai_waived: bool = False
    fai_id: int | None = None
    fai_status: str | None = None
