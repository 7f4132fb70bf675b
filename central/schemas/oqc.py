"""FQC (last piece, domain.md §7.2), OQC sampling rules (§7.3) and OQC (§7.4): bodies, queries, responses.

FQC items, completion and signature take the FAI bodies unchanged (same fields, same count rule); OQC
items need the unit's SN, because an OQC inspects the sampled units of the run.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from central.schemas.base import CamelModel, ListQuery, OutModel, RowId, UtcTime
from central.schemas.fai import FaiComplete, FaiItemCreate, FaiItemUpdate, FaiSign, ItemResult

SamplingType = Literal["PERCENTAGE", "FIXED"]

# ---- sampling rules --------------------------------------------------------------------------------


def _one_of(data: Any, code: str, ident: str) -> Any:
    if isinstance(data, dict):
        by_code = {k for k in data if k in (code, _snake(code))}
        by_id = {k for k in data if k in (ident, _snake(ident))}
        if (
            by_code
            and by_id
            and any(data[k] is not None for k in by_code)
            and any(data[k] is not None for k in by_id)
        ):
            raise ValueError(f"Send either {code} or {ident}, not both")
    return data


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


class SamplingRuleCreate(CamelModel):
    """null / absent product, line or routing = wildcard. The line and routing may be named by code or id."""

    product_code: str | None = Field(None, min_length=1, max_length=64)
    line_code: str | None = Field(None, min_length=1, max_length=64)
    line_id: RowId | None = None
    routing_code: str | None = Field(None, min_length=1, max_length=128)
    routing_id: RowId | None = None
    sampling_type: SamplingType
    sample_value: float = Field(allow_inf_nan=False)
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    is_active: bool = True

    @model_validator(mode="before")
    @classmethod
    def _single_reference(cls, data: Any) -> Any:
        return _one_of(_one_of(data, "lineCode", "lineId"), "routingCode", "routingId")


class SamplingRuleUpdate(CamelModel):
    """Only the fields sent change; an explicit null on product/line/routing makes it a wildcard."""

    product_code: str | None = Field(None, min_length=1, max_length=64)
    line_code: str | None = Field(None, min_length=1, max_length=64)
    line_id: RowId | None = None
    routing_code: str | None = Field(None, min_length=1, max_length=128)
    routing_id: RowId | None = None
    sampling_type: SamplingType | None = None
    sample_value: float | None = Field(None, allow_inf_nan=False)
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    is_active: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_reference(cls, data: Any) -> Any:
        return _one_of(_one_of(data, "lineCode", "lineId"), "routingCode", "routingId")


class SamplingRuleQuery(ListQuery):
    product_code: str | None = Field(None, max_length=64)
    line_code: str | None = Field(None, max_length=64)
    routing_code: str | None = Field(None, max_length=128)
    is_active: bool | None = None


class SamplingRuleOut(OutModel):
    id: int
    product_code: str | None
    line_id: int | None
    line_code: str | None
    routing_id: int | None
    routing_code: str | None
    sampling_type: str
    sample_value: float
    priority: int
    is_active: bool
    specificity: int
    created_at: UtcTime
    updated_at: UtcTime


# ---- FQC / OQC bodies ------------------------------------------------------------------------------


class FqcCreate(CamelModel):
    """sampleQty defaults to 1; 1 ≤ sampleQty ≤ DONE units, checked by the service (INVALID_SAMPLE_QTY)."""

    sample_qty: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    remark: str | None = Field(None, max_length=2000)


class OqcCreate(CamelModel):
    """sampleQty defaults to (and may not exceed) the DONE units; checked by the service."""

    sample_qty: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    remark: str | None = Field(None, max_length=2000)


class FqcItemCreate(FaiItemCreate):
    pass


class FqcItemUpdate(FaiItemUpdate):
    pass


class FqcComplete(FaiComplete):
    pass


class FqcSign(FaiSign):
    pass


class OqcItemCreate(CamelModel):
    unit_sn: str = Field(min_length=1, max_length=128)
    item_name: str = Field(min_length=1, max_length=200)
    item_spec: str | None = Field(None, max_length=500)
    actual_value: str | None = Field(None, max_length=500)
    result: ItemResult
    defect_code: str | None = Field(None, max_length=64)
    remark: str | None = Field(None, max_length=2000)


class OqcItemUpdate(FaiItemUpdate):
    """As for FQC; unitSn (like itemName and result) cannot be cleared."""


class OqcComplete(FaiComplete):
    pass


class InspectionQuery(ListQuery):
    run_no: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=200)


# ---- responses -------------------------------------------------------------------------------------


class InspectionItemOut(OutModel):
    id: int
    item_id: int
    inspection_id: int
    unit_sn: str | None
    item_name: str
    item_spec: str | None
    actual_value: str | None
    result: str
    defect_code: str | None
    remark: str | None
    created_at: UtcTime
    updated_at: UtcTime


class QcOut(OutModel):
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
    created_at: UtcTime
    updated_at: UtcTime


class FqcOut(QcOut):
    signed_by: str | None
    signed_at: UtcTime | None
    signature_remark: str | None


class FqcDetail(FqcOut):
    items: list[InspectionItemOut]


class OqcOut(QcOut):
    """`data` is the stored block: sampledUnitIds, samplingRuleId/Type/Value, source, MRB fields."""

    sampled_unit_ids: list[int]
    sampled_sns: list[str]
    sampling_rule_id: int | None
    sampling_type: str | None
    sampling_value: float | None
    data: dict[str, Any]


class OqcDetail(OqcOut):
    items: list[InspectionItemOut]


class OqcGate(OutModel):
    requires_oqc: bool
    oqc_passed: bool
    oqc_id: int | None = None
    oqc_status: str | None = None
