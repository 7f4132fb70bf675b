"""The edge ↔ central wire contract (edge.md "Events" and "MQTT protocol v1"), shared by both sides.

Central validates every inbound batch against these models; the edge builds its batches from them, so a change
here is a protocol change (bump SCHEMA_VERSION).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

SCHEMA_VERSION = 1
MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 256 * 1024

EventKind = Literal[
    "INGEST",
    "TRACK_IN",
    "TRACK_OUT",
    "INSPECTION_RESULT",
    "DEVICE_DATA",
    "STENCIL_STATUS",
    "SOLDER_PASTE_STATUS",
    "EQUIPMENT_STATUS",
]
EVENT_KINDS: tuple[str, ...] = EventKind.__args__  # type: ignore[attr-defined]

AckStatus = Literal["ACCEPTED", "DUPLICATE", "REJECTED", "RETRY"]


def _aware_utc(v: datetime) -> datetime:
    # Machines' clocks are the track time (used verbatim): a naive time would be ambiguous, so refuse it.
    if v.tzinfo is None:
        raise ValueError("must carry a timezone (UTC, e.g. 2026-01-01T08:00:00.000Z)")
    try:
        return v.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00; a ValueError makes it a validation error
        raise ValueError("is out of range once converted to UTC") from None


AwareTime = Annotated[datetime, AfterValidator(_aware_utc)]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in code; unknown fields refused so a typo is not silently dropped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class EdgeEvent(WireModel):
    event_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=1, le=2**63 - 1)  # stored as BIGINT
    kind: EventKind
    occurred_at: AwareTime
    station_code: str | None = Field(default=None, max_length=64)
    payload: dict[str, Any]


class EventBatch(WireModel):
    schema_version: Literal[1]
    edge_id: str = Field(min_length=1, max_length=64)
    line_code: str | None = Field(default=None, max_length=64)
    batch_id: str = Field(min_length=1, max_length=128)
    sent_at: AwareTime
    events: list[EdgeEvent] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class AckResult(WireModel):
    event_id: str
    status: AckStatus
    code: str | None = None
    message: str | None = None


class Ack(WireModel):
    batch_id: str
    results: list[AckResult]


class DeviceStatus(WireModel):
    id: str
    state: str  # CONNECTED | DISCONNECTED | STOPPED | …
    last_ok_at: AwareTime | None = None
    last_error: str | None = None


class EdgeStatus(WireModel):
    state: Literal["ONLINE", "OFFLINE"]
    version: str | None = None
    started_at: AwareTime | None = None
    backlog: int = 0
    oldest_pending_at: AwareTime | None = None
    dead_letters: int = 0
    devices: list[DeviceStatus] = Field(default_factory=list)
    # Not in the table of edge.md but needed by an operator: outbox full alarm and counter gaps.
    alarms: list[str] = Field(default_factory=list)
