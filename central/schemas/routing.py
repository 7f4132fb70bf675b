"""Request/response shapes of routing administration, data-collection specs and FAI templates."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, AwareDatetime, Field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

# Codes travel in paths (/routes/{routingCode}): no blanks, slashes or URL metacharacters.
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")]
ProcessType = Literal["SMT", "DIP"]
StationType = Literal["MANUAL", "AUTO", "BATCH", "TEST"]


# ---- routings -------------------------------------------------------------------------------------------


class RoutingStepIn(CamelModel):
    step_no: int = Field(ge=1, le=1_000_000)
    operation_code: str = Field(min_length=1, max_length=64)
    station_group_code: str | None = Field(None, min_length=1, max_length=64)
    station_type: StationType | None = None
    # domain.md spells it requiresFAI; both spellings are accepted.
    requires_fai: bool = Field(
        False, validation_alias=AliasChoices("requiresFai", "requiresFAI", "requires_fai")
    )
    is_last: bool = False


class RoutingCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    product_code: str | None = Field(None, max_length=64)
    process_type: ProcessType
    version: str | None = Field(None, max_length=32)
    effective_from: AwareDatetime | None = None
    effective_to: AwareDatetime | None = None
    is_active: bool = True
    steps: list[RoutingStepIn] = Field(default_factory=list, max_length=500)


class RoutingUpdate(CamelModel):
    """Only the fields sent change; null clears productCode, version and the effective dates."""

    name: str | None = Field(None, min_length=1, max_length=200)
    product_code: str | None = Field(None, max_length=64)
    process_type: ProcessType | None = None
    version: str | None = Field(None, max_length=32)
    effective_from: AwareDatetime | None = None
    effective_to: AwareDatetime | None = None
    is_active: bool | None = None


class RoutingStepsReplace(CamelModel):
    steps: list[RoutingStepIn] = Field(max_length=500)


class RoutingQuery(ListQuery):
    source_system: str | None = Field(None, max_length=100)
    process_type: str | None = Field(None, max_length=100)
    is_active: bool | None = None


class RoutingStepOut(OutModel):
    id: int
    step_no: int
    operation_id: int
    operation_code: str
    operation_name: str
    station_group_id: int | None
    station_group_code: str | None
    station_type: str | None
    is_last: bool
    requires_fai: bool
    source_step_key: str | None


class RouteVersionSummary(OutModel):
    id: int
    version_no: int
    status: str
    signature: str
    error_count: int
    compiled_at: UtcTime


class RoutingOut(OutModel):
    id: int
    code: str
    name: str
    source_system: str
    source_key: str | None
    product_code: str | None
    process_type: str | None
    version: str | None
    effective_from: UtcTime | None
    effective_to: UtcTime | None
    is_active: bool
    fai_template_id: int | None
    fai_template_code: str | None
    step_count: int
    created_at: UtcTime
    updated_at: UtcTime


class RoutingDetail(RoutingOut):
    steps: list[RoutingStepOut]
    latest_version: RouteVersionSummary | None


# ---- data-collection specs ------------------------------------------------------------------------------


class SpecLimits(CamelModel):
    min: float | None = None
    max: float | None = None
    target: float | None = None
    lsl: float | None = None
    usl: float | None = None
    unit: str | None = Field(None, max_length=32)


class DataSpecCreate(CamelModel):
    operation_code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=120)
    item_type: Literal["KEY", "OBSERVATION"] = "KEY"
    data_type: Literal["NUMBER", "TEXT", "BOOLEAN", "JSON"]
    method: Literal["AUTO", "MANUAL"] = "MANUAL"
    trigger_type: Literal["EVENT", "TIME", "EACH_UNIT", "EACH_CARRIER"] = "EACH_UNIT"
    spec: SpecLimits | None = None
    alarm: dict[str, Any] | None = None
    is_required: bool = False
    is_active: bool = True


class DataSpecUpdate(CamelModel):
    """Only the fields sent change; `spec` and `alarm` are replaced whole (null clears them)."""

    operation_code: str | None = Field(None, min_length=1, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=120)
    item_type: Literal["KEY", "OBSERVATION"] | None = None
    data_type: Literal["NUMBER", "TEXT", "BOOLEAN", "JSON"] | None = None
    method: Literal["AUTO", "MANUAL"] | None = None
    trigger_type: Literal["EVENT", "TIME", "EACH_UNIT", "EACH_CARRIER"] | None = None
    spec: SpecLimits | None = None
    alarm: dict[str, Any] | None = None
    is_required: bool | None = None
    is_active: bool | None = None


class DataSpecQuery(ListQuery):
    operation_code: str | None = Field(None, max_length=500)
    is_active: bool | None = None


class DataSpecOut(OutModel):
    id: int
    operation_id: int
    operation_code: str
    operation_name: str
    name: str
    item_type: str
    data_type: str
    method: str
    trigger_type: str
    spec: dict[str, Any] | None
    alarm: dict[str, Any] | None
    is_required: bool
    is_active: bool
    created_at: UtcTime
    updated_at: UtcTime


# ---- FAI templates --------------------------------------------------------------------------------------


class FaiItemIn(CamelModel):
    seq: int = Field(ge=1, le=100_000)
    item_name: str = Field(min_length=1, max_length=200)
    item_spec: str | None = Field(None, max_length=500)
    required: bool = True


class FaiTemplateCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    product_code: str | None = Field(None, max_length=64)
    process_type: ProcessType | None = None
    version: str | None = Field(None, max_length=32)
    is_active: bool = True
    items: list[FaiItemIn] = Field(default_factory=list, max_length=500)


class FaiTemplateUpdate(CamelModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    is_active: bool | None = None
    items: list[FaiItemIn] | None = Field(None, max_length=500)


class FaiTemplateQuery(ListQuery):
    product_code: str | None = Field(None, max_length=500)
    process_type: str | None = Field(None, max_length=100)
    is_active: bool | None = None


class FaiTemplateItemOut(OutModel):
    id: int
    seq: int
    item_name: str
    item_spec: str | None
    required: bool


class FaiTemplateOut(OutModel):
    id: int
    code: str
    name: str
    product_code: str | None
    process_type: str | None
    version: str | None
    is_active: bool
    items: list[FaiTemplateItemOut]
    created_at: UtcTime
    updated_at: UtcTime
