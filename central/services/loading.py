"""Run loading (domain.md §6): load table and reads, helpers for readiness; scans are in loading_scan."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from central.db.models import (
    ExecutableRouteVersion,
    FeederSlot,
    LoadingRecord,
    MaterialLot,
    Run,
    RunSlotExpectation,
    SlotMaterialMapping,
    WorkOrder,
)
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.loading import RunLoadingQuery
from central.services.listing import paginate, split_csv
from central.services.loading_config import ENTITY, ensure_line_scope
from central.services.runs import get_run
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

VERIFY_PERMS = ("loading:verify",)
VIEW_PERMS = ("loading:view", "loading:config")


# ---- for readiness (domain.md §5 LOADING) --------------------------------------------------------


async def expectations_for_run(uow: UnitOfWork, run_id: int) -> list[RunSlotExpectation]:
    """The run's load table, ordered by slot position then slot code."""
    stmt = (
        select(RunSlotExpectation)
        .join(FeederSlot, FeederSlot.id == RunSlotExpectation.slot_id)
        .where(RunSlotExpectation.run_id == run_id)
        .order_by(FeederSlot.position, FeederSlot.slot_code)
    )
    return list((await uow.session.scalars(stmt)).all())


async def line_has_slots(uow: UnitOfWork, line_id: int) -> bool:
    return bool(await uow.session.scalar(select(FeederSlot.id).where(FeederSlot.line_id == line_id).limit(1)))


# ---- shared with loading_scan -----------------------------------------------------------------------


async def prep_run(uow: UnitOfWork, run_no: str) -> Run:
    run = await get_run(uow, run_no, lock=True)
    if run.line_id is None:
        raise Rejected("RUN_LINE_NOT_SET", f"Run {run_no} has no line")
    await ensure_line_scope(uow, run.line_id, VERIFY_PERMS, f"run {run_no}")
    if run.status != "PREP":
        raise Rejected("RUN_STATUS_INVALID", f"Loading needs a PREP run (run {run_no} is {run.status})")
    return run


_RECORD_COLS = (
    "id run_id slot_id material_lot_id material_code expected_code status verify_result fail_reason "
    "loaded_at loaded_by package_qty reviewed_by reviewed_at unloaded_at unloaded_by material_validation "
    "created_at"
).split()
_EXPECTATION_COLS = (
    "id run_id slot_id expected_material_code status loaded_material_code loaded_at loaded_by "
    "created_at updated_at"
).split()


def record_fields(rec: LoadingRecord, run_no: str, slot_code: str, lot_no: str) -> dict[str, Any]:
    return {
        **{c: getattr(rec, c) for c in _RECORD_COLS},
        "meta": dict(rec.meta or {}),
        "run_no": run_no,
        "slot_code": slot_code,
        "lot_no": lot_no,
    }


# ---- load table ----------------------------------------------------------------------------------


def plan_slot(candidates: list[SlotMaterialMapping]) -> tuple[str, list[str]] | None:
    """Most specific tier (product+routing > one of them > generic), by priority: (primary, alternates)."""
    if not candidates:
        return None

    def tier(m: SlotMaterialMapping) -> int:
        return (m.product_code is not None) + (m.routing_id is not None)

    best = max(tier(m) for m in candidates)
    kept = sorted((m for m in candidates if tier(m) == best), key=lambda m: (m.priority, m.id))
    primary = next((m for m in kept if not m.is_alternate), kept[0])
    alternates: list[str] = []
    for m in kept:
        if m.material_code != primary.material_code and m.material_code not in alternates:
            alternates.append(m.material_code)
    return primary.material_code, alternates


async def load_table(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    s = uow.session
    run = await prep_run(uow, run_no)
    if await s.scalar(select(LoadingRecord.id).where(LoadingRecord.run_id == run.id).limit(1)):
        raise Conflict("LOADING_ALREADY_STARTED", f"Loading of run {run_no} has already started")
    slots = list(
        (
            await s.scalars(
                select(FeederSlot)
                .where(FeederSlot.line_id == run.line_id)
                .order_by(FeederSlot.position, FeederSlot.slot_code)
            )
        ).all()
    )
    if not slots:
        raise NotFound("FEEDER_SLOTS_NOT_FOUND", f"The line of run {run_no} has no feeder slots")
    product = await s.scalar(select(WorkOrder.product_code).where(WorkOrder.id == run.wo_id))
    routing_id = (
        await s.scalar(
            select(ExecutableRouteVersion.routing_id).where(ExecutableRouteVersion.id == run.route_version_id)
        )
        if run.route_version_id
        else None
    )
    mappings = (
        await s.scalars(
            select(SlotMaterialMapping).where(SlotMaterialMapping.slot_id.in_([x.id for x in slots]))
        )
    ).all()
    by_slot: dict[int, list[SlotMaterialMapping]] = {x.id: [] for x in slots}
    for m in mappings:
        if m.product_code in (None, product) and m.routing_id in (None, routing_id):
            by_slot[m.slot_id].append(m)
    plans = {x.id: plan_slot(by_slot[x.id]) for x in slots}
    missing = [x.slot_code for x in slots if plans[x.id] is None]
    if missing:
        raise Rejected(
            "SLOT_MAPPING_MISSING",
            f"No material mapping fits product {product} for slot(s) {', '.join(missing)}",
            details={"slots": missing},
        )
    replaced = await s.scalar(
        select(func.count(RunSlotExpectation.id)).where(RunSlotExpectation.run_id == run.id)
    )
    await s.execute(delete(RunSlotExpectation).where(RunSlotExpectation.run_id == run.id))
    for x in slots:
        primary, alternates = plans[x.id]  # type: ignore[misc]
        s.add(
            RunSlotExpectation(
                run_id=run.id,
                slot_id=x.id,
                expected_material_code=primary,
                alternates=alternates,
                status="PENDING",
            )
        )
    await s.flush()
    uow.audit(
        run.id,
        run.run_no,
        entity_type=ENTITY,
        action="LOADING_TABLE_CREATE",
        payload={
            "created": len(slots),
            "replaced": replaced or 0,
            "expectations": {x.slot_code: plans[x.id][0] for x in slots},  # type: ignore[index]
        },
    )
    return {"run_id": run.id, "created": len(slots)}


# ---- reads ---------------------------------------------------------------------------------------


async def _visible_run(uow: UnitOfWork, run_no: str) -> Run:
    run = await get_run(uow, run_no)
    lines = await scoped_line_ids(uow, VIEW_PERMS)
    if lines is not None and run.line_id not in lines:  # like GET /runs/:runNo: out of scope reads as absent
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    return run


async def list_records(uow: UnitOfWork, run_no: str, q: RunLoadingQuery) -> dict[str, Any]:
    run = await _visible_run(uow, run_no)
    stmt = (
        select(LoadingRecord, FeederSlot.slot_code, MaterialLot.lot_no)
        .join(FeederSlot, FeederSlot.id == LoadingRecord.slot_id)
        .join(MaterialLot, MaterialLot.id == LoadingRecord.material_lot_id)
        .where(LoadingRecord.run_id == run.id)
    )
    if statuses := split_csv(q.status):
        stmt = stmt.where(LoadingRecord.status.in_(statuses))
    if results := split_csv(q.verify_result):
        stmt = stmt.where(LoadingRecord.verify_result.in_(results))
    if q.slot_code:
        stmt = stmt.where(FeederSlot.slot_code == q.slot_code)
    page = await paginate(
        uow.session,
        stmt,
        q,
        scalars=False,
        search=[LoadingRecord.material_code, MaterialLot.lot_no, FeederSlot.slot_code],
        default_sort="loadedAt.asc",
        sort_fields={
            "loadedAt": LoadingRecord.loaded_at,
            "createdAt": LoadingRecord.created_at,
            "slotCode": FeederSlot.slot_code,
            "status": LoadingRecord.status,
        },
    )
    page["items"] = [record_fields(rec, run.run_no, code, lot_no) for rec, code, lot_no in page["items"]]
    return page


async def list_expectations(uow: UnitOfWork, run_no: str, q: RunLoadingQuery) -> dict[str, Any]:
    run = await _visible_run(uow, run_no)
    stmt = (
        select(RunSlotExpectation, FeederSlot.slot_code, FeederSlot.position)
        .join(FeederSlot, FeederSlot.id == RunSlotExpectation.slot_id)
        .where(RunSlotExpectation.run_id == run.id)
    )
    if statuses := split_csv(q.status):
        stmt = stmt.where(RunSlotExpectation.status.in_(statuses))
    if q.slot_code:
        stmt = stmt.where(FeederSlot.slot_code == q.slot_code)
    page = await paginate(
        uow.session,
        stmt,
        q if q.sort else q.model_copy(update={"sort": "position.asc,slotCode.asc"}),
        scalars=False,
        search=[RunSlotExpectation.expected_material_code, FeederSlot.slot_code],
        sort_fields={
            "position": FeederSlot.position,
            "slotCode": FeederSlot.slot_code,
            "status": RunSlotExpectation.status,
            "createdAt": RunSlotExpectation.created_at,
        },
    )
    page["items"] = [
        {
            **{c: getattr(e, c) for c in _EXPECTATION_COLS},
            "alternates": [str(a) for a in e.alternates or []],
            "slot_code": code,
            "position": position,
        }
        for e, code, position in page["items"]
    ]
    return page
