"""Authorization gates of a run (domain.md §3 Run PREP→AUTHORIZED): readiness, then FAI.

Readiness reads the latest FORMAL check and runs one only when none exists (domain.md §5): a stale FAILED
check is not re-evaluated, so the planner re-checks explicitly after fixing the cause.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import Inspection, Run
from central.domain.errors import Rejected
from central.domain.route import requires_fai
from central.services.uow import UnitOfWork


async def readiness_gate(uow: UnitOfWork, run: Run) -> None:
    from central.services.readiness import formal_allows  # readiness reads runs; avoid an import cycle

    if not await formal_allows(uow, run):
        raise Rejected(
            "READINESS_CHECK_FAILED", f"Latest readiness check of run {run.run_no} has failed items"
        )


async def latest_fai(uow: UnitOfWork, run: Run) -> Inspection | None:
    return await uow.session.scalar(
        select(Inspection)
        .where(Inspection.run_id == run.id, Inspection.type == "FAI")
        .order_by(Inspection.created_at.desc(), Inspection.id.desc())
        .limit(1)
    )


def fai_waived(run: Run) -> bool:
    """An MRB rework run with an FAI waiver and its reason skips the FAI gate (domain.md §7.5)."""
    return (
        run.authorization_type == "MRB_OVERRIDE" and bool(run.mrb_fai_waiver) and bool(run.mrb_waiver_reason)
    )


async def fai_gate(uow: UnitOfWork, run: Run, snapshot: dict[str, Any]) -> None:
    if not requires_fai(snapshot) or fai_waived(run):
        return
    fai = await latest_fai(uow, run)
    if fai is None or fai.status != "PASS":
        raise Rejected("FAI_NOT_PASSED", f"Run {run.run_no} needs a passed first-article inspection")
    if fai.signed_at is None:
        raise Rejected("FAI_NOT_SIGNED", f"The first-article inspection of run {run.run_no} is not signed")


async def authorization_gates(uow: UnitOfWork, run: Run, snapshot: dict[str, Any]) -> None:
    """In the documented order: READINESS_CHECK_FAILED → FAI_NOT_PASSED → FAI_NOT_SIGNED."""
    await readiness_gate(uow, run)
    await fai_gate(uow, run, snapshot)
