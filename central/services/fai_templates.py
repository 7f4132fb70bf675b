"""FAI templates (domain.md "Routing"): the checklist a first-article inspection is created from."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import FaiTemplate, FaiTemplateItem
from central.domain.clock import utcnow
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.routing import FaiItemIn, FaiTemplateCreate, FaiTemplateQuery, FaiTemplateUpdate
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork


def _view(t: FaiTemplate) -> dict[str, Any]:
    """Audit before/after: wire names, JSON-safe."""
    return {
        "code": t.code,
        "name": t.name,
        "productCode": t.product_code,
        "processType": t.process_type,
        "version": t.version,
        "isActive": t.is_active,
        "items": [
            {"seq": i.seq, "itemName": i.item_name, "itemSpec": i.item_spec, "required": i.required}
            for i in sorted(t.items, key=lambda i: i.seq)
        ],
    }


def _check_items(items: list[FaiItemIn]) -> None:
    seqs = [i.seq for i in items]
    dup = sorted({s for s in seqs if seqs.count(s) > 1})
    if dup:
        raise Rejected("FAI_TEMPLATE_ITEM_SEQ_DUPLICATE", f"Duplicate item seq: {dup}", details=dup)


async def _get(uow: UnitOfWork, template_id: int, *, lock: bool = False) -> FaiTemplate:
    t = await uow.session.get(FaiTemplate, template_id, with_for_update=lock or None)
    if t is None:
        raise NotFound("FAI_TEMPLATE_NOT_FOUND", f"FAI template {template_id} not found")
    return t


async def list_templates(uow: UnitOfWork, q: FaiTemplateQuery) -> dict[str, Any]:
    stmt = select(FaiTemplate)
    if products := split_csv(q.product_code):
        stmt = stmt.where(FaiTemplate.product_code.in_(products))
    if types := split_csv(q.process_type):
        stmt = stmt.where(FaiTemplate.process_type.in_(types))
    if q.is_active is not None:
        stmt = stmt.where(FaiTemplate.is_active.is_(q.is_active))
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": FaiTemplate.created_at, "code": FaiTemplate.code, "name": FaiTemplate.name},
        search=[FaiTemplate.code, FaiTemplate.name],
    )


async def get_template(uow: UnitOfWork, template_id: int) -> FaiTemplate:
    return await _get(uow, template_id)


async def create_template(uow: UnitOfWork, body: FaiTemplateCreate) -> FaiTemplate:
    s = uow.session
    if await s.scalar(select(FaiTemplate.id).where(FaiTemplate.code == body.code)):
        raise Conflict("FAI_TEMPLATE_CODE_EXISTS", f"FAI template {body.code} already exists")
    _check_items(body.items)
    t = FaiTemplate(
        code=body.code,
        name=body.name,
        product_code=body.product_code or None,
        process_type=body.process_type,
        version=body.version or None,
        is_active=body.is_active,
        items=[FaiTemplateItem(**i.model_dump()) for i in sorted(body.items, key=lambda i: i.seq)],
    )
    s.add(t)
    try:
        await s.flush()
    except IntegrityError:
        raise Conflict("FAI_TEMPLATE_CODE_EXISTS", f"FAI template {body.code} already exists") from None
    uow.audit(t.id, t.code, entity_type="FAI_TEMPLATE", action="FAI_TEMPLATE_CREATE", after=_view(t))
    return t


async def update_template(uow: UnitOfWork, template_id: int, body: FaiTemplateUpdate) -> FaiTemplate:
    """Name and activity change in place; `items` replaces the checklist (matched by seq)."""
    t = await _get(uow, template_id, lock=True)
    before = _view(t)
    if body.name is not None:
        t.name = body.name
    if body.is_active is not None:
        t.is_active = body.is_active
    if body.items is not None:
        _check_items(body.items)
        wanted = {i.seq: i for i in body.items}
        for item in [i for i in t.items if i.seq not in wanted]:
            t.items.remove(item)
        current = {i.seq: i for i in t.items}
        for seq, new in sorted(wanted.items()):
            if seq in current:
                for field, value in new.model_dump().items():
                    setattr(current[seq], field, value)
            else:
                t.items.append(FaiTemplateItem(**new.model_dump()))
        t.items.sort(key=lambda i: i.seq)
        t.updated_at = utcnow()
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Conflict(
            "FAI_TEMPLATE_ITEMS_CONFLICT", f"FAI template {t.code} changed meanwhile; retry"
        ) from None
    uow.audit(
        t.id, t.code, entity_type="FAI_TEMPLATE", action="FAI_TEMPLATE_UPDATE", before=before, after=_view(t)
    )
    return t
