"""Run close-out (domain.md §7.3–7.4): sampling-rule selection, automatic OQC, completion, manual close."""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy import func, or_, select

from central.db.models import ExecutableRouteVersion, Inspection, OqcSamplingRule, Run, Unit, WorkOrder
from central.domain.clock import iso, utcnow
from central.domain.errors import Rejected
from central.domain.states import RUN, RUN_TERMINAL, UNIT_TERMINAL
from central.services import hooks
from central.services.uow import UnitOfWork

_rng = random.SystemRandom()


def sample_size(sampling_type: str, value: float, done: int) -> int:
    """PERCENTAGE → clamp(ceil(done·v/100), 1, done) (0 % still samples one); FIXED → min(ceil(v), done)."""
    if done <= 0:
        return 0
    if sampling_type == "PERCENTAGE":
        return max(1, min(done, math.ceil(done * value / 100)))
    return min(math.ceil(value), done)


async def select_rule(uow: UnitOfWork, run: Run) -> OqcSamplingRule | None:
    """Most specific active rule (non-null criteria count), then priority desc, then newest."""
    s = uow.session
    product = await s.scalar(select(WorkOrder.product_code).where(WorkOrder.id == run.wo_id))
    routing_id = await s.scalar(
        select(ExecutableRouteVersion.routing_id).where(ExecutableRouteVersion.id == run.route_version_id)
    )
    rules = (
        await s.scalars(
            select(OqcSamplingRule).where(
                OqcSamplingRule.is_active.is_(True),
                or_(OqcSamplingRule.product_code.is_(None), OqcSamplingRule.product_code == product),
                or_(OqcSamplingRule.line_id.is_(None), OqcSamplingRule.line_id == run.line_id),
                or_(OqcSamplingRule.routing_id.is_(None), OqcSamplingRule.routing_id == routing_id),
            )
        )
    ).all()
    if not rules:
        return None

    def rank(r: OqcSamplingRule) -> tuple[int, int, Any, int]:
        specificity = sum(x is not None for x in (r.product_code, r.line_id, r.routing_id))
        return specificity, r.priority, r.created_at, r.id

    return max(rules, key=rank)


async def active_oqc(uow: UnitOfWork, run: Run) -> Inspection | None:
    return await uow.session.scalar(select(Inspection).where(Inspection.active_key == f"{run.id}:OQC"))


async def _unit_counts(uow: UnitOfWork, run: Run) -> dict[str, int]:
    rows = await uow.session.execute(
        select(Unit.status, func.count()).where(Unit.run_id == run.id).group_by(Unit.status)
    )
    return dict(rows.all())


async def _complete(uow: UnitOfWork, run: Run) -> None:
    before = {"status": run.status, "endedAt": iso(run.ended_at)}
    RUN.apply(run, "complete")
    run.ended_at = utcnow()
    uow.audit(
        run.id,
        run.run_no,
        entity_type="RUN",
        action="RUN_COMPLETE",
        before=before,
        after={"status": run.status, "endedAt": iso(run.ended_at)},
    )
    await hooks.after_run_terminal(uow, run)


async def _create_oqc(
    uow: UnitOfWork,
    run: Run,
    rule: OqcSamplingRule | None,
    size: int,
    *,
    remark: str | None = None,
    source: str = "AUTO",
) -> Inspection:
    """A PENDING OQC sampling `size` random DONE units (never SCRAPPED ones). Without a rule (a manual OQC)
    the sample is recorded as FIXED `size` with samplingRuleId null."""
    done_ids = list(
        await uow.session.scalars(
            select(Unit.id).where(Unit.run_id == run.id, Unit.status == "DONE").order_by(Unit.id)
        )
    )
    sampled = sorted(_rng.sample(done_ids, size))
    oqc = Inspection(
        run_id=run.id,
        type="OQC",
        status="PENDING",
        active_key=f"{run.id}:OQC",
        sample_qty=size,
        remark=remark,
        data={
            "sampledUnitIds": sampled,
            "samplingRuleId": rule.id if rule else None,
            "samplingType": rule.sampling_type if rule else "FIXED",
            "samplingValue": rule.sample_value if rule else size,
            "source": source,
        },
    )
    uow.session.add(oqc)
    await uow.session.flush()
    uow.audit(
        oqc.id,
        f"OQC {run.run_no}",
        entity_type="INSPECTION",
        action="OQC_CREATE",
        after={
            "runNo": run.run_no,
            "status": oqc.status,
            "sampleQty": size,
            "samplingRuleId": rule.id if rule else None,
            "source": source,
        },
    )
    return oqc


async def create_oqc(
    uow: UnitOfWork,
    run: Run,
    size: int,
    *,
    rule: OqcSamplingRule | None = None,
    remark: str | None = None,
    source: str = "MANUAL",
) -> Inspection:
    """Public entry for a manually requested OQC (the caller has checked the run and the size)."""
    return await _create_oqc(uow, run, rule, size, remark=remark, source=source)


async def complete_run(uow: UnitOfWork, run: Run) -> None:
    """IN_PROGRESS → COMPLETED with endedAt, audited RUN_COMPLETE (OQC PASS uses it too)."""
    await _complete(uow, run)


async def after_units_changed(uow: UnitOfWork, run: Run) -> str | None:
    """Called after any event that made a unit DONE or SCRAPPED: when every unit is terminal, the run either
    completes (no rule, or a sample of 0) or gets its OQC. Returns "COMPLETED", "OQC" or None."""
    if run.status != "IN_PROGRESS":
        return None
    # Serialise close-out per run. Concurrent track-outs of the last units lock different unit rows; without
    # the run lock each would count the other's unit as still open (READ COMMITTED) and nobody would close the
    # run. FOR NO KEY UPDATE (key_share): the rows these transactions already inserted hold KEY SHARE locks on
    # the run through their foreign keys, which a plain FOR UPDATE would deadlock against. The re-read
    # (pending changes are autoflushed first) also sees a completion committed meanwhile.
    await uow.session.execute(
        select(Run)
        .where(Run.id == run.id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if run.status != "IN_PROGRESS":
        return None
    counts = await _unit_counts(uow, run)
    total = sum(counts.values())
    if total == 0 or any(st not in UNIT_TERMINAL for st in counts):
        return None
    rule = await select_rule(uow, run)
    size = sample_size(rule.sampling_type, rule.sample_value, counts.get("DONE", 0)) if rule else 0
    if rule is None or size == 0:
        await _complete(uow, run)
        return "COMPLETED"
    if await active_oqc(uow, run) is None and not await _decided_oqc(uow, run):
        await _create_oqc(uow, run, rule, size)
    return "OQC"


async def _decided_oqc(uow: UnitOfWork, run: Run) -> bool:
    """An OQC that already passed or failed: close-out must not sample the same run twice."""
    return bool(
        await uow.session.scalar(
            select(func.count(Inspection.id)).where(
                Inspection.run_id == run.id, Inspection.type == "OQC", Inspection.status.in_(("PASS", "FAIL"))
            )
        )
    )


async def close_run(uow: UnitOfWork, run: Run) -> dict[str, Any]:
    """Manual close. → {"run": run, "oqcRequired": bool, "oqcId": id?}; the caller answers 409 OQC_REQUIRED
    after this transaction commits, so the OQC it created or found stays."""
    if run.status in RUN_TERMINAL:  # closing a closed run is an idempotent no-op
        uow.audited = True
        return {"run": run, "oqcRequired": False}
    if run.status != "IN_PROGRESS":
        raise Rejected("RUN_NOT_CLOSABLE", f"Run {run.run_no} is {run.status}; only IN_PROGRESS runs close")
    counts = await _unit_counts(uow, run)
    if not counts:
        raise Rejected("RUN_HAS_NO_UNITS", f"Run {run.run_no} has no units")
    open_units = sum(n for st, n in counts.items() if st not in UNIT_TERMINAL)
    if open_units:
        raise Rejected(
            "RUN_UNITS_NOT_TERMINAL", f"Run {run.run_no} has {open_units} unit(s) not DONE or SCRAPPED"
        )
    outcome = await after_units_changed(uow, run)
    if outcome == "OQC":
        oqc = await active_oqc(uow, run)
        uow.audited = True  # the OQC (if new) was audited; the refused close is audited by the middleware
        return {"run": run, "oqcRequired": oqc is not None, "oqcId": oqc.id if oqc else None}
    return {"run": run, "oqcRequired": False}
