"""Loading configuration (domain.md §6 "Config"): feeder slots of a line, slot↔material mappings, unlock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, exists, or_, select

from central.db.models import (
    FeederSlot,
    Line,
    LoadingRecord,
    Material,
    MaterialLot,
    Routing,
    RunSlotExpectation,
    SlotMaterialMapping,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, Forbidden, NotFound, Rejected
from central.schemas.loading import (
    FeederSlotCreate,
    FeederSlotQuery,
    FeederSlotUpdate,
    SlotMappingCreate,
    SlotMappingQuery,
    SlotMappingUpdate,
    UnlockBody,
)
from central.services.listing import paginate
from central.services.plant import flush_or, get_line_row
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

VIEW_PERMS = ("loading:view", "loading:config")
CONFIG_PERMS = ("loading:config",)
ENTITY = "LOADING"


async def ensure_line_scope(uow: UnitOfWork, line_id: int, perms: tuple[str, ...], what: str) -> None:
    """Ours (demo-plant.md §1): loading honours the data scope; station scope = lines of bound stations."""
    lines = await scoped_line_ids(uow, perms)
    if lines is not None and line_id not in lines:
        raise Forbidden("LINE_NOT_ASSIGNED", f"The line of {what} is not assigned to you")


def _audit(uow: UnitOfWork, entity_id: int, display: str, action: str, **kw: Any) -> None:
    uow.audit(entity_id, display, entity_type=ENTITY, action=action, **kw)


# ---- feeder slots --------------------------------------------------------------------------------


def _slot_view(slot: FeederSlot) -> dict[str, Any]:
    return {
        "slotCode": slot.slot_code,
        "name": slot.name,
        "position": slot.position,
        "isLocked": slot.is_locked,
        "failedAttempts": slot.failed_attempts,
        "lockedAt": iso(slot.locked_at),
        "lockedReason": slot.locked_reason,
        "currentMaterialLotId": slot.current_material_lot_id,
    }


_SLOT_COLS = (
    "id line_id slot_code name position current_material_lot_id is_locked failed_attempts locked_at "
    "locked_reason created_at updated_at"
).split()
_MAPPING_COLS = (
    "id slot_id material_code product_code routing_id priority is_alternate created_at updated_at"
).split()


def slot_fields(slot: FeederSlot, line_code: str, lot: MaterialLot | None = None) -> dict[str, Any]:
    return {
        **{c: getattr(slot, c) for c in _SLOT_COLS},
        "meta": dict(slot.meta or {}),
        "line_code": line_code,
        "current_material_code": lot.material_code if lot else None,
        "current_lot_no": lot.lot_no if lot else None,
    }


async def _slot_out(uow: UnitOfWork, slot: FeederSlot) -> dict[str, Any]:
    line_code = await uow.session.scalar(select(Line.code).where(Line.id == slot.line_id))
    lot = (
        await uow.session.get(MaterialLot, slot.current_material_lot_id)
        if slot.current_material_lot_id
        else None
    )
    return slot_fields(slot, line_code or "", lot)


async def _line_slot(uow: UnitOfWork, line: Line, slot_id: int, *, lock: bool = False) -> FeederSlot:
    stmt = select(FeederSlot).where(FeederSlot.id == slot_id, FeederSlot.line_id == line.id)
    slot = await uow.session.scalar(stmt.with_for_update() if lock else stmt)
    if slot is None:
        raise NotFound("SLOT_NOT_FOUND", f"Feeder slot {slot_id} not found on line {line.code}")
    return slot


async def slot_in_use(uow: UnitOfWork, slot: FeederSlot) -> bool:
    """A slot is in use while it carries a lot or any run's expectation or loading record points at it."""
    if slot.current_material_lot_id is not None:
        return True
    used = select(
        or_(
            exists().where(RunSlotExpectation.slot_id == slot.id),
            exists().where(LoadingRecord.slot_id == slot.id),
        )
    )
    return bool(await uow.session.scalar(used))


async def list_slots(uow: UnitOfWork, line_key: str, q: FeederSlotQuery) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    await ensure_line_scope(uow, line.id, VIEW_PERMS, f"line {line.code}")
    stmt = (
        select(FeederSlot, MaterialLot)
        .outerjoin(MaterialLot, MaterialLot.id == FeederSlot.current_material_lot_id)
        .where(FeederSlot.line_id == line.id)
    )
    if q.locked is not None:
        stmt = stmt.where(FeederSlot.is_locked.is_(q.locked))
    page = await paginate(
        uow.session,
        stmt,
        q if q.sort else q.model_copy(update={"sort": "position.asc,slotCode.asc"}),
        scalars=False,
        search=[FeederSlot.slot_code, FeederSlot.name],
        sort_fields={
            "position": FeederSlot.position,
            "slotCode": FeederSlot.slot_code,
            "createdAt": FeederSlot.created_at,
        },
    )
    page["items"] = [slot_fields(slot, line.code, lot) for slot, lot in page["items"]]
    return page


async def create_slot(uow: UnitOfWork, line_key: str, body: FeederSlotCreate) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    await ensure_line_scope(uow, line.id, CONFIG_PERMS, f"line {line.code}")
    message = f"Slot {body.slot_code} already exists on line {line.code}"
    dup = select(FeederSlot.id).where(FeederSlot.line_id == line.id, FeederSlot.slot_code == body.slot_code)
    if await uow.session.scalar(dup):
        raise Conflict("SLOT_CODE_EXISTS", message)
    slot = FeederSlot(
        line_id=line.id,
        slot_code=body.slot_code,
        name=body.name or None,
        position=body.position,
        is_locked=False,
        failed_attempts=0,
        meta={},
    )
    uow.session.add(slot)
    await flush_or(uow, "SLOT_CODE_EXISTS", message)
    _audit(uow, slot.id, f"{line.code}/{slot.slot_code}", "FEEDER_SLOT_CREATE", after=_slot_view(slot))
    return slot_fields(slot, line.code)


async def update_slot(uow: UnitOfWork, line_key: str, slot_id: int, body: FeederSlotUpdate) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    await ensure_line_scope(uow, line.id, CONFIG_PERMS, f"line {line.code}")
    slot = await _line_slot(uow, line, slot_id, lock=True)
    before = _slot_view(slot)
    sent = body.model_fields_set
    if "slot_code" in sent and body.slot_code and body.slot_code != slot.slot_code:
        # Ours: the code is the slot's identity on scans and records; it is frozen once the slot is used.
        if await slot_in_use(uow, slot):
            raise Conflict("SLOT_IN_USE", f"Slot {slot.slot_code} is in use; its code cannot change")
        dup = select(FeederSlot.id).where(
            FeederSlot.line_id == line.id, FeederSlot.slot_code == body.slot_code, FeederSlot.id != slot.id
        )
        if await uow.session.scalar(dup):
            raise Conflict("SLOT_CODE_EXISTS", f"Slot {body.slot_code} already exists on line {line.code}")
        slot.slot_code = body.slot_code
    if "name" in sent:
        slot.name = body.name or None
    if "position" in sent:
        slot.position = body.position
    await flush_or(uow, "SLOT_CODE_EXISTS", f"Slot {slot.slot_code} already exists on line {line.code}")
    _audit(
        uow,
        slot.id,
        f"{line.code}/{slot.slot_code}",
        "FEEDER_SLOT_UPDATE",
        before=before,
        after=_slot_view(slot),
    )
    return await _slot_out(uow, slot)


async def delete_slot(uow: UnitOfWork, line_key: str, slot_id: int) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    await ensure_line_scope(uow, line.id, CONFIG_PERMS, f"line {line.code}")
    slot = await _line_slot(uow, line, slot_id, lock=True)
    if await slot_in_use(uow, slot):
        raise Conflict(
            "SLOT_IN_USE",
            f"Slot {slot.slot_code} carries a lot or has run expectations/loading records",
        )
    before = _slot_view(slot)
    await uow.session.execute(delete(SlotMaterialMapping).where(SlotMaterialMapping.slot_id == slot.id))
    await uow.session.delete(slot)
    await uow.session.flush()
    _audit(uow, slot_id, f"{line.code}/{before['slotCode']}", "FEEDER_SLOT_DELETE", before=before)
    return {"id": slot_id, "deleted": True}


async def unlock_slot(uow: UnitOfWork, slot_id: int, body: UnlockBody) -> dict[str, Any]:
    reason = (body.reason or "").strip()
    slot = await uow.session.scalar(select(FeederSlot).where(FeederSlot.id == slot_id).with_for_update())
    if slot is None:
        raise NotFound("SLOT_NOT_FOUND", f"Feeder slot {slot_id} not found")
    await ensure_line_scope(uow, slot.line_id, CONFIG_PERMS, f"slot {slot.slot_code}")
    if not reason:
        raise Rejected("REASON_REQUIRED", "A reason is required to unlock a slot")
    if not slot.is_locked and slot.failed_attempts == 0:
        return await _slot_out(uow, slot)  # nothing to clear: a repeated unlock is a no-op
    before = _slot_view(slot)
    entry = {
        "by": uow.actor.name,
        "reason": reason,
        "at": iso(utcnow()),
        "previousLockedAt": iso(slot.locked_at),
        "previousLockedReason": slot.locked_reason,
        "previousFailedAttempts": slot.failed_attempts,
    }
    meta = dict(slot.meta or {})
    slot.meta = {**meta, "unlockHistory": [*(meta.get("unlockHistory") or []), entry]}
    slot.is_locked, slot.failed_attempts, slot.locked_at, slot.locked_reason = False, 0, None, None
    await uow.session.flush()
    _audit(
        uow,
        slot.id,
        slot.slot_code,
        "FEEDER_SLOT_UNLOCK",
        before=before,
        after=_slot_view(slot),
        payload={"reason": reason},
    )
    return await _slot_out(uow, slot)


# ---- slot ↔ material mappings --------------------------------------------------------------------


def _mapping_view(m: SlotMaterialMapping) -> dict[str, Any]:
    return {
        "materialCode": m.material_code,
        "productCode": m.product_code,
        "routingId": m.routing_id,
        "priority": m.priority,
        "isAlternate": m.is_alternate,
    }


def _mapping_select() -> Any:
    return (
        select(SlotMaterialMapping, FeederSlot.slot_code, FeederSlot.line_id, Line.code, Routing.code)
        .join(FeederSlot, FeederSlot.id == SlotMaterialMapping.slot_id)
        .join(Line, Line.id == FeederSlot.line_id)
        .outerjoin(Routing, Routing.id == SlotMaterialMapping.routing_id)
    )


def _mapping_fields(row: Any) -> dict[str, Any]:
    m, slot_code, line_id, line_code, routing_code = row
    return {
        **{c: getattr(m, c) for c in _MAPPING_COLS},
        "slot_code": slot_code,
        "line_id": line_id,
        "line_code": line_code,
        "routing_code": routing_code,
    }


async def _mapping_out(uow: UnitOfWork, mapping_id: int) -> dict[str, Any]:
    row = (await uow.session.execute(_mapping_select().where(SlotMaterialMapping.id == mapping_id))).one()
    return _mapping_fields(row)


async def _routing_id(uow: UnitOfWork, routing_id: int | None, routing_code: str | None) -> int | None:
    if routing_code is not None:
        rid = await uow.session.scalar(select(Routing.id).where(Routing.code == routing_code))
        if rid is None:
            raise NotFound("ROUTE_NOT_FOUND", f"Routing {routing_code} not found")
        if routing_id is not None and routing_id != rid:
            raise Rejected("ROUTING_MISMATCH", f"routingId {routing_id} is not routing {routing_code}")
        return int(rid)
    if routing_id is not None and await uow.session.get(Routing, routing_id) is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Routing {routing_id} not found")
    return routing_id


async def _material_exists(uow: UnitOfWork, code: str) -> None:
    if not await uow.session.scalar(select(Material.id).where(Material.code == code)):
        raise NotFound("MATERIAL_NOT_FOUND", f"Material {code} not found")


async def _check_unique(uow: UnitOfWork, slot_id: int, material: str, own_id: int | None = None) -> None:
    stmt = select(SlotMaterialMapping.id).where(
        SlotMaterialMapping.slot_id == slot_id, SlotMaterialMapping.material_code == material
    )
    if own_id is not None:
        stmt = stmt.where(SlotMaterialMapping.id != own_id)
    if await uow.session.scalar(stmt):
        raise Conflict("SLOT_MAPPING_DUPLICATE", f"Material {material} is already mapped to this slot")


async def list_mappings(uow: UnitOfWork, q: SlotMappingQuery) -> dict[str, Any]:
    stmt = _mapping_select()
    if q.slot_id is not None:
        stmt = stmt.where(SlotMaterialMapping.slot_id == q.slot_id)
    if q.line_id:
        stmt = stmt.where(FeederSlot.line_id == (await get_line_row(uow, q.line_id)).id)
    if q.material_code:
        stmt = stmt.where(SlotMaterialMapping.material_code == q.material_code)
    if q.product_code:
        stmt = stmt.where(SlotMaterialMapping.product_code == q.product_code)
    lines = await scoped_line_ids(uow, VIEW_PERMS)
    if lines is not None:
        stmt = stmt.where(FeederSlot.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q if q.sort else q.model_copy(update={"sort": "slotCode.asc,priority.asc"}),
        scalars=False,
        search=[SlotMaterialMapping.material_code, SlotMaterialMapping.product_code, FeederSlot.slot_code],
        sort_fields={
            "slotCode": FeederSlot.slot_code,
            "priority": SlotMaterialMapping.priority,
            "materialCode": SlotMaterialMapping.material_code,
            "createdAt": SlotMaterialMapping.created_at,
        },
    )
    page["items"] = [_mapping_fields(row) for row in page["items"]]
    return page


async def create_mapping(uow: UnitOfWork, body: SlotMappingCreate) -> dict[str, Any]:
    slot = await uow.session.get(FeederSlot, body.slot_id)
    if slot is None:
        raise NotFound("SLOT_NOT_FOUND", f"Feeder slot {body.slot_id} not found")
    await ensure_line_scope(uow, slot.line_id, CONFIG_PERMS, f"slot {slot.slot_code}")
    await _material_exists(uow, body.material_code)
    routing_id = await _routing_id(uow, body.routing_id, body.routing_code)
    await _check_unique(uow, slot.id, body.material_code)
    m = SlotMaterialMapping(
        slot_id=slot.id,
        material_code=body.material_code,
        product_code=body.product_code,
        routing_id=routing_id,
        priority=body.priority,
        is_alternate=body.is_alternate,
        meta={},
    )
    uow.session.add(m)
    await flush_or(uow, "SLOT_MAPPING_DUPLICATE", f"Material {body.material_code} is already mapped")
    _audit(uow, m.id, f"{slot.slot_code}:{m.material_code}", "SLOT_MAPPING_CREATE", after=_mapping_view(m))
    return await _mapping_out(uow, m.id)


async def _mapping(uow: UnitOfWork, mapping_id: int) -> tuple[SlotMaterialMapping, FeederSlot]:
    m = await uow.session.get(SlotMaterialMapping, mapping_id, with_for_update=True)
    if m is None:
        raise NotFound("SLOT_MAPPING_NOT_FOUND", f"Slot mapping {mapping_id} not found")
    slot = await uow.session.get(FeederSlot, m.slot_id)
    assert slot is not None
    await ensure_line_scope(uow, slot.line_id, CONFIG_PERMS, f"slot {slot.slot_code}")
    return m, slot


async def update_mapping(uow: UnitOfWork, mapping_id: int, body: SlotMappingUpdate) -> dict[str, Any]:
    m, slot = await _mapping(uow, mapping_id)
    before = _mapping_view(m)
    sent = body.model_fields_set
    if body.material_code is not None and body.material_code != m.material_code:
        await _material_exists(uow, body.material_code)
        await _check_unique(uow, slot.id, body.material_code, m.id)
        m.material_code = body.material_code
    if "product_code" in sent:
        m.product_code = body.product_code
    if "routing_code" in sent or "routing_id" in sent:
        m.routing_id = await _routing_id(uow, body.routing_id, body.routing_code)
    if body.priority is not None:
        m.priority = body.priority
    if body.is_alternate is not None:
        m.is_alternate = body.is_alternate
    await flush_or(uow, "SLOT_MAPPING_DUPLICATE", f"Material {m.material_code} is already mapped")
    _audit(
        uow,
        m.id,
        f"{slot.slot_code}:{m.material_code}",
        "SLOT_MAPPING_UPDATE",
        before=before,
        after=_mapping_view(m),
    )
    return await _mapping_out(uow, m.id)


async def delete_mapping(uow: UnitOfWork, mapping_id: int) -> dict[str, Any]:
    m, slot = await _mapping(uow, mapping_id)
    before = _mapping_view(m)
    await uow.session.delete(m)
    await uow.session.flush()
    _audit(
        uow, mapping_id, f"{slot.slot_code}:{before['materialCode']}", "SLOT_MAPPING_DELETE", before=before
    )
    return {"id": mapping_id, "deleted": True}
