"""MRB decisions on a run held by a failed OQC, and rework runs (domain.md §7.5, §3 Run/Unit).

RELEASE → run COMPLETED; SCRAP → run and every unit SCRAPPED; REWORK → run CLOSED_REWORK and a rework
run `{runNo}-RW{n}` (n = 1 + rework runs of that parent, so a rework of a rework run is `{runNo}-RW1-RW1`)
that takes over every unit of the parent, QUEUED at the first step of the frozen snapshot. A decided run
answers any further decision with the stored outcome (domain.md §1: MRB on a decided run is a success no-op).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from central.db.models import Inspection, Run, Unit
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import Forbidden, NotFound, Rejected
from central.domain.states import RUN, RUN_TERMINAL, UNIT
from central.schemas.mrb import MrbDecisionBody, ReworkBody
from central.services import hooks
from central.services.runs import get_run, run_out, run_snapshot, version_of
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

# Waiving the FAI of a rework run is an FAI decision: the MRB member must also hold the FAI permission.
WAIVER_PERMISSION = "quality:fai"
LIST_PERMS = ("run:read", "quality:disposition")
_RUN_ACTION = {"RELEASE": "mrb_release", "REWORK": "mrb_rework", "SCRAP": "mrb_scrap"}


async def latest_oqc(uow: UnitOfWork, run: Run) -> Inspection | None:
    return await uow.session.scalar(
        select(Inspection)
        .where(Inspection.run_id == run.id, Inspection.type == "OQC")
        .order_by(Inspection.created_at.desc(), Inspection.id.desc())
        .limit(1)
    )


def is_decided(run: Run) -> bool:
    """The run went through MRB already (its outcome is final)."""
    return run.mrb_decision_id is not None and run.status in RUN_TERMINAL


async def latest_rework_run(uow: UnitOfWork, parent: Run) -> Run | None:
    return await uow.session.scalar(
        select(Run).where(Run.parent_run_id == parent.id).order_by(Run.id.desc()).limit(1)
    )


def _snapshot(run: Run) -> dict[str, Any]:
    return {
        **run_snapshot(run),
        "mrbDecisionId": run.mrb_decision_id,
        "mrbAuthorizedBy": run.mrb_authorized_by,
    }


def _check_waiver(
    uow: UnitOfWork, waiver: bool, reason: str | None, decision: str, rework_type: str | None
) -> None:
    """faiWaiver needs its reason, the waiver permission, and a REWORK with REUSE_PREP (in that order)."""
    if not waiver:
        return
    if not reason:
        raise Rejected("FAI_WAIVER_REASON_REQUIRED", "An FAI waiver needs a reason")
    if not uow.actor.has_any((WAIVER_PERMISSION,)):
        raise Forbidden(
            "FAI_WAIVER_NOT_ALLOWED",
            f"Waiving the FAI of a rework run needs the {WAIVER_PERMISSION} permission",
        )
    if decision != "REWORK" or rework_type != "REUSE_PREP":
        raise Rejected(
            "FAI_WAIVER_NOT_ALLOWED", "An FAI waiver is allowed only for a REWORK decision with REUSE_PREP"
        )


async def decide(uow: UnitOfWork, run_no: str, body: MrbDecisionBody) -> dict[str, Any]:
    """POST /runs/:runNo/mrb-decision → {run (the decided run), reworkRunNo?}."""
    run = await get_run(uow, run_no, lock=True)
    if is_decided(run):
        child = await latest_rework_run(uow, run) if run.status == "CLOSED_REWORK" else None
        uow.audit(
            run.id,
            run.run_no,
            entity_type="RUN",
            action="MRB_DECISION",
            payload={**(uow.ctx.payload or {}), "noop": True, "decidedStatus": run.status},
        )
        return {"run": await run_out(uow, run), "rework_run_no": child.run_no if child else None}
    RUN.target(run.status, _RUN_ACTION[body.decision])  # RUN_NOT_ON_HOLD
    oqc = await latest_oqc(uow, run)
    if oqc is None or oqc.status != "FAIL":
        raise Rejected("NO_FAILED_OQC", f"The latest OQC of run {run_no} has not failed")
    if body.decision == "REWORK" and body.rework_type is None:
        raise Rejected("REWORK_TYPE_REQUIRED", "A REWORK decision needs reworkType REUSE_PREP or FULL_PREP")
    waiver = bool(body.fai_waiver)
    _check_waiver(uow, waiver, body.fai_waiver_reason, body.decision, body.rework_type)
    child = await _apply(
        uow,
        run,
        oqc,
        body.decision,
        reason=body.reason,
        rework_type=body.rework_type if body.decision == "REWORK" else None,
        waiver=waiver,
        waiver_reason=body.fai_waiver_reason if waiver else None,
    )
    return {"run": await run_out(uow, run), "rework_run_no": child.run_no if child else None}


async def create_rework(uow: UnitOfWork, run_no: str, body: ReworkBody) -> dict[str, Any]:
    """POST /runs/:runNo/rework: the REWORK decision referencing a failed OQC by id."""
    s = uow.session
    run = await get_run(uow, run_no, lock=True)
    if is_decided(run) and run.status == "CLOSED_REWORK":
        child = await latest_rework_run(uow, run)
        if child is not None:
            uow.audit(
                run.id,
                run.run_no,
                entity_type="RUN",
                action="RUN_REWORK_CREATE",
                payload={**(uow.ctx.payload or {}), "noop": True, "reworkRunNo": child.run_no},
            )
            return _rework_out(child, run)
    RUN.target(run.status, "mrb_rework")  # RUN_NOT_ON_HOLD
    if body.mrb_decision_id is None:
        raise Rejected("MRB_DECISION_REQUIRED", "A rework run needs mrbDecisionId (the failed OQC)")
    oqc = await s.get(Inspection, body.mrb_decision_id)
    if oqc is None or oqc.run_id != run.id or oqc.type != "OQC" or oqc.status != "FAIL":
        raise Rejected(
            "INVALID_MRB_DECISION", f"Inspection {body.mrb_decision_id} is not a failed OQC of run {run_no}"
        )
    if body.rework_type is None:
        raise Rejected("REWORK_TYPE_REQUIRED", "A rework run needs reworkType REUSE_PREP or FULL_PREP")
    waiver = bool(body.fai_waiver)
    _check_waiver(uow, waiver, body.waiver_reason, "REWORK", body.rework_type)
    child = await _apply(
        uow,
        run,
        oqc,
        "REWORK",
        reason=None,
        rework_type=body.rework_type,
        waiver=waiver,
        waiver_reason=body.waiver_reason if waiver else None,
    )
    assert child is not None
    return _rework_out(child, run)


def _rework_out(child: Run, parent: Run) -> dict[str, Any]:
    return {
        "rework_run_no": child.run_no,
        "status": child.status,
        "authorization_type": child.authorization_type,
        "mrb_fai_waiver": child.mrb_fai_waiver,
        "parent_run_no": parent.run_no,
        "parent_run_status": parent.status,
    }


async def _apply(
    uow: UnitOfWork,
    run: Run,
    oqc: Inspection,
    decision: str,
    *,
    reason: str | None,
    rework_type: str | None,
    waiver: bool,
    waiver_reason: str | None,
) -> Run | None:
    """One transaction: MRB block on the OQC, run outcome, units, rework run (returned, if any)."""
    s = uow.session
    now, who = utcnow(), uow.actor.name
    before = _snapshot(run)
    oqc.data = {
        **(oqc.data or {}),
        "mrbDecision": decision,
        "mrbReason": reason,
        "mrbDecidedBy": who,
        "mrbDecidedAt": iso(now),
        "reworkType": rework_type,
        "faiWaiver": waiver,
        "faiWaiverReason": waiver_reason,
    }
    RUN.apply(run, _RUN_ACTION[decision])
    run.ended_at = now
    run.mrb_decision_id = oqc.id
    run.mrb_authorized_by, run.mrb_authorized_at = who, now
    units = list(await s.scalars(select(Unit).where(Unit.run_id == run.id).order_by(Unit.id)))
    child: Run | None = None
    if decision == "SCRAP":
        for u in units:
            UNIT.apply(u, "mrb_scrap")
    elif decision == "REWORK":
        assert rework_type is not None
        child = await _rework_run(uow, run, oqc, units, rework_type, waiver, waiver_reason, now)
    await s.flush()
    uow.audit(
        run.id,
        run.run_no,
        entity_type="RUN",
        action=f"MRB_{decision}",
        before=before,
        after=_snapshot(run),
        payload={
            "oqcId": oqc.id,
            "reason": reason,
            "reworkType": rework_type,
            "faiWaiver": waiver,
            "faiWaiverReason": waiver_reason,
            "units": len(units),
            "reworkRunNo": child.run_no if child else None,
        },
    )
    if child is not None:
        uow.audit(
            child.id,
            child.run_no,
            entity_type="RUN",
            action="RUN_REWORK_CREATE",
            after={
                **_snapshot(child),
                "parentRunNo": run.run_no,
                "reworkType": child.rework_type,
                "authorizationType": child.authorization_type,
                "mrbFaiWaiver": child.mrb_fai_waiver,
                "planQty": child.plan_qty,
            },
            payload={"unitsMoved": len(units), "oqcId": oqc.id},
        )
        from central.services.readiness import precheck_runs  # readiness reads runs; avoid an import cycle

        await precheck_runs(uow, run=child)  # domain.md §5: PRECHECK after rework-run creation
    # After the units moved: a CLOSED_REWORK run reports no good output, its rework run reports it later.
    await hooks.after_run_terminal(uow, run)
    return child


async def _rework_run_no(uow: UnitOfWork, parent: Run) -> str:
    s = uow.session
    n = 1 + (await s.scalar(select(func.count(Run.id)).where(Run.parent_run_id == parent.id)) or 0)
    while await s.scalar(select(Run.id).where(Run.run_no == f"{parent.run_no}-RW{n}")):
        n += 1
    return f"{parent.run_no}-RW{n}"


async def _rework_run(
    uow: UnitOfWork,
    parent: Run,
    oqc: Inspection,
    units: list[Unit],
    rework_type: str,
    waiver: bool,
    waiver_reason: str | None,
    now: datetime,
) -> Run:
    s = uow.session
    version = await version_of(uow, parent)
    first = route.first_step_no(version.snapshot_json if version else None)
    if first is None:
        raise Rejected("ROUTING_EMPTY", f"The route version of run {parent.run_no} has no steps")
    who = uow.actor.name
    child = Run(
        run_no=await _rework_run_no(uow, parent),
        wo_id=parent.wo_id,
        line_id=parent.line_id,
        route_version_id=parent.route_version_id,
        plan_qty=parent.plan_qty,
        status="PREP",
        shift_code=parent.shift_code,
        parent_run_id=parent.id,
        rework_type=rework_type,
        authorization_type="MRB_OVERRIDE",
        mrb_fai_waiver=waiver,
        mrb_waiver_reason=waiver_reason,
        mrb_authorized_by=who,
        mrb_authorized_at=now,
        meta={
            "mrb": {"oqcId": oqc.id, "parentRunNo": parent.run_no, "decidedBy": who, "decidedAt": iso(now)}
        },
    )
    s.add(child)
    if rework_type == "REUSE_PREP":  # the preparation of the parent stands: ready to run at once
        RUN.apply(child, "authorize")
        child.authorized_by, child.authorized_at = who, now
    await s.flush()
    for u in units:
        entry = {
            "fromRunNo": parent.run_no,
            "toRunNo": child.run_no,
            "fromStatus": u.status,
            "fromStepNo": u.current_step_no,
            "at": iso(now),
        }
        UNIT.apply(u, "mrb_rework")
        u.run_id, u.current_step_no = child.id, first
        u.meta = {**(u.meta or {}), "mrbRework": [*((u.meta or {}).get("mrbRework") or []), entry]}
    return child


async def rework_runs(uow: UnitOfWork, run_no: str) -> list[dict[str, Any]]:
    """GET /runs/:runNo/rework-runs: the rework runs created from this run, oldest first."""
    run = await get_run(uow, run_no)
    lines = await scoped_line_ids(uow, LIST_PERMS)
    if lines is not None and run.line_id not in lines:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    children = (
        await uow.session.scalars(select(Run).where(Run.parent_run_id == run.id).order_by(Run.id))
    ).all()
    return [await run_out(uow, c) for c in children]
