"""SMT feeder loading (domain.md §6): slots, slot↔material mappings, load table, verify/replace scans."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from central.schemas.base import CamelModel, ListQuery, OutModel, RowId, UtcTime

# ---- configuration: feeder slots ---------------------------------------------------------------------


class FeederSlotCreate(CamelModel):
    slot_code: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")
    name: str | None = Field(None, max_length=200)
    position: int | None = Field(None, ge=0, le=100_000)


class FeederSlotUpdate(CamelModel):
    """Only the fields sent are changed; `slotCode` cannot change once the slot has been used."""

    slot_code: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")
    name: str | None = Field(None, max_length=200)
    position: int | None = Field(None, ge=0, le=100_000)


class FeederSlotQuery(ListQuery):
    page_size: int = Field(100, ge=1, le=500)
    locked: bool | None = None


class UnlockBody(CamelModel):
    reason: str | None = Field(None, max_length=500)


class FeederSlotOut(OutModel):
    id: int
    line_id: int
    line_code: str
    slot_code: str
    name: str | None
    position: int | None
    current_material_lot_id: int | None
    current_material_code: str | None = None
    current_lot_no: str | None = None
    is_locked: bool
    failed_attempts: int
    locked_at: UtcTime | None
    locked_reason: str | None
    meta: dict[str, Any]
    created_at: UtcTime
    updated_at: UtcTime


# ---- configuration: slot ↔ material mappings -----------------------------------------------------------


class SlotMappingCreate(CamelModel):
    slot_id: RowId
    material_code: str = Field(min_length=1, max_length=64)
    product_code: str | None = Field(None, min_length=1, max_length=64)
    routing_id: RowId | None = None
    routing_code: str | None = Field(None, min_length=1, max_length=64)
    priority: int = Field(1, ge=0, le=100_000)
    is_alternate: bool = False


class SlotMappingUpdate(CamelModel):
    """Only the fields sent are changed; send `productCode: null` / `routingId: null` to make them generic."""

    material_code: str | None = Field(None, min_length=1, max_length=64)
    product_code: str | None = Field(None, min_length=1, max_length=64)
    routing_id: RowId | None = None
    routing_code: str | None = Field(None, min_length=1, max_length=64)
    priority: int | None = Field(None, ge=0, le=100_000)
    is_alternate: bool | None = None


class SlotMappingQuery(ListQuery):
    page_size: int = Field(100, ge=1, le=500)
    slot_id: RowId | None = None
    line_id: str | None = Field(None, max_length=64)  # id or line code
    material_code: str | None = Field(None, max_length=64)
    product_code: str | None = Field(None, max_length=64)


class SlotMappingOut(OutModel):
    id: int
    slot_id: int
    slot_code: str
    line_id: int
    line_code: str
    material_code: str
    product_code: str | None
    routing_id: int | None
    routing_code: str | None
    priority: int
    is_alternate: bool
    created_at: UtcTime
    updated_at: UtcTime


# ---- run loading ---------------------------------------------------------------------------------------


class LoadTableOut(OutModel):
    run_id: int
    created: int


class VerifyBody(CamelModel):
    run_no: str = Field(min_length=1, max_length=128)
    slot_code: str = Field(min_length=1, max_length=64)
    material_lot_barcode: str = Field(min_length=1, max_length=200)
    operator_id: str | None = Field(None, max_length=120)
    package_qty: int | None = Field(None, ge=0, le=100_000_000)
    reviewed_by: str | None = Field(None, max_length=120)


class ReplaceBody(CamelModel):
    run_no: str = Field(min_length=1, max_length=128)
    slot_code: str = Field(min_length=1, max_length=64)
    new_material_lot_barcode: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(None, max_length=500)  # required; blank → 400 REASON_REQUIRED
    operator_id: str | None = Field(None, max_length=120)
    package_qty: int | None = Field(None, ge=0, le=100_000_000)
    reviewed_by: str | None = Field(None, max_length=120)


class RunLoadingQuery(ListQuery):
    page_size: int = Field(200, ge=1, le=500)
    status: str | None = Field(None, max_length=100)
    slot_code: str | None = Field(None, max_length=64)
    verify_result: str | None = Field(None, max_length=100)


class LoadingRecordOut(OutModel):
    id: int
    run_id: int
    run_no: str
    slot_id: int
    slot_code: str
    material_lot_id: int
    material_code: str
    lot_no: str
    expected_code: str | None
    status: str
    verify_result: str
    fail_reason: str | None
    loaded_at: UtcTime
    loaded_by: str | None
    package_qty: int | None
    reviewed_by: str | None
    reviewed_at: UtcTime | None
    unloaded_at: UtcTime | None
    unloaded_by: str | None
    material_validation: str | None
    meta: dict[str, Any]
    created_at: UtcTime


class ScanOut(LoadingRecordOut):
    """A verify/replace answer: the record plus what the scan did to the expectation and the slot."""

    is_idempotent: bool = False
    material_known: bool
    material_name: str | None
    expectation_status: str
    failed_attempts: int
    slot_locked: bool


class ExpectationOut(OutModel):
    id: int
    run_id: int
    slot_id: int
    slot_code: str
    position: int | None
    expected_material_code: str
    alternates: list[str]
    status: str
    loaded_material_code: str | None
    loaded_at: UtcTime | None
    loaded_by: str | None
    created_at: UtcTime
    updated_at: UtcTime
