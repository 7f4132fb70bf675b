"""Follow-up work that other workflows attach to run events, in the same transaction (never lost)."""

from __future__ import annotations

from central.db.models import Run
from central.services import outbound
from central.services.uow import UnitOfWork


async def after_run_created(uow: UnitOfWork, run: Run) -> None:
    """PRECHECK of a new run (domain.md §5): advisory, recorded with the run in one transaction."""
    from central.services.readiness import precheck_runs

    await precheck_runs(uow, run=run)


async def after_run_terminal(uow: UnitOfWork, run: Run) -> None:
    """A run turned COMPLETED, CLOSED_REWORK or SCRAPPED: with outbound feedback enabled, its ERP completion
    message joins the outbox in this transaction, so a committed completion is never left unreported."""
    if uow.settings is None or not uow.settings.outbound_feedback_enabled:
        return
    await outbound.enqueue_run_completion(uow, run)
