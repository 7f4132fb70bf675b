"""Audit log query and rows."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, Field

from central.schemas.base import ListQuery, OutModel, RowId, UtcTime


class AuditQuery(ListQuery):
    actor_id: RowId | None = None
    entity_type: str | None = Field(None, max_length=40)
    entity_id: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=80)
    status: str | None = Field(None, pattern="^(SUCCESS|FAIL)$")
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None


class AuditOut(OutModel):
    id: int
    occurred_at: UtcTime
    entity_type: str
    entity_id: str | None
    entity_display: str | None
    action: str
    actor_id: int | None
    actor_name: str | None
    actor_role: str | None
    actor_type: str
    status: str
    error_code: str | None
    error_message: str | None
    diff: list[Any] | None
    payload: dict[str, Any] | None
    request_id: str | None
    ip: str | None
    user_agent: str | None
    trace_id: str | None
    idempotency_key: str | None
    station_id: int | None
