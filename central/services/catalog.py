"""Material master data (domain.md "Master data"): materials, material lots and BOM lines."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import BomItem, Material, MaterialLot
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.catalog import (
    BomItemCreate,
    BomQuery,
    MaterialCreate,
    MaterialLotCreate,
    MaterialLotQuery,
    MaterialQuery,
)
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork


async def _flush_or(uow: UnitOfWork, code: str, message: str) -> None:
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Conflict(code, message) from None


async def _material_exists(uow: UnitOfWork, code: str) -> None:
    if not await uow.session.scalar(select(Material.id).where(Material.code == code)):
        raise NotFound("MATERIAL_NOT_FOUND", f"Material {code} not found")


async def list_materials(uow: UnitOfWork, q: MaterialQuery) -> dict[str, Any]:
    stmt = select(Material)
    if categories := split_csv(q.category):
        stmt = stmt.where(Material.category.in_(categories))
    if q.is_active is not None:
        stmt = stmt.where(Material.is_active.is_(q.is_active))
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": Material.created_at, "code": Material.code, "name": Material.name},
        search=[Material.code, Material.name],
    )


async def create_material(uow: UnitOfWork, body: MaterialCreate) -> Material:
    message = f"Material {body.code} already exists"
    if await uow.session.scalar(select(Material.id).where(Material.code == body.code)):
        raise Conflict("MATERIAL_CODE_EXISTS", message)
    m = Material(
        code=body.code,
        name=body.name,
        category=body.category or None,
        unit=body.unit or None,
        source_system="MES",
    )
    uow.session.add(m)
    await _flush_or(uow, "MATERIAL_CODE_EXISTS", message)
    after = {"code": m.code, "name": m.name, "category": m.category, "unit": m.unit, "sourceSystem": "MES"}
    uow.audit(m.id, m.code, entity_type="MATERIAL", action="MATERIAL_CREATE", after=after)
    return m


async def list_lots(uow: UnitOfWork, q: MaterialLotQuery) -> dict[str, Any]:
    stmt = select(MaterialLot)
    if codes := split_csv(q.material_code):
        stmt = stmt.where(MaterialLot.material_code.in_(codes))
    if q.lot_no:
        stmt = stmt.where(MaterialLot.lot_no == q.lot_no)
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": MaterialLot.created_at,
            "materialCode": MaterialLot.material_code,
            "lotNo": MaterialLot.lot_no,
        },
        search=[MaterialLot.material_code, MaterialLot.lot_no, MaterialLot.supplier],
    )


async def create_lot(uow: UnitOfWork, body: MaterialLotCreate) -> MaterialLot:
    s = uow.session
    await _material_exists(uow, body.material_code)
    message = f"Lot {body.lot_no} of material {body.material_code} already exists"
    dup = select(MaterialLot.id).where(
        MaterialLot.material_code == body.material_code, MaterialLot.lot_no == body.lot_no
    )
    if await s.scalar(dup):
        raise Conflict("MATERIAL_LOT_DUPLICATE", message)
    lot = MaterialLot(
        material_code=body.material_code,
        lot_no=body.lot_no,
        supplier=body.supplier or None,
        iqc_result=body.iqc_result,
    )
    s.add(lot)
    await _flush_or(uow, "MATERIAL_LOT_DUPLICATE", message)
    after = {
        "materialCode": lot.material_code,
        "lotNo": lot.lot_no,
        "supplier": lot.supplier,
        "iqcResult": lot.iqc_result,
    }
    display = f"{lot.material_code}/{lot.lot_no}"
    uow.audit(lot.id, display, entity_type="MATERIAL_LOT", action="MATERIAL_LOT_CREATE", after=after)
    return lot


async def list_bom_items(uow: UnitOfWork, q: BomQuery) -> dict[str, Any]:
    stmt = select(BomItem)
    if parents := split_csv(q.parent_code):
        stmt = stmt.where(BomItem.parent_code.in_(parents))
    if children := split_csv(q.child_code):
        stmt = stmt.where(BomItem.child_code.in_(children))
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": BomItem.created_at,
            "parentCode": BomItem.parent_code,
            "childCode": BomItem.child_code,
        },
        search=[BomItem.parent_code, BomItem.child_code],
    )


async def create_bom_item(uow: UnitOfWork, body: BomItemCreate) -> BomItem:
    s = uow.session
    if body.parent_code == body.child_code:
        raise Rejected("BOM_ITEM_SELF_REFERENCE", f"{body.parent_code} cannot be its own BOM child")
    await _material_exists(uow, body.child_code)
    message = f"BOM of {body.parent_code} already has child {body.child_code}"
    dup = select(BomItem.id).where(
        BomItem.parent_code == body.parent_code, BomItem.child_code == body.child_code
    )
    if await s.scalar(dup):
        raise Conflict("BOM_ITEM_DUPLICATE", message)
    if body.qty is not None:
        numerator, denominator = body.qty, 1.0
    else:
        numerator, denominator = float(body.numerator or 0), body.denominator or 1.0
    item = BomItem(
        parent_code=body.parent_code,
        child_code=body.child_code,
        qty=numerator / denominator,
        numerator=numerator,
        denominator=denominator,
        unit=body.unit or None,
        source_system="MES",
    )
    s.add(item)
    await _flush_or(uow, "BOM_ITEM_DUPLICATE", message)
    after = {
        "parentCode": item.parent_code,
        "childCode": item.child_code,
        "qty": item.qty,
        "numerator": numerator,
        "denominator": denominator,
        "unit": item.unit,
    }
    display = f"{item.parent_code}/{item.child_code}"
    uow.audit(item.id, display, entity_type="BOM", action="BOM_ITEM_CREATE", after=after)
    return item
