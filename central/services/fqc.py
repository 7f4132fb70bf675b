"""Final (last-piece) quality check, domain.md §7.2 (`quality:fai`): create, start, items, complete, sign.

Like the FAI without its trial and SPI/AOI rules and without a gate. An FQC never changes the run's status.
"""

from __future__ import annotations

from typing import Any

from central.db.models import Inspection
from central.domain.clock import utcnow
from central.domain.errors import Rejected
from central.domain.states import UNIT_TERMINAL
from central.schemas.oqc import FqcComplete, FqcCreate, FqcItemCreate, FqcItemUpdate, FqcSign, InspectionQuery
from central.services import qc_inspections as qc
from central.services.qc_inspections import FQC
from central.services.runs import get_run
from central.services.uow import UnitOfWork

# The run has produced something: FQC applies to running, held and finished runs alike.
FQC_RUN_STATUSES = frozenset({"IN_PROGRESS", "ON_HOLD", "COMPLETED", "CLOSED_REWORK", "SCRAPPED"})


async def create_fqc(uow: UnitOfWork, run_no: str, body: FqcCreate) -> dict[str, Any]:
    """Guards in order: INVALID_RUN_STATUS → FQC_NOT_READY → NO_ELIGIBLE_UNITS → INVALID_SAMPLE_QTY →
    FQC_ALREADY_EXISTS."""
    run = await get_run(uow, run_no, lock=True)
    if run.status not in FQC_RUN_STATUSES:
        raise Rejected(
            "INVALID_RUN_STATUS", f"Run {run_no} is {run.status}; an FQC needs a run that has produced"
        )
    units = await qc.unit_counts(uow, run)
    open_units = sum(n for st, n in units.items() if st not in UNIT_TERMINAL)
    if not units or open_units:
        raise Rejected(
            "FQC_NOT_READY",
            f"Run {run_no} has {open_units} unit(s) not DONE or SCRAPPED"
            if units
            else f"Run {run_no} has no units",
            details={"unitCount": sum(units.values()), "openUnits": open_units},
        )
    done = units.get("DONE", 0)
    if done == 0:
        raise Rejected("NO_ELIGIBLE_UNITS", f"Run {run_no} has no DONE unit to inspect")
    sample = 1 if body.sample_qty is None else body.sample_qty
    if not 1 <= sample <= done:
        raise Rejected(
            "INVALID_SAMPLE_QTY",
            f"sampleQty must be between 1 and the {done} DONE unit(s)",
            details={"sampleQty": sample, "doneQty": done},
        )
    if await qc.active(uow, FQC, run) is not None:
        raise Rejected("FQC_ALREADY_EXISTS", f"Run {run_no} already has an FQC in progress")
    fqc = await qc.add(
        uow,
        FQC,
        Inspection(
            run_id=run.id,
            type="FQC",
            status="PENDING",
            active_key=f"{run.id}:FQC",
            sample_qty=sample,
            remark=body.remark,
            data={},
        ),
        run,
    )
    uow.audit(
        fqc.id,
        qc.display(fqc, run),
        entity_type="INSPECTION",
        action="FQC_CREATE",
        after={**qc.view(fqc), "runNo": run.run_no},
    )
    return await qc.detail(uow, fqc, run)


async def start_fqc(uow: UnitOfWork, fqc_id: int) -> dict[str, Any]:
    return await qc.start(uow, FQC, fqc_id)


async def add_item(uow: UnitOfWork, fqc_id: int, body: FqcItemCreate) -> dict[str, Any]:
    return await qc.add_item(uow, FQC, fqc_id, body.model_dump())


async def update_item(uow: UnitOfWork, fqc_id: int, item_id: int, body: FqcItemUpdate) -> dict[str, Any]:
    return await qc.update_item(
        uow, FQC, fqc_id, item_id, body.model_dump(exclude_unset=True), keep=("item_name", "result")
    )


async def complete_fqc(uow: UnitOfWork, fqc_id: int, body: FqcComplete) -> dict[str, Any]:
    """PASS|FAIL by the count rule (INVALID_FQC_COUNTS); the run's status is not touched."""
    fqc = await qc.get(uow, FQC, fqc_id, lock=True)
    run = await qc.run_of(uow, fqc)
    before = await qc.decide(uow, FQC, fqc, run, body.decision, body.passed_qty, body.failed_qty, body.remark)
    await uow.session.flush()
    uow.audit(
        fqc.id,
        qc.display(fqc, run),
        entity_type="INSPECTION",
        action="FQC_COMPLETE",
        before=before,
        after=qc.view(fqc),
    )
    return await qc.detail(uow, fqc, run)


async def sign_fqc(uow: UnitOfWork, fqc_id: int, body: FqcSign) -> dict[str, Any]:
    """A passed FQC is signed once (FQC_NOT_PASSED, FQC_ALREADY_SIGNED); the signer is the caller."""
    fqc = await qc.get(uow, FQC, fqc_id, lock=True)
    if fqc.status != "PASS":
        raise Rejected("FQC_NOT_PASSED", f"FQC {fqc_id} is {fqc.status}; only a passed FQC can be signed")
    if fqc.signed_at is not None:
        raise Rejected("FQC_ALREADY_SIGNED", f"FQC {fqc_id} was signed by {fqc.signed_by}")
    run = await qc.run_of(uow, fqc)
    before = qc.view(fqc)
    fqc.signed_by, fqc.signed_at, fqc.signature_remark = uow.actor.name, utcnow(), body.remark
    await uow.session.flush()
    uow.audit(
        fqc.id,
        qc.display(fqc, run),
        entity_type="INSPECTION",
        action="FQC_SIGN",
        before=before,
        after=qc.view(fqc),
    )
    return await qc.detail(uow, fqc, run)


async def list_fqc(uow: UnitOfWork, q: InspectionQuery) -> dict[str, Any]:
    return await qc.list_page(uow, FQC, q)


async def get_fqc(uow: UnitOfWork, fqc_id: int) -> dict[str, Any]:
    return await qc.get_detail(uow, FQC, fqc_id)


async def latest_for_run(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    """The run's latest FQC (404 FQC_NOT_FOUND)."""
    return await qc.latest_detail(uow, FQC, await get_run(uow, run_no))
