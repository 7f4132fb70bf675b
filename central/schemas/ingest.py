"""Ingest bodies (domain.md §4.3): the generic event and the three typed forms of the seed contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field

from central.schemas.base import CamelModel, OutModel

Key = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[\x21-\x7E][\x20-\x7E]*$")]
System = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\x21-\x7E][\x20-\x7E]*$")]
EventType = Literal["AUTO", "BATCH", "TEST"]


class IngestEventIn(CamelModel):
    """`occurredAt` and `payload` are checked by the service (a bad time or a null payload is the business
    refusal INGEST_PAYLOAD_INVALID, answered after the dedupe lookup), so they are typed loosely here."""

    dedupe_key: Key
    source_system: System
    event_type: EventType
    occurred_at: Any = Field(description="ISO-8601 time with an offset: the machine's time, used verbatim")
    run_no: str | None = Field(None, min_length=1, max_length=128)
    payload: Any = Field(description="The equipment's own JSON object, read through the step's ingestMapping")
    meta: dict[str, Any] | None = None


class IngestReceipt(OutModel):
    event_id: int
    duplicate: bool
    status: Literal["RECEIVED"] = "RECEIVED"


class Measurement(CamelModel):
    name: str = Field(min_length=1, max_length=120)
    value: Any = None
    unit: str | None = Field(None, max_length=32)
    judge: str | None = Field(None, max_length=16)
    min: float | None = None
    max: float | None = None


class _TypedIngest(CamelModel):
    """The seed contract's flat forms. Without a dedupeKey the key is derived from the content (TEST: the
    testResultId), so an identical resend is a duplicate; without occurredAt the server's time is used."""

    dedupe_key: Key | None = None
    source_system: System | None = None
    occurred_at: Any = None
    run_no: str | None = Field(None, min_length=1, max_length=128)
    station_code: str | None = Field(None, max_length=64)
    type: Literal["TRACK_OUT"] | None = None
    result: str | None = Field(None, max_length=32)
    data: dict[str, Any] | None = None  # {measurementName: value}
    measurements: list[Measurement] | None = Field(None, max_length=1000)
    meta: dict[str, Any] | None = None


class EquipmentEventIn(_TypedIngest):
    sn: str | None = Field(None, max_length=128)


class TestResultIn(_TypedIngest):
    __test__ = False  # not a pytest class

    sn: str | None = Field(None, max_length=128)
    test_result_id: str | None = Field(None, max_length=128)


class BatchEventIn(_TypedIngest):
    carrier_no: str | None = Field(
        None, max_length=64, validation_alias=AliasChoices("carrierNo", "carrierCode", "carrier_no")
    )
    sns: list[str] | None = Field(
        None, max_length=1000, validation_alias=AliasChoices("sns", "snList", "sn_list")
    )
