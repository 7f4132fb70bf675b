"""Stencil and solder-paste status pushes, and the line bindings of both (domain.md §9 Push, §2)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from central.schemas.base import CamelModel, OutModel, UtcTime

# Ids coming from devices and stencil/paste management systems: printable, no spaces at the ends.
EventId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7E][\x20-\x7E]*$")]
ConsumableId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E][\x20-\x7E]*$")]
Source = Literal["AUTO", "MANUAL"]
StencilStatus = Literal["READY", "NOT_READY", "MAINTENANCE"]
PasteStatus = Literal["COMPLIANT", "NON_COMPLIANT", "EXPIRED"]


class StencilStatusIn(CamelModel):
    event_id: EventId
    event_time: AwareDatetime
    stencil_id: ConsumableId
    version: str | None = Field(None, min_length=1, max_length=64)
    status: StencilStatus
    tension_value: float | None = Field(None, ge=0, le=1_000_000, allow_inf_nan=False)
    last_cleaned_at: AwareDatetime | None = None
    source: Source
    operator_id: str | None = Field(None, min_length=1, max_length=120)


class SolderPasteStatusIn(CamelModel):
    event_id: EventId
    event_time: AwareDatetime
    lot_id: ConsumableId
    status: PasteStatus
    expires_at: AwareDatetime | None = None
    thawed_at: AwareDatetime | None = None
    stirred_at: AwareDatetime | None = None
    source: Source
    operator_id: str | None = Field(None, min_length=1, max_length=120)


class StencilBind(CamelModel):
    stencil_id: ConsumableId


class SolderPasteBind(CamelModel):
    lot_id: ConsumableId


class _Receipt(OutModel):
    id: int
    event_id: str
    status: str
    event_time: UtcTime
    source: str
    received_at: UtcTime
    is_duplicate: bool


class StencilStatusReceipt(_Receipt):
    stencil_id: str


class SolderPasteStatusReceipt(_Receipt):
    lot_id: str


class _Binding(OutModel):
    id: int
    line_id: int
    line_code: str
    is_current: bool
    bound_at: UtcTime
    bound_by: str | None
    unbound_at: UtcTime | None
    unbound_by: str | None


class StencilBindingOut(_Binding):
    stencil_id: str


class SolderPasteBindingOut(_Binding):
    lot_id: str


class StencilStatusOut(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    stencil_id: str
    version: str | None
    status: str
    tension_value: float | None
    last_cleaned_at: UtcTime | None
    source: str
    operator_id: str | None
    received_at: UtcTime


class SolderPasteStatusOut(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    lot_id: str
    status: str
    expires_at: UtcTime | None
    thawed_at: UtcTime | None
    stirred_at: UtcTime | None
    source: str
    operator_id: str | None
    received_at: UtcTime


class StencilView(OutModel):
    binding: StencilBindingOut
    latest_status: StencilStatusOut | None


class SolderPasteView(OutModel):
    binding: SolderPasteBindingOut
    latest_status: SolderPasteStatusOut | None
    # The latest status, EXPIRED once a COMPLIANT record's expiresAt has passed (what readiness sees).
    effective_status: str | None


class LineConsumables(OutModel):
    line_id: int
    line_code: str
    stencil: StencilView | None
    solder_paste: SolderPasteView | None
