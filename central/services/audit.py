"""Reading the append-only audit log (writes happen in UnitOfWork and the refusal middleware)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import AuditEvent
from central.domain.errors import NotFound
from central.schemas.audit import AuditQuery
from central.services.listing import paginate
from central.services.uow import UnitOfWork


def _privileged(uow: UnitOfWork) -> bool:
    return uow.actor.has_any(("system:config",))


async def list_events(uow: UnitOfWork, q: AuditQuery) -> dict[str, Any]:
    stmt = select(AuditEvent)
    if not _privileged(uow):  # others see only what they did themselves
        stmt = stmt.where(AuditEvent.actor_id == uow.actor.user_id)
    filters = {
        AuditEvent.actor_id: q.actor_id,
        AuditEvent.entity_type: q.entity_type,
        AuditEvent.entity_id: q.entity_id,
        AuditEvent.action: q.action,
        AuditEvent.status: q.status,
    }
    for col, value in filters.items():
        if value is not None:
            stmt = stmt.where(col == value)
    if q.from_ is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= q.from_)
    if q.to is not None:
        stmt = stmt.where(AuditEvent.occurred_at <= q.to)
    return await paginate(
        uow.session,
        stmt,
        q,
        default_sort="occurredAt.desc",
        sort_fields={
            "occurredAt": AuditEvent.occurred_at,
            "createdAt": AuditEvent.occurred_at,
            "action": AuditEvent.action,
            "entityType": AuditEvent.entity_type,
        },
        search=[AuditEvent.entity_display],
    )


async def get_event(uow: UnitOfWork, event_id: int) -> AuditEvent:
    row = await uow.session.get(AuditEvent, event_id)
    if row is None or (not _privileged(uow) and row.actor_id != uow.actor.user_id):
        raise NotFound("AUDIT_EVENT_NOT_FOUND", f"Audit event {event_id} not found")
    return row
