"""Outbound ERP completion feedback (domain.md §9 Push, §3 MesEvent) and the integration log."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

EVENT_STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")


def _csv_of(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    """A comma-separated filter whose every value is one of `allowed` (an unknown one is a typo: 422)."""
    if value is None:
        return None
    parts = [v.strip().upper() for v in value.split(",") if v.strip()]
    bad = [v for v in parts if v not in allowed]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; allowed: {', '.join(allowed)}")
    return ",".join(parts) or None


class EnqueueReceipt(OutModel):
    event_id: int
    idempotency_key: str
    status: str


class RetryReceipt(OutModel):
    event_id: int
    status: str
    next_attempt_at: UtcTime | None


class OutboundEventQuery(CamelModel):
    """`limit` 1..200 (domain.md §1: outbound events answer `{items}`, not a page)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    status: str | None = Field(None, max_length=200)
    limit: int = Field(50, ge=1, le=200)

    @field_validator("status")
    @classmethod
    def _statuses(cls, v: str | None) -> str | None:
        return _csv_of(v, EVENT_STATUSES, "status")


class OutboundEventOut(OutModel):
    event_id: int
    event_type: str
    status: str
    attempts: int
    max_attempts: int
    next_attempt_at: UtcTime | None
    claimed_at: UtcTime | None
    processed_at: UtcTime | None
    occurred_at: UtcTime
    idempotency_key: str
    entity_type: str | None
    entity_id: str | None
    run_id: int | None
    error: str | None
    payload: dict[str, Any]
    retention_until: UtcTime | None
    created_at: UtcTime
    updated_at: UtcTime
    # FAILED with no next attempt: delivery gave up; only the retry endpoint sends it again.
    dead_letter: bool


class OutboundEventList(OutModel):
    items: list[OutboundEventOut]


class MessageQuery(ListQuery):
    """Integration log filters; direction/system/status/entityType take comma-separated values."""

    direction: str | None = Field(None, max_length=20)
    system: str | None = Field(None, max_length=200)
    status: str | None = Field(None, max_length=200)
    entity_type: str | None = Field(None, max_length=200)
    business_key: str | None = Field(None, max_length=255)
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None

    @field_validator("direction")
    @classmethod
    def _direction(cls, v: str | None) -> str | None:
        return _csv_of(v, ("IN", "OUT"), "direction")


class MessageSummary(OutModel):
    """A list row: everything but the payload (fetch one message for it)."""

    id: int
    direction: str
    system: str
    entity_type: str
    business_key: str | None
    dedupe_key: str | None
    status: str
    error: str | None
    meta: dict[str, Any] | None
    created_at: UtcTime
    updated_at: UtcTime


class MessageOut(MessageSummary):
    payload: dict[str, Any] | list[Any] | None
