"""Readiness evaluators (domain.md §5): one pure-ish function per item type, reading the plant state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from central.db.models import (
    BomItem,
    ExecutableRouteVersion,
    FeederSlot,
    Line,
    Material,
    Routing,
    Run,
    RunSlotExpectation,
    Station,
    TpmEquipment,
    TpmMaintenanceTask,
    WorkOrder,
)
from central.domain import route
from central.services.consumables import current_paste_status, current_stencil_status
from central.services.loading import line_has_slots
from central.services.uow import UnitOfWork

# Types the current phase may enable (domain.md "Scope now"); the PREP_* and TIME_RULE items come later.
ENABLED_NOW = ("EQUIPMENT", "MATERIAL", "ROUTE", "STENCIL", "SOLDER_PASTE", "LOADING")
_BLOCKING_TASK_TYPES = {"repair", "critical", "breakdown"}
_OPEN_TASK = {"pending", "in_progress"}


@dataclass
class Item:
    item_type: str
    item_key: str
    passed: bool
    fail_reason: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


async def equipment(uow: UnitOfWork, run: Run) -> list[Item]:
    s = uow.session
    stations = (
        await s.scalars(
            select(Station)
            .where(Station.line_id == run.line_id, Station.is_active.is_(True))
            .order_by(Station.code)
        )
    ).all()
    codes = [st.code for st in stations]
    tpm = (
        {
            e.equipment_code: e
            for e in (
                await s.scalars(select(TpmEquipment).where(TpmEquipment.equipment_code.in_(codes)))
            ).all()
        }
        if codes
        else {}
    )
    tasks = (
        (
            await s.scalars(select(TpmMaintenanceTask).where(TpmMaintenanceTask.equipment_code.in_(codes)))
        ).all()
        if codes
        else []
    )
    blocking = {
        t.equipment_code: t
        for t in tasks
        if (t.status or "").lower() in _OPEN_TASK and (t.type or "").lower() in _BLOCKING_TASK_TYPES
    }
    out = []
    for code in codes:
        e = tpm.get(code)
        if e is None:
            out.append(Item("EQUIPMENT", code, False, "TPM_EQUIPMENT_MISSING"))
        elif e.status != "normal":
            out.append(Item("EQUIPMENT", code, False, f"TPM_STATUS_{e.status}", {"status": e.status}))
        elif code in blocking:
            t = blocking[code]
            out.append(
                Item("EQUIPMENT", code, False, "MAINTENANCE_OPEN", {"taskNo": t.task_no, "type": t.type})
            )
        else:
            out.append(Item("EQUIPMENT", code, True, evidence={"status": e.status}))
    return out


async def material(uow: UnitOfWork, run: Run) -> list[Item]:
    s = uow.session
    product = await s.scalar(select(WorkOrder.product_code).where(WorkOrder.id == run.wo_id))
    children = list(
        await s.scalars(
            select(BomItem.child_code).where(BomItem.parent_code == product).order_by(BomItem.child_code)
        )
    )
    if not children:
        return [Item("MATERIAL", product or "?", False, "BOM_MISSING")]
    known = set(await s.scalars(select(Material.code).where(Material.code.in_(children))))
    return [Item("MATERIAL", c, c in known, None if c in known else "MATERIAL_NOT_FOUND") for c in children]


async def route_item(uow: UnitOfWork, run: Run) -> list[Item]:
    s = uow.session
    version = await s.get(ExecutableRouteVersion, run.route_version_id) if run.route_version_id else None
    key = "ROUTE"
    if version is None or version.status != "READY":
        return [Item("ROUTE", key, False, "ROUTE_VERSION_NOT_READY")]
    key = await s.scalar(select(Routing.code).where(Routing.id == version.routing_id)) or key
    stations = (
        await s.scalars(select(Station).where(Station.line_id == run.line_id, Station.is_active.is_(True)))
    ).all()
    unfit = [
        st["stepNo"]
        for st in route.steps(version.snapshot_json)
        if not any(
            route.station_fits(st, station_id=x.id, station_type=x.station_type, group_id=x.group_id)
            for x in stations
        )
    ]
    if unfit:
        return [Item("ROUTE", key, False, "STATION_MISSING_FOR_STEP", {"stepNos": unfit})]
    return [Item("ROUTE", key, True, evidence={"versionNo": version.version_no})]


async def stencil(uow: UnitOfWork, run: Run) -> list[Item]:
    stencil_id, status = await current_stencil_status(uow, run.line_id)
    if stencil_id is None:
        return [Item("STENCIL", "NONE", False, "NO_CURRENT_STENCIL")]
    ok = status == "READY"
    return [
        Item(
            "STENCIL", stencil_id, ok, None if ok else f"STENCIL_{status or 'NO_STATUS'}", {"status": status}
        )
    ]


async def solder_paste(uow: UnitOfWork, run: Run) -> list[Item]:
    lot_id, status = await current_paste_status(uow, run.line_id)
    if lot_id is None:
        return [Item("SOLDER_PASTE", "NONE", False, "NO_CURRENT_SOLDER_PASTE")]
    ok = status == "COMPLIANT"
    return [
        Item(
            "SOLDER_PASTE",
            lot_id,
            ok,
            None if ok else f"SOLDER_PASTE_{status or 'NO_STATUS'}",
            {"status": status},
        )
    ]


async def loading(uow: UnitOfWork, run: Run) -> list[Item]:
    s = uow.session
    rows = (
        await s.execute(
            select(RunSlotExpectation, FeederSlot.slot_code)
            .join(FeederSlot, FeederSlot.id == RunSlotExpectation.slot_id)
            .where(RunSlotExpectation.run_id == run.id)
            .order_by(FeederSlot.slot_code)
        )
    ).all()
    if rows:
        return [
            Item(
                "LOADING",
                code,
                e.status == "LOADED",
                None if e.status == "LOADED" else f"SLOT_{e.status}",
                {"expected": e.expected_material_code, "loaded": e.loaded_material_code},
            )
            for e, code in rows
        ]
    has_slots = await line_has_slots(uow, run.line_id)
    return [Item("LOADING", "SLOT_TABLE", False, "SLOT_TABLE_MISSING")] if has_slots else []


EVALUATORS = {
    "EQUIPMENT": equipment,
    "MATERIAL": material,
    "ROUTE": route_item,
    "STENCIL": stencil,
    "SOLDER_PASTE": solder_paste,
    "LOADING": loading,
}


def enabled_types(line: Line) -> list[str]:
    """The line's `meta.readinessChecks.enabled`; absent ⇒ every type that exists now."""
    cfg = (line.meta or {}).get("readinessChecks")
    if not isinstance(cfg, dict) or "enabled" not in cfg:
        return list(ENABLED_NOW)
    return [t for t in ENABLED_NOW if t in (cfg.get("enabled") or [])]
