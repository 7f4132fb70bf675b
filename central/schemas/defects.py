"""Defects, dispositions and rework tasks (domain.md §3 Defect/Disposition/Rework, §7.6)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

DispositionType = Literal["REWORK", "SCRAP", "HOLD"]


class DefectQuery(ListQuery):
    unit_sn: str | None = Field(None, max_length=128)
    run_no: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=200, description="RECORDED,DISPOSITIONED,CLOSED (comma list)")
    code: str | None = Field(None, max_length=500, description="defect codes (comma list)")


class DefectCreate(CamelModel):
    unit_sn: str = Field(min_length=1, max_length=128)
    code: str = Field(min_length=1, max_length=64)
    location: str | None = Field(None, max_length=200)
    qty: int = Field(1, ge=1, le=1_000_000)
    remark: str | None = Field(None, max_length=2000)


class DispositionCreate(CamelModel):
    type: DispositionType
    reason: str | None = Field(None, max_length=2000)
    # REWORK only: a stepNo of the run's frozen snapshot ≤ the failure step; default = the first step.
    # Ignored for SCRAP and HOLD.
    to_step_no: int | None = Field(None, ge=-1_000_000, le=1_000_000)  # any other step: REWORK_STEP_INVALID


class ReleaseBody(CamelModel):
    reason: str = Field(min_length=1, max_length=2000)


class ReworkTaskQuery(ListQuery):
    unit_sn: str | None = Field(None, max_length=128)
    run_no: str | None = Field(None, max_length=128)
    status: str | None = Field(None, max_length=200, description="OPEN,DONE,CANCELLED (comma list)")


class RepairRecordBody(CamelModel):
    reason: str | None = Field(None, max_length=2000)
    action: str = Field(min_length=1, max_length=2000)
    result: str = Field(min_length=1, max_length=200)
    remark: str | None = Field(None, max_length=2000)


class ReworkCompleteBody(CamelModel):
    remark: str | None = Field(None, max_length=2000)


class FailureStep(OutModel):
    step_no: int
    operation_code: str | None
    operation_name: str | None
    station_code: str | None
    station_name: str | None


class ReworkTaskBrief(OutModel):
    id: int
    status: str
    from_step_no: int
    to_step_no: int
    done_by: str | None
    done_at: UtcTime | None
    # {reason, action, result, remark, recordedBy, recordedAt} as recorded (meta.repairRecordV1)
    repair_record: dict[str, Any] | None


class DispositionOut(OutModel):
    id: int
    type: str
    reason: str | None
    decided_by: str | None
    decided_at: UtcTime
    rework_task: ReworkTaskBrief | None


class DefectOut(OutModel):
    id: int
    unit_sn: str
    unit_status: str
    run_no: str | None
    wo_no: str | None
    track_id: int | None
    code: str
    location: str | None
    qty: int
    status: str
    remark: str | None
    recorded_by: str | None
    failure_step: FailureStep | None
    disposition: DispositionOut | None
    released_by: str | None
    release_reason: str | None
    released_at: str | None
    created_at: UtcTime
    updated_at: UtcTime


class ReworkTaskOut(ReworkTaskBrief):
    defect_id: int
    defect_code: str
    defect_status: str
    disposition_id: int
    unit_sn: str
    unit_status: str
    unit_current_step_no: int
    run_no: str | None
    complete_remark: str | None
    cancel_reason: str | None
    created_at: UtcTime
