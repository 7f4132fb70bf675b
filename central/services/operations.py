"""Operations (MES-owned or ERP read-only, domain.md §2 "Plant") and the ERP work centers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import Operation, WorkCenter
from central.domain.errors import Conflict, Forbidden, NotFound
from central.schemas.plant import OperationCreate, OperationQuery, OperationUpdate, WorkCenterQuery
from central.services.listing import paginate, split_csv
from central.services.plant import flush_or
from central.services.uow import UnitOfWork


def _operation_view(op: Operation) -> dict[str, Any]:
    return {
        "code": op.code,
        "name": op.name,
        "defaultType": op.default_type,
        "isKeyQuality": op.is_key_quality,
        "sourceSystem": op.source_system,
    }


async def list_operations(uow: UnitOfWork, q: OperationQuery) -> dict[str, Any]:
    stmt = select(Operation)
    if systems := split_csv(q.source_system):
        stmt = stmt.where(Operation.source_system.in_(systems))
    if types := split_csv(q.default_type):
        stmt = stmt.where(Operation.default_type.in_(types))
    if q.is_key_quality is not None:
        stmt = stmt.where(Operation.is_key_quality.is_(q.is_key_quality))
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": Operation.created_at, "code": Operation.code, "name": Operation.name},
        search=[Operation.code, Operation.name],
    )


async def create_operation(uow: UnitOfWork, body: OperationCreate) -> Operation:
    message = f"Operation {body.code} already exists"
    if await uow.session.scalar(select(Operation.id).where(Operation.code == body.code)):
        raise Conflict("OPERATION_CODE_EXISTS", message)
    op = Operation(
        code=body.code,
        name=body.name,
        default_type=body.default_type,
        is_key_quality=body.is_key_quality,
        source_system="MES",
        meta={},
    )
    uow.session.add(op)
    await flush_or(uow, "OPERATION_CODE_EXISTS", message)
    uow.audit(op.id, op.code, entity_type="OPERATION", action="OPERATION_CREATE", after=_operation_view(op))
    return op


async def update_operation(uow: UnitOfWork, code: str, body: OperationUpdate) -> Operation:
    op = await uow.session.scalar(select(Operation).where(Operation.code == code))
    if op is None:
        raise NotFound("OPERATION_NOT_FOUND", f"Operation {code} not found")
    if op.source_system == "ERP":
        raise Forbidden("OPERATION_ERP_READONLY", f"Operation {code} comes from ERP and is read-only")
    before = _operation_view(op)
    if body.name is not None:
        op.name = body.name
    if body.default_type is not None:
        op.default_type = body.default_type
    if body.is_key_quality is not None:
        op.is_key_quality = body.is_key_quality
    await uow.session.flush()
    uow.audit(
        op.id,
        op.code,
        entity_type="OPERATION",
        action="OPERATION_UPDATE",
        before=before,
        after=_operation_view(op),
    )
    return op


async def list_work_centers(uow: UnitOfWork, q: WorkCenterQuery) -> dict[str, Any]:
    stmt = select(WorkCenter)
    if departments := split_csv(q.department):
        stmt = stmt.where(WorkCenter.department.in_(departments))
    if systems := split_csv(q.source_system):
        stmt = stmt.where(WorkCenter.source_system.in_(systems))
    return await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": WorkCenter.created_at, "code": WorkCenter.code, "name": WorkCenter.name},
        search=[WorkCenter.code, WorkCenter.name],
    )
