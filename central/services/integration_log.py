"""Reading the integration log: every exchange with ERP/TPM/devices/edges, inbound and outbound (api.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import IntegrationMessage
from central.domain.errors import NotFound
from central.schemas.outbound import MessageQuery
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

SORT_FIELDS = {
    "createdAt": IntegrationMessage.created_at,
    "system": IntegrationMessage.system,
    "entityType": IntegrationMessage.entity_type,
    "status": IntegrationMessage.status,
    "direction": IntegrationMessage.direction,
    "businessKey": IntegrationMessage.business_key,
}


async def list_messages(uow: UnitOfWork, q: MessageQuery) -> dict[str, Any]:
    stmt = select(IntegrationMessage)
    multi = {
        IntegrationMessage.direction: q.direction,
        IntegrationMessage.system: q.system,
        IntegrationMessage.status: q.status,
        IntegrationMessage.entity_type: q.entity_type,
    }
    for col, value in multi.items():
        values = split_csv(value)
        if values:
            stmt = stmt.where(col.in_(values))
    if q.business_key is not None:
        stmt = stmt.where(IntegrationMessage.business_key == q.business_key)
    if q.from_ is not None:
        stmt = stmt.where(IntegrationMessage.created_at >= q.from_)
    if q.to is not None:
        stmt = stmt.where(IntegrationMessage.created_at <= q.to)
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields=SORT_FIELDS,
        search=[IntegrationMessage.business_key, IntegrationMessage.dedupe_key],
    )


async def get_message(uow: UnitOfWork, message_id: int) -> IntegrationMessage:
    row = await uow.session.get(IntegrationMessage, message_id)
    if row is None:
        raise NotFound("INTEGRATION_MESSAGE_NOT_FOUND", f"Integration message {message_id} not found")
    return row
