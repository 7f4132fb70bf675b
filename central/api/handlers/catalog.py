"""Material master data: materials, material lots and BOM lines (api.md master data)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.catalog import (
    BomItemCreate,
    BomItemOut,
    BomQuery,
    MaterialCreate,
    MaterialLotCreate,
    MaterialLotOut,
    MaterialLotQuery,
    MaterialOut,
    MaterialQuery,
)
from central.services import catalog

router = Router(tag="catalog", entity_type="MATERIAL")
WRITE = ("system:integration", "system:config")


@router.get("/materials")
async def list_materials(rq: Req, query: MaterialQuery) -> Page[MaterialOut]:
    """Materials (search: code, name; filters: category, isActive)."""
    return await rq.read(catalog.list_materials, query)


@router.post("/materials", perms=WRITE, action="MATERIAL_CREATE")
async def create_material(rq: Req, body: MaterialCreate) -> MaterialOut:
    """Create a material."""
    return await rq.write(catalog.create_material, body)


@router.get("/material-lots")
async def list_material_lots(rq: Req, query: MaterialLotQuery) -> Page[MaterialLotOut]:
    """Material lots (search: materialCode, lotNo, supplier; filters: materialCode, lotNo)."""
    return await rq.read(catalog.list_lots, query)


@router.post(
    "/material-lots", perms=WRITE, status=201, entity_type="MATERIAL_LOT", action="MATERIAL_LOT_CREATE"
)
async def create_material_lot(rq: Req, body: MaterialLotCreate) -> MaterialLotOut:
    """Register a lot (reel) of a known material."""
    return await rq.write(catalog.create_lot, body)


@router.get("/boms")
async def list_boms(rq: Req, query: BomQuery) -> Page[BomItemOut]:
    """BOM lines (search: parentCode, childCode; filters: parentCode, childCode)."""
    return await rq.read(catalog.list_bom_items, query)


@router.post("/boms", perms=WRITE, entity_type="BOM", action="BOM_ITEM_CREATE")
async def create_bom_item(rq: Req, body: BomItemCreate) -> BomItemOut:
    """Add a child material to a parent's BOM."""
    return await rq.write(catalog.create_bom_item, body)
