"""Track-in/out bodies and station reads."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.schemas.base import CamelModel, OutModel

SN = Field(min_length=1, max_length=128)


class TrackIn(CamelModel):
    sn: str = SN
    wo_no: str = Field(min_length=1, max_length=64)
    run_no: str = Field(min_length=1, max_length=128)


class DataItem(CamelModel):
    spec_name: str = Field(min_length=1, max_length=120)
    # strict: "12" or true in valueNumber is a schema error (422), not silently coerced
    value_number: float | None = Field(None, strict=True)
    value_text: str | None = Field(None, max_length=4000, strict=True)
    value_boolean: bool | None = Field(None, strict=True)
    value_json: Any = None


class TrackOut(CamelModel):
    sn: str = SN
    run_no: str = Field(min_length=1, max_length=128)
    result: Literal["PASS", "FAIL"]
    operator_id: str | None = Field(None, max_length=120)
    data: list[DataItem] = Field(default_factory=list, max_length=500)
    defect_code: str | None = Field(None, max_length=64)
    defect_location: str | None = Field(None, max_length=200)
    defect_remark: str | None = Field(None, max_length=2000)


class TrackInOut(OutModel):
    status: str
    track_id: int
    step_no: int
    inspection_override: bool | None = None
    defect_id: int | None = None
    next_step_no: int | None = None
