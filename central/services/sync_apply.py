"""What a pulled ERP page does to MES data (domain.md §9 "Pull"): upserts, raw copies, status mapping.

Each `apply_*` takes the page's valid items as `(raw dict, parsed item)` pairs, writes through the unit of
work without committing, and returns counts plus the items it refused (they never fail the whole page).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy import select

from central.db.models import (
    BomItem,
    ErpBomRaw,
    ErpMaterialRaw,
    ErpWorkCenterRaw,
    ErpWorkOrderRaw,
    Material,
    Routing,
    Run,
    WorkCenter,
    WorkOrder,
)
from central.domain.clock import utcnow
from central.domain.states import WORK_ORDER
from central.schemas.sync import (
    ErpBomItem,
    ErpMaterial,
    ErpWorkCenter,
    ErpWorkOrder,
    UpstreamItem,
)
from central.services import work_orders
from central.services.uow import UnitOfWork

I = TypeVar("I", bound=UpstreamItem)  # noqa: E741
Pairs = Sequence[tuple[dict[str, Any], I]]
WO_BATCH = 50

# ERP FStatus → MES status (domain.md §3): 1 planned, 2 released, 3 started, 4–7 finished/closed/cancelled.
ERP_WO_STATUS = {"1": "RECEIVED", "2": "RELEASED", "3": "IN_PROGRESS", **dict.fromkeys("4567", "COMPLETED")}
_WO_RANK = {"RECEIVED": 0, "RELEASED": 1, "IN_PROGRESS": 2, "COMPLETED": 3}
_WO_MOVE = {
    "RECEIVED": "erp_received",
    "RELEASED": "erp_released",
    "IN_PROGRESS": "erp_in_progress",
    "COMPLETED": "erp_completed",
}


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, key: str | None, code: str, message: str) -> None:
        self.rejected.append({"key": key, "code": code, "message": message})


def payload_hash(raw: Any) -> str:
    return hashlib.sha256(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)).hexdigest()


def erp_wo_status(fstatus: str | None) -> str:
    return ERP_WO_STATUS.get((fstatus or "").strip(), "RECEIVED")


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def raw_rows(uow: UnitOfWork, model: Any, keys: list[str]) -> dict[str, Any]:
    rows = await uow.session.scalars(select(model).where(model.business_key.in_(keys)))
    return {r.business_key: r for r in rows}


def keep_raw(uow: UnitOfWork, rows: dict[str, Any], model: Any, key: str, raw: Any, **extra: Any) -> bool:
    """Stores the latest raw payload of `key`; False when it is byte-for-byte what is already stored."""
    digest = payload_hash(raw)
    row = rows.get(key)
    if row is not None and row.payload_hash == digest:
        return False
    if row is None:
        row = model(business_key=key, **extra)
        uow.session.add(row)
        rows[key] = row
    row.payload, row.payload_hash, row.fetched_at = raw, digest, utcnow()
    return True


def set_changed(obj: Any, **values: Any) -> bool:
    """Assigns only the differing values (an unchanged row stays untouched); True if any differed."""
    changed = False
    for name, value in values.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    return changed


# ---- ERP master data ------------------------------------------------------------------------------------


async def apply_materials(uow: UnitOfWork, items: Pairs[ErpMaterial]) -> Counts:
    s, c = uow.session, Counts()
    codes = [it.material_code for _, it in items]
    raws = await raw_rows(uow, ErpMaterialRaw, codes)
    rows = {m.code: m for m in await s.scalars(select(Material).where(Material.code.in_(codes)))}
    for raw, it in items:
        row = rows.get(it.material_code)
        if not keep_raw(uow, raws, ErpMaterialRaw, it.material_code, raw) and row is not None:
            c.unchanged += 1
            continue
        values = {
            "name": it.name or it.material_code,
            "category": it.category or None,
            "unit": it.unit or None,
            "is_active": it.is_active,
            "source_system": "ERP",
        }
        if row is None:
            rows[it.material_code] = row = Material(code=it.material_code, meta={}, **values)
            s.add(row)
            c.created += 1
        else:
            set_changed(row, **values)
            c.updated += 1
        row.meta = {**(row.meta or {}), "erp": raw}
    await s.flush()
    return c


async def apply_boms(uow: UnitOfWork, items: Pairs[ErpBomItem]) -> Counts:
    s, c = uow.session, Counts()
    keys = [f"{it.parent_code}:{it.child_code}" for _, it in items]
    raws = await raw_rows(uow, ErpBomRaw, keys)
    parents = {it.parent_code for _, it in items}
    rows = {
        f"{b.parent_code}:{b.child_code}": b
        for b in await s.scalars(select(BomItem).where(BomItem.parent_code.in_(parents)))
    }
    for (raw, it), key in zip(items, keys, strict=True):
        if it.parent_code == it.child_code:
            c.reject(key, "BOM_ITEM_SELF_REFERENCE", f"{it.parent_code} cannot be its own BOM child")
            continue
        row = rows.get(key)
        if not keep_raw(uow, raws, ErpBomRaw, key, raw, parent_code=it.parent_code) and row is not None:
            c.unchanged += 1
            continue
        # ERP sends the usage as numerator/denominator; qty keeps their quotient (decimals preserved).
        values = {
            "numerator": it.qty,
            "denominator": it.denominator,
            "qty": it.qty / it.denominator,
            "unit": it.unit or None,
            "source_system": "ERP",
        }
        if row is None:
            rows[key] = row = BomItem(parent_code=it.parent_code, child_code=it.child_code, meta={}, **values)
            s.add(row)
            c.created += 1
        else:
            set_changed(row, **values)
            c.updated += 1
        row.meta = {**(row.meta or {}), "erp": raw}
    await s.flush()
    return c


async def apply_work_centers(uow: UnitOfWork, items: Pairs[ErpWorkCenter]) -> Counts:
    s, c = uow.session, Counts()
    codes = [it.work_center_code for _, it in items]
    raws = await raw_rows(uow, ErpWorkCenterRaw, codes)
    rows = {w.code: w for w in await s.scalars(select(WorkCenter).where(WorkCenter.code.in_(codes)))}
    for raw, it in items:
        row = rows.get(it.work_center_code)
        if not keep_raw(uow, raws, ErpWorkCenterRaw, it.work_center_code, raw) and row is not None:
            c.unchanged += 1
            continue
        values = {
            "name": it.name or it.work_center_code,
            "department": it.department_code or None,
            "source_system": "ERP",
        }
        if row is None:
            rows[it.work_center_code] = row = WorkCenter(code=it.work_center_code, meta={}, **values)
            s.add(row)
            c.created += 1
        else:
            set_changed(row, **values)
            c.updated += 1
        row.meta = {**(row.meta or {}), "erp": raw}
    await s.flush()
    return c


# ---- ERP work orders ------------------------------------------------------------------------------------


def _wo_view(wo: WorkOrder) -> dict[str, Any]:
    return {**work_orders.snapshot(wo), "erpStatus": wo.erp_status, "erpPickStatus": wo.erp_pick_status}


async def apply_work_orders(uow: UnitOfWork, items: Pairs[ErpWorkOrder]) -> Counts:
    """Re-applied on every pull: ERP status only moves a WO forward, a routing override always wins."""
    c = Counts()
    by_product: dict[str, Routing | None] = {}
    for batch in chunks(items, WO_BATCH):
        await _work_order_batch(uow, batch, c, by_product)
    return c


async def _work_order_batch(
    uow: UnitOfWork, batch: Pairs[ErpWorkOrder], c: Counts, by_product: dict[str, Routing | None]
) -> None:
    s = uow.session
    nos = [it.wo_no for _, it in batch]
    stmt = select(WorkOrder).where(WorkOrder.wo_no.in_(nos)).with_for_update()
    wos = {w.wo_no: w for w in await s.scalars(stmt)}
    with_runs = set(
        await s.scalars(
            select(Run.wo_id).where(Run.wo_id.in_([w.id for w in wos.values()])).group_by(Run.wo_id)
        )
    )
    codes = {it.routing_code for _, it in batch if it.routing_code}
    routings = {r.code: r for r in await s.scalars(select(Routing).where(Routing.code.in_(codes)))}
    raws = await raw_rows(uow, ErpWorkOrderRaw, nos)
    audits: list[tuple[WorkOrder, dict[str, Any] | None]] = []
    for raw, it in batch:
        wo = wos.get(it.wo_no)
        before = _wo_view(wo) if wo is not None else None
        routing, resolution = await _resolve_routing(uow, wo, it, routings, by_product, with_runs)
        if wo is None:
            wos[it.wo_no] = wo = WorkOrder(
                wo_no=it.wo_no,
                product_code=it.product_code,
                planned_qty=it.planned_qty,
                status="RECEIVED",
                source_system="ERP",
                meta={},
            )
            s.add(wo)
        set_changed(
            wo,
            product_code=it.product_code,
            planned_qty=it.planned_qty,
            erp_status=it.status or None,
            erp_pick_status=it.pick_status or None,
        )
        if it.due_date is not None:
            set_changed(wo, due_date=it.due_date)
        if routing is not None:
            set_changed(wo, routing_id=routing.id)
        target = erp_wo_status(it.status)
        if _WO_RANK[target] > _WO_RANK.get(wo.status, 0):  # ERP never moves a WO backwards
            WORK_ORDER.apply(wo, _WO_MOVE[target])
        erp_meta = {"raw": raw, "routing": resolution}
        if (wo.meta or {}).get("erp") != erp_meta:
            wo.meta = {**(wo.meta or {}), "erp": erp_meta}
        keep_raw(uow, raws, ErpWorkOrderRaw, it.wo_no, raw)
        if before is None or before != _wo_view(wo):
            audits.append((wo, before))
        else:
            c.unchanged += 1
    await s.flush()
    for wo, before in audits:
        if before is None:
            c.created += 1
        else:
            c.updated += 1
        uow.audit(
            wo.id,
            wo.wo_no,
            entity_type="WORK_ORDER",
            action="WORK_ORDER_RECEIVE",
            before=before,
            after=_wo_view(wo),
            payload={"sourceSystem": "ERP", "erpStatus": wo.erp_status},
        )


async def _resolve_routing(
    uow: UnitOfWork,
    wo: WorkOrder | None,
    it: ErpWorkOrder,
    routings: dict[str, Routing],
    by_product: dict[str, Routing | None],
    with_runs: set[int],
) -> tuple[Routing | None, dict[str, Any]]:
    """routingCode, else the product's unique active+effective routing; never over an override or runs."""
    info: dict[str, Any] = {"routingCode": it.routing_code}
    if wo is not None and (wo.meta or {}).get("routingOverride"):
        return None, {**info, "mode": "override"}
    if wo is not None and wo.id in with_runs:
        return None, {**info, "mode": "kept_has_runs"}
    if it.routing_code:
        found = routings.get(it.routing_code)
        return found, {**info, "mode": "routing_code" if found else "not_found"}
    if it.product_code not in by_product:
        by_product[it.product_code] = await work_orders.routing_for_product(uow, it.product_code)
    found = by_product[it.product_code]
    return found, {**info, "mode": "product_code" if found else "unresolved"}
