"""Route execution configuration, compiled versions and FAI-template binding."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field

from central.schemas.base import CamelModel, OutModel, RowId, StepNo, UtcTime


class ExecutionConfigIn(CamelModel):
    # scopeType stays a string here: a wrong value is the business refusal SCOPE_TYPE_INVALID (400).
    scope_type: str = Field("ROUTE", max_length=16)
    step_no: StepNo | None = None
    station_type: str | None = Field(None, pattern="^(MANUAL|AUTO|BATCH|TEST)$")
    station_group_code: str | None = Field(None, max_length=64)
    allowed_station_codes: list[str] | None = Field(None, max_length=200)
    # domain.md spells it requiresFAI (as the snapshot does); both spellings are accepted.
    requires_fai: bool | None = Field(
        None, validation_alias=AliasChoices("requiresFai", "requiresFAI", "requires_fai")
    )
    requires_authorization: bool | None = None
    data_spec_ids: list[RowId] | None = Field(None, max_length=200)
    ingest_mapping: dict[str, Any] | None = None


class ExecutionConfigPatch(ExecutionConfigIn):
    scope_type: str | None = Field(None, max_length=16)  # type: ignore[assignment]


class ExecutionConfigOut(OutModel):
    id: int
    scope_type: str
    step_no: int | None
    source_step_key: str | None
    station_type: str | None
    station_group_code: str | None
    allowed_station_ids: list[int]
    allowed_station_codes: list[str]
    requires_fai: bool | None
    requires_authorization: bool | None
    data_spec_ids: list[int]
    ingest_mapping: dict[str, Any] | None
    updated_at: UtcTime


class RouteVersionOut(OutModel):
    id: int
    routing_code: str
    version_no: int
    status: str
    snapshot: dict[str, Any]
    errors: list[Any]
    compiled_at: UtcTime


class FaiTemplateBinding(CamelModel):
    fai_template_id: RowId | None
