"""Follow-up work that other workflows attach to run events, in the same transaction.

The readiness PRECHECK after run creation (domain.md §5) is added here by the preparation work.
"""

from __future__ import annotations

from central.db.models import Run
from central.services.uow import UnitOfWork


async def after_run_created(uow: UnitOfWork, run: Run) -> None:
    """PRECHECK of the new run (filled in with readiness); a no-op until then."""
    return None
