"""SPI/AOI inspection results and device data pushed by equipment or keyed in (domain.md §4.4, §4.5)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from central.schemas.base import CamelModel, ListQuery, OutModel, RowId, StepNo, UtcTime
from central.schemas.consumables import EventId, Source

RunNo = Annotated[str, Field(min_length=1, max_length=128)]
UnitSn = Annotated[str, Field(min_length=1, max_length=128)]
StationCode = Annotated[str, Field(min_length=1, max_length=64)]
EquipmentId = Annotated[str, Field(min_length=1, max_length=64)]
OperatorId = Annotated[str, Field(min_length=1, max_length=120)]
InspectionType = Literal["SPI", "AOI"]
Result = Literal["PASS", "FAIL"]


# ---- SPI / AOI ---------------------------------------------------------------------------------------


class InspectionDefectIn(CamelModel):
    code: str = Field(min_length=1, max_length=64)
    location: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    # How many of this defect the machine counted at that location; the Defect row carries it (default 1).
    qty: int | None = Field(None, ge=1, le=1_000_000)


class InspectionResultIn(CamelModel):
    event_id: EventId
    event_time: AwareDatetime
    run_no: RunNo
    station_code: StationCode
    unit_sn: UnitSn
    step_no: StepNo
    track_id: RowId | None = None
    inspection_type: InspectionType
    result: Result
    defects: list[InspectionDefectIn] | None = Field(None, max_length=500)
    raw_data: dict[str, Any] | None = None
    source: Source
    equipment_id: EquipmentId | None = None
    operator_id: OperatorId | None = None
    meta: dict[str, Any] | None = None


class InspectionResultReceipt(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    run_no: str
    station_code: str
    unit_sn: str
    step_no: int
    inspection_type: str
    result: str
    source: str
    track_id: int | None
    defects_created: int
    defect_ids: list[int]
    received_at: UtcTime
    is_duplicate: bool


class InspectionResultQuery(ListQuery):
    run_no: str | None = Field(None, max_length=2000, description="run numbers (comma list)")
    unit_sn: str | None = Field(None, max_length=2000, description="unit SNs (comma list)")
    station_code: str | None = Field(None, max_length=2000, description="station codes (comma list)")
    inspection_type: str | None = Field(None, max_length=100, description="SPI,AOI (comma list)")
    result: str | None = Field(None, max_length=100, description="PASS,FAIL (comma list)")
    event_from: AwareDatetime | None = Field(None, description="eventTime ≥ this")
    event_to: AwareDatetime | None = Field(None, description="eventTime ≤ this")

    @model_validator(mode="after")
    def _window(self) -> InspectionResultQuery:
        if self.event_from and self.event_to and self.event_from > self.event_to:
            raise ValueError("eventFrom must not be after eventTo")
        return self


class InspectionResultOut(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    run_no: str
    station_code: str
    unit_sn: str
    step_no: int
    inspection_type: str
    result: str
    defects: list[Any]
    raw_data: dict[str, Any] | None
    source: str
    equipment_id: str | None
    operator_id: str | None
    track_id: int | None
    defect_ids: list[Any]
    received_at: UtcTime
    meta: dict[str, Any]
    created_at: UtcTime


# ---- device data -------------------------------------------------------------------------------------


class DeviceDataItem(CamelModel):
    """One value: the spec by id or by name (exactly one), and the value field matching its dataType."""

    spec_id: RowId | None = None
    spec_name: str | None = Field(None, min_length=1, max_length=120)
    # strict: "12" or true in valueNumber is a schema error (422), not silently coerced
    value_number: float | None = Field(None, strict=True, allow_inf_nan=False)
    value_text: str | None = Field(None, max_length=4000, strict=True)
    value_boolean: bool | None = Field(None, strict=True)
    value_json: Any = None
    collected_at: AwareDatetime | None = None


class DeviceDataIn(CamelModel):
    event_id: EventId
    event_time: AwareDatetime
    source: Source
    run_no: RunNo | None = None
    unit_sn: UnitSn | None = None
    station_code: StationCode | None = None
    step_no: StepNo | None = None
    track_id: RowId | None = None
    carrier_track_id: RowId | None = None
    operation_id: RowId | None = None
    equipment_id: EquipmentId | None = None
    operator_id: OperatorId | None = None
    # An empty list is refused by the service (INGEST_PAYLOAD_INVALID), as domain.md §4.5 names it.
    data: list[DeviceDataItem] = Field(default_factory=list, max_length=500)
    meta: dict[str, Any] | None = None


class DeviceDataReceipt(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    source: str
    run_no: str | None
    unit_sn: str | None
    station_code: str | None
    step_no: int | None
    track_id: int | None
    carrier_track_id: int | None
    data_values_created: int
    received_at: UtcTime
    is_duplicate: bool


class DeviceDataQuery(ListQuery):
    event_id: str | None = Field(None, max_length=2000, description="event ids (comma list)")
    run_no: str | None = Field(None, max_length=2000, description="run numbers (comma list)")
    unit_sn: str | None = Field(None, max_length=2000, description="unit SNs (comma list)")
    station_code: str | None = Field(None, max_length=2000, description="station codes (comma list)")
    step_no: StepNo | None = None
    source: str | None = Field(None, max_length=100, description="AUTO,MANUAL (comma list)")
    event_from: AwareDatetime | None = Field(None, description="eventTime ≥ this")
    event_to: AwareDatetime | None = Field(None, description="eventTime ≤ this")

    @model_validator(mode="after")
    def _window(self) -> DeviceDataQuery:
        if self.event_from and self.event_to and self.event_from > self.event_to:
            raise ValueError("eventFrom must not be after eventTo")
        return self


class DeviceDataOut(OutModel):
    id: int
    event_id: str
    event_time: UtcTime
    source: str
    run_no: str | None
    unit_sn: str | None
    station_code: str | None
    step_no: int | None
    track_id: int | None
    carrier_track_id: int | None
    operation_id: int | None
    equipment_id: str | None
    operator_id: str | None
    data: list[Any]
    data_values_created: int
    received_at: UtcTime
    meta: dict[str, Any]
    created_at: UtcTime
