"""First-article inspection writes (domain.md §7.1, §3 Inspection): create, start, items, complete, sign.

Status changes go through the INSPECTION machine; the FAI-specific refusal codes are raised before it.
The trial itself (PREP track-in/out of the first step) is guarded in exec_guards (§4.1 guards 4 and 8).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from central.db.models import Inspection, InspectionItem, InspectionResultRecord, Run, Unit
from central.domain.clock import utcnow
from central.domain.errors import NotFound, Rejected
from central.domain.states import INSPECTION
from central.schemas.fai import FaiComplete, FaiCreate, FaiItemCreate, FaiItemUpdate, FaiSign
from central.services.fai_reads import (
    active_fai,
    detail,
    fai_view,
    get_fai,
    item_out,
    item_view,
    items_of,
    require_trial_done,
    run_of,
)
from central.services.readiness import ensure_formal_passed
from central.services.runs import get_run, version_of
from central.services.uow import UnitOfWork


async def _unit_count(uow: UnitOfWork, run: Run) -> int:
    return await uow.session.scalar(select(func.count(Unit.id)).where(Unit.run_id == run.id)) or 0


def _template_items(snapshot: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    tpl = ((snapshot or {}).get("route") or {}).get("faiTemplate")
    if not tpl:
        return None, []
    ref = {k: tpl.get(k) for k in ("id", "code", "name", "version")}
    return ref, sorted(tpl.get("items") or [], key=lambda i: (i.get("seq") or 0, i.get("id") or 0))


async def create_fai(uow: UnitOfWork, run_no: str, body: FaiCreate) -> dict[str, Any]:
    s = uow.session
    run = await get_run(uow, run_no, lock=True)
    if run.status != "PREP":
        raise Rejected("INVALID_RUN_STATUS", f"An FAI needs a PREP run (run {run_no} is {run.status})")
    if not await ensure_formal_passed(uow, run):
        raise Rejected(
            "READINESS_CHECK_NOT_PASSED", f"The FORMAL readiness check of run {run_no} has not passed"
        )
    if await active_fai(uow, run) is not None:
        raise Rejected("FAI_ALREADY_EXISTS", f"Run {run_no} already has an FAI in progress")
    units = await _unit_count(uow, run)
    if units < body.sample_qty:
        raise Rejected(
            "FAI_SAMPLE_UNITS_INSUFFICIENT",
            f"Run {run_no} has {units} unit(s); the FAI samples {body.sample_qty}",
            details={"unitCount": units, "sampleQty": body.sample_qty},
        )
    version = await version_of(uow, run)
    template, template_items = _template_items(version.snapshot_json if version else None)
    fai = Inspection(
        run_id=run.id,
        type="FAI",
        status="PENDING",
        active_key=f"{run.id}:FAI",
        sample_qty=body.sample_qty,
        remark=body.remark,
        data={"faiTemplate": template} if template else {},
    )
    s.add(fai)
    try:
        await s.flush()
    except IntegrityError:  # a concurrent create took the active key first
        raise Rejected("FAI_ALREADY_EXISTS", f"Run {run_no} already has an FAI in progress") from None
    s.add_all(
        InspectionItem(
            inspection_id=fai.id,
            item_name=i["itemName"],
            item_spec=i.get("itemSpec"),
            result="NA",
            meta={"templateItemId": i.get("id"), "seq": i.get("seq"), "required": bool(i.get("required"))},
        )
        for i in template_items
    )
    await s.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_CREATE",
        after={**fai_view(fai), "runNo": run.run_no, "templateItems": len(template_items)},
    )
    return await detail(uow, fai, run)


async def start_fai(uow: UnitOfWork, fai_id: int) -> dict[str, Any]:
    fai = await get_fai(uow, fai_id, lock=True)
    if not INSPECTION.allows(fai.status, "start"):
        raise Rejected("INVALID_FAI_STATUS", f"FAI {fai_id} is {fai.status}; only a PENDING FAI can start")
    run = await run_of(uow, fai)
    if run.status != "PREP":  # Ours: the trial only exists while the run is PREP
        raise Rejected("INVALID_RUN_STATUS", f"Run {run.run_no} is {run.status}; the FAI trial needs PREP")
    if not await _unit_count(uow, run):
        raise Rejected("FAI_UNITS_REQUIRED", f"Run {run.run_no} has no units to run the FAI trial with")
    before = fai_view(fai)
    INSPECTION.apply(fai, "start")
    fai.inspector_id = _who(uow)
    fai.started_at = utcnow()
    await uow.session.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_START",
        before=before,
        after=fai_view(fai),
    )
    return await detail(uow, fai, run)


def _who(uow: UnitOfWork) -> str:
    return uow.actor.name


def _require_inspecting(fai: Inspection) -> None:
    if fai.status != "INSPECTING":
        raise Rejected("FAI_NOT_INSPECTING", f"FAI {fai.id} is {fai.status}, not INSPECTING")


async def _check_unit(uow: UnitOfWork, sn: str | None, run: Run) -> None:
    if sn is None:
        return
    unit_run = (await uow.session.execute(select(Unit.id, Unit.run_id).where(Unit.sn == sn))).first()
    if unit_run is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    if unit_run.run_id != run.id:
        raise Rejected("UNIT_RUN_MISMATCH", f"Unit {sn} does not belong to run {run.run_no}")


async def add_item(uow: UnitOfWork, fai_id: int, body: FaiItemCreate) -> dict[str, Any]:
    fai = await get_fai(uow, fai_id, lock=True)
    return await _add_item(uow, fai, body)


async def _add_item(uow: UnitOfWork, fai: Inspection, body: FaiItemCreate) -> dict[str, Any]:
    _require_inspecting(fai)
    run = await run_of(uow, fai)
    await require_trial_done(uow, run, fai)
    await _check_unit(uow, body.unit_sn, run)
    item = InspectionItem(inspection_id=fai.id, **body.model_dump(), meta={})
    uow.session.add(item)
    await uow.session.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_ITEM_ADD",
        after={"itemId": item.id, **item_view(item)},
    )
    return item_out(item)


async def add_item_for_run(uow: UnitOfWork, run_no: str, body: FaiItemCreate) -> dict[str, Any]:
    """Seed-contract alias: an item on the run's active FAI (404 FAI_NOT_FOUND when none is active)."""
    run = await get_run(uow, run_no)
    fai = await active_fai(uow, run)
    if fai is None:
        raise NotFound("FAI_NOT_FOUND", f"Run {run_no} has no active FAI")
    return await _add_item(uow, await get_fai(uow, fai.id, lock=True), body)


async def update_item(uow: UnitOfWork, fai_id: int, item_id: int, body: FaiItemUpdate) -> dict[str, Any]:
    fai = await get_fai(uow, fai_id, lock=True)
    item = await uow.session.get(InspectionItem, item_id)
    if item is None or item.inspection_id != fai.id:
        raise NotFound("FAI_ITEM_NOT_FOUND", f"FAI {fai_id} has no item {item_id}")
    _require_inspecting(fai)
    run = await run_of(uow, fai)
    changes = body.model_dump(exclude_unset=True)
    for required in ("item_name", "result"):
        if required in changes and changes[required] is None:
            changes.pop(required)  # these two cannot be cleared
    await _check_unit(uow, changes.get("unit_sn"), run)
    before = item_view(item)
    for field, value in changes.items():
        setattr(item, field, value)
    await uow.session.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_ITEM_UPDATE",
        before={"itemId": item.id, **before},
        after={"itemId": item.id, **item_view(item)},
    )
    return item_out(item)


def counts(
    decision: str, sample: int, passed: int | None, failed: int | None, *, code: str = "INVALID_FAI_COUNTS"
) -> tuple[int, int]:
    """The count rule of domain.md §3 Inspection (FAI, FQC and OQC alike) → (passedQty, failedQty), or `code`
    (INVALID_FAI_COUNTS | INVALID_FQC_COUNTS | INVALID_OQC_COUNTS)."""
    if decision == "PASS":
        p = sample if passed is None else passed
        if (failed or 0) != 0 or p != sample:
            raise Rejected(code, f"A PASS needs passedQty {sample} of {sample} and no failed units")
        return p, 0
    if failed is None or failed <= 0:
        raise Rejected(code, "A FAIL needs failedQty > 0")
    p = sample - failed if passed is None else passed
    if p < 0 or p + failed != sample:
        raise Rejected(code, f"passedQty + failedQty must equal sampleQty {sample}")
    return p, failed


async def complete_fai(uow: UnitOfWork, fai_id: int, body: FaiComplete) -> dict[str, Any]:
    s = uow.session
    fai = await get_fai(uow, fai_id, lock=True)
    _require_inspecting(fai)
    run = await run_of(uow, fai)
    await require_trial_done(uow, run, fai)
    passed, failed = counts(body.decision, fai.sample_qty, body.passed_qty, body.failed_qty)
    if body.decision == "PASS":
        spi_fails = await s.scalar(
            select(func.count(InspectionResultRecord.id)).where(
                InspectionResultRecord.run_no == run.run_no, InspectionResultRecord.result == "FAIL"
            )
        )
        if spi_fails:
            raise Rejected(
                "INSPECTION_FAILURES_EXIST",
                f"Run {run.run_no} has {spi_fails} failed SPI/AOI result(s); the FAI cannot pass",
            )
        items = await items_of(uow, fai)
        if bad := [i.item_name for i in items if i.result == "FAIL"]:  # Ours: a failed item contradicts PASS
            raise Rejected("FAI_ITEMS_FAILED", f"FAI items failed: {', '.join(bad)}", details={"items": bad})
        if open_ := [i.item_name for i in items if i.result == "NA" and (i.meta or {}).get("required")]:
            raise Rejected(  # Ours: every required template item needs a result before PASS
                "FAI_REQUIRED_ITEMS_PENDING",
                f"Required FAI items have no result: {', '.join(open_)}",
                details={"items": open_},
            )
    before = fai_view(fai)
    INSPECTION.apply(fai, "pass" if body.decision == "PASS" else "fail")
    fai.passed_qty, fai.failed_qty = passed, failed
    fai.decided_by, fai.decided_at = _who(uow), utcnow()
    fai.active_key = None
    if body.remark is not None:
        fai.remark = body.remark
    await s.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_COMPLETE",
        before=before,
        after=fai_view(fai),
    )
    return await detail(uow, fai, run)


async def sign_fai(uow: UnitOfWork, fai_id: int, body: FaiSign) -> dict[str, Any]:
    fai = await get_fai(uow, fai_id, lock=True)
    if fai.status != "PASS":
        raise Rejected("FAI_NOT_PASSED", f"FAI {fai_id} is {fai.status}; only a passed FAI can be signed")
    if fai.signed_at is not None:
        raise Rejected("FAI_ALREADY_SIGNED", f"FAI {fai_id} was signed by {fai.signed_by}")
    run = await run_of(uow, fai)
    before = fai_view(fai)
    fai.signed_by, fai.signed_at, fai.signature_remark = _who(uow), utcnow(), body.remark
    await uow.session.flush()
    uow.audit(
        fai.id,
        f"FAI {run.run_no}",
        entity_type="INSPECTION",
        action="FAI_SIGN",
        before=before,
        after=fai_view(fai),
    )
    return await detail(uow, fai, run)
