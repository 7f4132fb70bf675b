"""MRB decisions on an ON_HOLD run and rework runs (domain.md §7.5)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from central.schemas.base import CamelModel, OutModel, RowId
from central.schemas.runs import RunOut

ReworkType = Literal["REUSE_PREP", "FULL_PREP"]


class MrbDecisionBody(CamelModel):
    decision: Literal["RELEASE", "REWORK", "SCRAP"]
    # Required for REWORK (REWORK_TYPE_REQUIRED); ignored for RELEASE and SCRAP.
    rework_type: ReworkType | None = None
    fai_waiver: bool | None = None
    fai_waiver_reason: str | None = Field(None, max_length=2000)
    reason: str = Field(min_length=4, max_length=2000)


class ReworkBody(CamelModel):
    # Optional in the schema so the documented codes answer (MRB_DECISION_REQUIRED, REWORK_TYPE_REQUIRED).
    rework_type: ReworkType | None = None
    mrb_decision_id: RowId | None = None
    fai_waiver: bool | None = None
    waiver_reason: str | None = Field(None, max_length=2000)


class MrbDecisionOut(OutModel):
    run: RunOut
    rework_run_no: str | None = None


class ReworkOut(OutModel):
    rework_run_no: str
    status: str
    authorization_type: str
    mrb_fai_waiver: bool
    parent_run_no: str
    parent_run_status: str
