"""What FQC (domain.md §7.2) and OQC (§7.4) share: lookup, reads, start, items, decision (§3 Inspection).

Both are Inspection rows of their `type`; the refusal codes carry the type (INVALID_FQC_STATUS,
OQC_NOT_INSPECTING, …). Status changes go through the INSPECTION machine; the count rule is the FAI one
(`fai.counts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from central.db.models import Inspection, InspectionItem, Run, Unit
from central.domain.clock import iso, utcnow
from central.domain.errors import NotFound, Rejected
from central.domain.states import INSPECTION
from central.schemas.oqc import InspectionQuery
from central.services.fai import counts
from central.services.fai_reads import item_view
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids


@dataclass(frozen=True)
class Kind:
    """One inspection type and its codes."""

    type: str  # FQC | OQC
    perms: tuple[str, ...]

    def code(self, pattern: str) -> str:
        return pattern.format(t=self.type)


FQC = Kind("FQC", ("quality:fai",))
OQC = Kind("OQC", ("quality:oqc",))


async def get(uow: UnitOfWork, kind: Kind, inspection_id: int, *, lock: bool = False) -> Inspection:
    """404 {T}_NOT_FOUND; an inspection of another type → NOT_{T}_INSPECTION."""
    insp = await uow.session.get(Inspection, inspection_id, with_for_update=lock or None)
    if insp is None:
        raise NotFound(kind.code("{t}_NOT_FOUND"), f"{kind.type} {inspection_id} not found")
    if insp.type != kind.type:
        raise Rejected(
            kind.code("NOT_{t}_INSPECTION"),
            f"Inspection {inspection_id} is a {insp.type} inspection, not an {kind.type}",
        )
    return insp


async def run_of(uow: UnitOfWork, insp: Inspection, *, lock: bool = False) -> Run:
    run = await uow.session.get(Run, insp.run_id, with_for_update=lock or None)
    assert run is not None
    return run


async def active(uow: UnitOfWork, kind: Kind, run: Run) -> Inspection | None:
    return await uow.session.scalar(
        select(Inspection).where(Inspection.active_key == f"{run.id}:{kind.type}")
    )


async def latest(uow: UnitOfWork, kind: Kind, run: Run) -> Inspection | None:
    return await uow.session.scalar(
        select(Inspection)
        .where(Inspection.run_id == run.id, Inspection.type == kind.type)
        .order_by(Inspection.created_at.desc(), Inspection.id.desc())
        .limit(1)
    )


async def unit_counts(uow: UnitOfWork, run: Run) -> dict[str, int]:
    rows = await uow.session.execute(
        select(Unit.status, func.count()).where(Unit.run_id == run.id).group_by(Unit.status)
    )
    return dict(rows.tuples().all())


def view(insp: Inspection) -> dict[str, Any]:
    """Audit before/after (wire names, JSON-safe)."""
    return {
        "status": insp.status,
        "sampleQty": insp.sample_qty,
        "passedQty": insp.passed_qty,
        "failedQty": insp.failed_qty,
        "inspectorId": insp.inspector_id,
        "startedAt": iso(insp.started_at),
        "decidedBy": insp.decided_by,
        "decidedAt": iso(insp.decided_at),
        "signedBy": insp.signed_by,
        "signedAt": iso(insp.signed_at),
        "activeKey": insp.active_key,
    }


def display(insp: Inspection, run: Run) -> str:
    return f"{insp.type} {run.run_no}"


def fields(insp: Inspection, run: Run, sns: list[str] | None = None) -> dict[str, Any]:
    data = insp.data or {}
    cols = (
        "id type status sample_qty passed_qty failed_qty inspector_id started_at decided_by decided_at "
        "remark signed_by signed_at signature_remark created_at updated_at"
    ).split()
    return {
        **{c: getattr(insp, c) for c in cols},
        "run_no": run.run_no,
        "run_status": run.status,
        "data": data,
        "sampled_unit_ids": list(data.get("sampledUnitIds") or []),
        "sampled_sns": sns or [],
        "sampling_rule_id": data.get("samplingRuleId"),
        "sampling_type": data.get("samplingType"),
        "sampling_value": data.get("samplingValue"),
    }


ITEM_COLUMNS = (
    "unit_sn item_name item_spec actual_value result defect_code remark created_at updated_at".split()
)


def item_out(item: InspectionItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "item_id": item.id,
        "inspection_id": item.inspection_id,
        **{c: getattr(item, c) for c in ITEM_COLUMNS},
    }


async def items_of(uow: UnitOfWork, insp: Inspection) -> list[InspectionItem]:
    stmt = select(InspectionItem).where(InspectionItem.inspection_id == insp.id).order_by(InspectionItem.id)
    return list((await uow.session.scalars(stmt)).all())


async def sampled_sns(uow: UnitOfWork, insp: Inspection) -> list[str]:
    ids = (insp.data or {}).get("sampledUnitIds") or []
    if not ids:
        return []
    return list(await uow.session.scalars(select(Unit.sn).where(Unit.id.in_(ids)).order_by(Unit.sn)))


async def detail(uow: UnitOfWork, insp: Inspection, run: Run | None = None) -> dict[str, Any]:
    run = run or await run_of(uow, insp)
    return {
        **fields(insp, run, await sampled_sns(uow, insp)),
        "items": [item_out(i) for i in await items_of(uow, insp)],
    }


async def get_detail(uow: UnitOfWork, kind: Kind, inspection_id: int) -> dict[str, Any]:
    return await detail(uow, await get(uow, kind, inspection_id))


async def latest_detail(uow: UnitOfWork, kind: Kind, run: Run) -> dict[str, Any]:
    insp = await latest(uow, kind, run)
    if insp is None:
        raise NotFound(kind.code("{t}_NOT_FOUND"), f"Run {run.run_no} has no {kind.type}")
    return await detail(uow, insp, run)


async def list_page(uow: UnitOfWork, kind: Kind, q: InspectionQuery) -> dict[str, Any]:
    stmt = select(Inspection, Run).join(Run, Run.id == Inspection.run_id).where(Inspection.type == kind.type)
    if runs := split_csv(q.run_no):
        stmt = stmt.where(Run.run_no.in_(runs))
    if statuses := split_csv(q.status):
        stmt = stmt.where(Inspection.status.in_(statuses))
    lines = await scoped_line_ids(uow, kind.perms)
    if lines is not None:
        stmt = stmt.where(Run.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        scalars=False,
        search=[Run.run_no],
        sort_fields={
            "createdAt": Inspection.created_at,
            "status": Inspection.status,
            "startedAt": Inspection.started_at,
            "decidedAt": Inspection.decided_at,
            "run.runNo": Run.run_no,
        },
    )
    page["items"] = [fields(insp, run) for insp, run in page["items"]]
    return page


async def add(uow: UnitOfWork, kind: Kind, insp: Inspection, run: Run) -> Inspection:
    """Insert a new PENDING inspection; a concurrent create holding the active key → {T}_ALREADY_EXISTS."""
    uow.session.add(insp)
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Rejected(
            kind.code("{t}_ALREADY_EXISTS"), f"Run {run.run_no} already has an active {kind.type}"
        ) from None
    return insp


async def start(uow: UnitOfWork, kind: Kind, inspection_id: int) -> dict[str, Any]:
    """PENDING → INSPECTING (else INVALID_{T}_STATUS); the caller becomes the inspector."""
    insp = await get(uow, kind, inspection_id, lock=True)
    if not INSPECTION.allows(insp.status, "start"):
        raise Rejected(
            kind.code("INVALID_{t}_STATUS"),
            f"{kind.type} {inspection_id} is {insp.status}; only a PENDING {kind.type} can start",
        )
    run = await run_of(uow, insp)
    before = view(insp)
    INSPECTION.apply(insp, "start")
    insp.inspector_id, insp.started_at = uow.actor.name, utcnow()
    await uow.session.flush()
    uow.audit(
        insp.id,
        display(insp, run),
        entity_type="INSPECTION",
        action=kind.code("{t}_START"),
        before=before,
        after=view(insp),
    )
    return await detail(uow, insp, run)


def require_inspecting(kind: Kind, insp: Inspection) -> None:
    if insp.status != "INSPECTING":
        raise Rejected(
            kind.code("{t}_NOT_INSPECTING"), f"{kind.type} {insp.id} is {insp.status}, not INSPECTING"
        )


async def check_unit(uow: UnitOfWork, sn: str | None, run: Run, insp: Inspection) -> None:
    """404 UNIT_NOT_FOUND; another run's unit → UNIT_RUN_MISMATCH; outside a non-empty sample →
    UNIT_NOT_IN_SAMPLE."""
    if sn is None:
        return
    row = (await uow.session.execute(select(Unit.id, Unit.run_id).where(Unit.sn == sn))).first()
    if row is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    if row.run_id != run.id:
        raise Rejected("UNIT_RUN_MISMATCH", f"Unit {sn} does not belong to run {run.run_no}")
    sample = (insp.data or {}).get("sampledUnitIds") or []
    if sample and row.id not in sample:
        raise Rejected(
            "UNIT_NOT_IN_SAMPLE", f"Unit {sn} is not in the {insp.type} sample of run {run.run_no}"
        )


async def add_item(uow: UnitOfWork, kind: Kind, inspection_id: int, values: dict[str, Any]) -> dict[str, Any]:
    insp = await get(uow, kind, inspection_id, lock=True)
    require_inspecting(kind, insp)
    run = await run_of(uow, insp)
    await check_unit(uow, values.get("unit_sn"), run, insp)
    item = InspectionItem(inspection_id=insp.id, **values, meta={})
    uow.session.add(item)
    await uow.session.flush()
    uow.audit(
        insp.id,
        display(insp, run),
        entity_type="INSPECTION",
        action=kind.code("{t}_ITEM_ADD"),
        after={"itemId": item.id, **item_view(item)},
    )
    return item_out(item)


async def update_item(
    uow: UnitOfWork,
    kind: Kind,
    inspection_id: int,
    item_id: int,
    changes: dict[str, Any],
    *,
    keep: tuple[str, ...],
) -> dict[str, Any]:
    """Edit an item while INSPECTING; the fields in `keep` cannot be cleared (an explicit null is ignored)."""
    insp = await get(uow, kind, inspection_id, lock=True)
    item = await uow.session.get(InspectionItem, item_id)
    if item is None or item.inspection_id != insp.id:
        raise NotFound(kind.code("{t}_ITEM_NOT_FOUND"), f"{kind.type} {inspection_id} has no item {item_id}")
    require_inspecting(kind, insp)
    run = await run_of(uow, insp)
    changes = {k: v for k, v in changes.items() if not (k in keep and v is None)}
    await check_unit(uow, changes.get("unit_sn"), run, insp)
    before = item_view(item)
    for name, value in changes.items():
        setattr(item, name, value)
    await uow.session.flush()
    uow.audit(
        insp.id,
        display(insp, run),
        entity_type="INSPECTION",
        action=kind.code("{t}_ITEM_UPDATE"),
        before={"itemId": item.id, **before},
        after={"itemId": item.id, **item_view(item)},
    )
    return item_out(item)


async def decide(
    uow: UnitOfWork,
    kind: Kind,
    insp: Inspection,
    run: Run,
    decision: str,
    passed: int | None,
    failed: int | None,
    remark: str | None,
) -> dict[str, Any]:
    """INSPECTING → PASS|FAIL with the count rule (INVALID_{T}_COUNTS); a PASS with a FAIL item is refused
    ({T}_ITEMS_FAILED). Sets decidedBy/At and clears the active key. → the audit `before` view."""
    require_inspecting(kind, insp)
    p, f = counts(decision, insp.sample_qty, passed, failed, code=kind.code("INVALID_{t}_COUNTS"))
    if decision == "PASS" and (bad := [i.item_name for i in await items_of(uow, insp) if i.result == "FAIL"]):
        raise Rejected(
            kind.code("{t}_ITEMS_FAILED"),
            f"{kind.type} items failed: {', '.join(bad)}",
            details={"items": bad},
        )
    before = view(insp)
    INSPECTION.apply(insp, "pass" if decision == "PASS" else "fail")
    insp.passed_qty, insp.failed_qty = p, f
    insp.decided_by, insp.decided_at = uow.actor.name, utcnow()
    insp.active_key = None
    if remark is not None:
        insp.remark = remark
    return before
