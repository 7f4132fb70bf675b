"""Outgoing quality check, domain.md §7.4 (`quality:oqc`): manual create, start, items, complete, reads, gate.

The automatic OQC is created by close-out (`closeout.after_units_changed`). Completing an OQC moves the run:
PASS → COMPLETED (endedAt), FAIL → ON_HOLD for the MRB (§7.5). There is no signature.
"""

from __future__ import annotations

from typing import Any

from central.db.models import Inspection, Run
from central.domain.clock import iso
from central.domain.errors import Rejected
from central.domain.states import RUN, UNIT_TERMINAL
from central.schemas.oqc import InspectionQuery, OqcComplete, OqcCreate, OqcItemCreate, OqcItemUpdate
from central.services import closeout
from central.services import qc_inspections as qc
from central.services.qc_inspections import OQC
from central.services.runs import get_run
from central.services.uow import UnitOfWork


async def latest_oqc(uow: UnitOfWork, run: Run) -> Inspection | None:
    """The run's newest OQC (any status), e.g. for the MRB's NO_FAILED_OQC check."""
    return await qc.latest(uow, OQC, run)


async def create_oqc(uow: UnitOfWork, run_no: str, body: OqcCreate) -> dict[str, Any]:
    """Manual OQC. Guards in order: INVALID_RUN_STATUS → OQC_NOT_READY → NO_ELIGIBLE_UNITS →
    INVALID_SAMPLE_QTY; then the active OQC is returned if there is one, else a random sample is drawn."""
    run = await get_run(uow, run_no, lock=True)
    if run.status != "IN_PROGRESS":
        raise Rejected("INVALID_RUN_STATUS", f"Run {run_no} is {run.status}; an OQC needs an IN_PROGRESS run")
    units = await qc.unit_counts(uow, run)
    open_units = sum(n for st, n in units.items() if st not in UNIT_TERMINAL)
    if not units or open_units:
        raise Rejected(
            "OQC_NOT_READY",
            f"Run {run_no} has {open_units} unit(s) not DONE or SCRAPPED"
            if units
            else f"Run {run_no} has no units",
            details={"unitCount": sum(units.values()), "openUnits": open_units},
        )
    done = units.get("DONE", 0)
    if done == 0:
        raise Rejected("NO_ELIGIBLE_UNITS", f"Run {run_no} has no DONE unit to inspect")
    sample = done if body.sample_qty is None else body.sample_qty
    if not 1 <= sample <= done:
        raise Rejected(
            "INVALID_SAMPLE_QTY",
            f"sampleQty must be between 1 and the {done} DONE unit(s)",
            details={"sampleQty": sample, "doneQty": done},
        )
    existing = await qc.active(uow, OQC, run)
    if existing is not None:
        uow.audited = True  # idempotent: the active OQC is returned unchanged, nothing is written
        return await qc.detail(uow, existing, run)
    oqc = await closeout.create_oqc(uow, run, sample, remark=body.remark)  # audited OQC_CREATE
    return await qc.detail(uow, oqc, run)


async def start_oqc(uow: UnitOfWork, oqc_id: int) -> dict[str, Any]:
    return await qc.start(uow, OQC, oqc_id)


async def add_item(uow: UnitOfWork, oqc_id: int, body: OqcItemCreate) -> dict[str, Any]:
    """An item for a sampled unit of the run (UNIT_NOT_FOUND, UNIT_RUN_MISMATCH, UNIT_NOT_IN_SAMPLE)."""
    return await qc.add_item(uow, OQC, oqc_id, body.model_dump())


async def update_item(uow: UnitOfWork, oqc_id: int, item_id: int, body: OqcItemUpdate) -> dict[str, Any]:
    return await qc.update_item(
        uow,
        OQC,
        oqc_id,
        item_id,
        body.model_dump(exclude_unset=True),
        keep=("item_name", "result", "unit_sn"),
    )


def _run_view(run: Run) -> dict[str, Any]:
    return {"status": run.status, "endedAt": iso(run.ended_at)}


async def complete_oqc(uow: UnitOfWork, oqc_id: int, body: OqcComplete) -> dict[str, Any]:
    """OQC_NOT_INSPECTING → INVALID_RUN_STATUS (the run must still be IN_PROGRESS) → INVALID_OQC_COUNTS.
    PASS completes the run (endedAt); FAIL puts it ON_HOLD."""
    oqc = await qc.get(uow, OQC, oqc_id, lock=True)
    qc.require_inspecting(OQC, oqc)
    run = await qc.run_of(uow, oqc, lock=True)
    if not RUN.allows(run.status, "complete"):
        raise Rejected(
            "INVALID_RUN_STATUS", f"Run {run.run_no} is {run.status}; an OQC decides an IN_PROGRESS run only"
        )
    before = await qc.decide(uow, OQC, oqc, run, body.decision, body.passed_qty, body.failed_qty, body.remark)
    if body.decision == "PASS":
        await closeout.complete_run(uow, run)  # audited RUN_COMPLETE
    else:
        run_before = _run_view(run)
        RUN.apply(run, "hold")
        uow.audit(
            run.id,
            run.run_no,
            entity_type="RUN",
            action="RUN_HOLD",
            before=run_before,
            after={**_run_view(run), "oqcId": oqc.id},
        )
    await uow.session.flush()
    uow.audit(
        oqc.id,
        qc.display(oqc, run),
        entity_type="INSPECTION",
        action="OQC_COMPLETE",
        before={**before, "runStatus": "IN_PROGRESS"},
        after={**qc.view(oqc), "runStatus": run.status},
    )
    return await qc.detail(uow, oqc, run)


async def list_oqc(uow: UnitOfWork, q: InspectionQuery) -> dict[str, Any]:
    return await qc.list_page(uow, OQC, q)


async def get_oqc(uow: UnitOfWork, oqc_id: int) -> dict[str, Any]:
    return await qc.get_detail(uow, OQC, oqc_id)


async def latest_for_run(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    """The run's latest OQC (404 OQC_NOT_FOUND)."""
    return await qc.latest_detail(uow, OQC, await get_run(uow, run_no))


async def gate(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    """requiresOqc: an OQC exists for the run or an active sampling rule applies to it; oqcPassed: the latest
    OQC passed."""
    run = await get_run(uow, run_no)
    oqc = await latest_oqc(uow, run)
    rule = await closeout.select_rule(uow, run)
    return {
        "requires_oqc": oqc is not None or rule is not None,
        "oqc_passed": oqc is not None and oqc.status == "PASS",
        "oqc_id": oqc.id if oqc else None,
        "oqc_status": oqc.status if oqc else None,
    }
