"""Edge agents as central sees them (api.md "Edge operations"): registration and last reported status."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from central.schemas.base import CamelModel, OutModel, UtcTime

EdgeId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class EdgeCreate(CamelModel):
    edge_id: EdgeId
    line_code: str | None = Field(None, min_length=1, max_length=64)


class EdgeUpdate(CamelModel):
    is_active: bool | None = None
    line_code: str | None = Field(None, min_length=1, max_length=64)


class EdgeOut(OutModel):
    edge_id: str
    line_code: str | None
    is_active: bool
    state: str
    online: bool
    version: str | None
    started_at: UtcTime | None
    backlog: int | None
    oldest_pending_at: UtcTime | None
    dead_letters: int | None
    devices: list[dict[str, Any]]
    alarms: list[str]
    last_status_at: UtcTime | None
    last_batch_id: str | None
    last_batch_at: UtcTime | None
    events_accepted: int
    events_duplicate: int
    events_rejected: int


class EdgeRegistered(OutModel):
    edge: EdgeOut
    # Shown once: the edge's central API key (REST calls and `mes-edge status --central`).
    api_key: str
