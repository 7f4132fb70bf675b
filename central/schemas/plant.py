"""Request/response shapes of plant master data: lines, station groups, stations, operations, work centers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime
from central.schemas.routing import Code, ProcessType, StationType

# Readiness item types a line may enable now (domain.md: PREP_* and TIME_RULE come in a later phase).
ReadinessType = Literal["EQUIPMENT", "MATERIAL", "ROUTE", "STENCIL", "SOLDER_PASTE", "LOADING"]
# Line meta keys owned by dedicated endpoints (readiness config): not writable through PATCH /lines.
RESERVED_LINE_META = frozenset({"readinessChecks"})


# ---- lines ----------------------------------------------------------------------------------------------


class ReadinessChecks(CamelModel):
    enabled: list[ReadinessType] = Field(max_length=20)

    @field_validator("enabled")
    @classmethod
    def _dedupe(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class LineCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    process_type: ProcessType
    readiness_checks: ReadinessChecks | None = None


class LineUpdate(CamelModel):
    """Only the fields sent change. `meta` is merged key by key (null removes a key); readiness config
    has its own endpoint (`PUT /lines/{lineId}/readiness-config`)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    process_type: ProcessType | None = None
    meta: dict[str, Any] | None = Field(None, max_length=50)

    @field_validator("meta")
    @classmethod
    def _no_reserved_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        reserved = sorted(RESERVED_LINE_META & set(v or {}))
        if reserved:
            raise ValueError(f"meta key(s) {', '.join(reserved)} are set through their own endpoint")
        return v


class LineQuery(ListQuery):
    process_type: str | None = Field(None, max_length=100)


class ReadinessChecksOut(OutModel):
    enabled: list[str]


class LineOut(OutModel):
    id: int
    code: str
    name: str
    process_type: str
    # null: the line has no readiness list (every type is evaluated).
    readiness_checks: ReadinessChecksOut | None
    meta: dict[str, Any]
    created_at: UtcTime
    updated_at: UtcTime


# ---- station groups and stations ------------------------------------------------------------------------


class StationGroupCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    line_code: str | None = Field(None, min_length=1, max_length=64)


class StationGroupQuery(ListQuery):
    line_code: str | None = Field(None, max_length=500)


class StationGroupOut(OutModel):
    id: int
    code: str
    name: str
    line_id: int | None
    line_code: str | None
    station_codes: list[str]
    created_at: UtcTime
    updated_at: UtcTime


class StationCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    line_code: str = Field(min_length=1, max_length=64)
    group_code: str | None = Field(None, min_length=1, max_length=64)
    station_type: StationType = "MANUAL"


class StationUpdate(CamelModel):
    """Only the fields sent change; `groupCode: null` takes the station out of its group."""

    name: str | None = Field(None, min_length=1, max_length=200)
    group_code: str | None = Field(None, min_length=1, max_length=64)
    station_type: StationType | None = None
    is_active: bool | None = None


class StationQuery(ListQuery):
    line_code: str | None = Field(None, max_length=500)
    station_type: str | None = Field(None, max_length=100)
    group_code: str | None = Field(None, max_length=500)
    is_active: bool | None = None


class StationOut(OutModel):
    id: int
    code: str
    name: str
    line_id: int
    line_code: str
    group_id: int | None
    group_code: str | None
    station_type: str
    is_active: bool
    meta: dict[str, Any]
    created_at: UtcTime
    updated_at: UtcTime


# ---- operations and work centers ------------------------------------------------------------------------


class OperationCreate(CamelModel):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    default_type: StationType = "MANUAL"
    is_key_quality: bool = False


class OperationUpdate(CamelModel):
    name: str | None = Field(None, min_length=1, max_length=200)
    default_type: StationType | None = None
    is_key_quality: bool | None = None


class OperationQuery(ListQuery):
    source_system: str | None = Field(None, max_length=100)
    default_type: str | None = Field(None, max_length=100)
    is_key_quality: bool | None = None


class OperationOut(OutModel):
    id: int
    code: str
    name: str
    default_type: str | None
    is_key_quality: bool
    source_system: str
    created_at: UtcTime
    updated_at: UtcTime


class WorkCenterQuery(ListQuery):
    department: str | None = Field(None, max_length=500)
    source_system: str | None = Field(None, max_length=100)


class WorkCenterOut(OutModel):
    id: int
    code: str
    name: str
    department: str | None
    source_system: str
    created_at: UtcTime
    updated_at: UtcTime
