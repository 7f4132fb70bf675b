"""MRB: decide on a run held by a failed OQC (RELEASE/REWORK/SCRAP) and its rework runs (domain.md §7.5)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.mrb import MrbDecisionBody, MrbDecisionOut, ReworkBody, ReworkOut
from central.schemas.runs import RunOut
from central.services import mrb

router = Router(tag="quality", entity_type="RUN")

PERMS = ("quality:disposition",)


@router.post("/runs/{runNo}/mrb-decision", perms=PERMS, action="MRB_DECISION")
async def mrb_decision(rq: Req, body: MrbDecisionBody) -> MrbDecisionOut:
    """MRB decision on an ON_HOLD run with a failed OQC; an FAI waiver also needs quality:fai."""
    return await rq.write(mrb.decide, rq.path("runNo"), body)


@router.post("/runs/{runNo}/rework", perms=PERMS, action="RUN_REWORK_CREATE")
async def create_rework_run(rq: Req, body: ReworkBody) -> ReworkOut:
    """Create the rework run of an ON_HOLD run from one of its failed OQCs (parent → CLOSED_REWORK)."""
    return await rq.write(mrb.create_rework, rq.path("runNo"), body)


@router.get("/runs/{runNo}/rework-runs", perms=mrb.LIST_PERMS)
async def list_rework_runs(rq: Req) -> list[RunOut]:
    """The rework runs created from a run, oldest first."""
    return await rq.read(mrb.rework_runs, rq.path("runNo"))
