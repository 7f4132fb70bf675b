"""Data-collection specs (domain.md "Data collection"): what to collect at an operation, with limits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import DataCollectionSpec, DataValue, Operation
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.routing import DataSpecCreate, DataSpecQuery, DataSpecUpdate, SpecLimits
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

_PLAIN = ("name", "item_type", "data_type", "method", "trigger_type", "is_required", "is_active")


def _out(spec: DataCollectionSpec, op: Operation) -> dict[str, Any]:
    return {
        "id": spec.id,
        "operation_id": op.id,
        "operation_code": op.code,
        "operation_name": op.name,
        "name": spec.name,
        "item_type": spec.item_type,
        "data_type": spec.data_type,
        "method": spec.method,
        "trigger_type": spec.trigger_type,
        "spec": spec.spec,
        "alarm": spec.alarm,
        "is_required": spec.is_required,
        "is_active": spec.is_active,
        "created_at": spec.created_at,
        "updated_at": spec.updated_at,
    }


def _view(spec: DataCollectionSpec, op: Operation) -> dict[str, Any]:
    """Audit before/after: wire names, JSON-safe."""
    return {
        "operationCode": op.code,
        "name": spec.name,
        "itemType": spec.item_type,
        "dataType": spec.data_type,
        "method": spec.method,
        "triggerType": spec.trigger_type,
        "spec": spec.spec,
        "alarm": spec.alarm,
        "isRequired": spec.is_required,
        "isActive": spec.is_active,
    }


def _limits(limits: SpecLimits | None) -> dict[str, Any] | None:
    """min ≤ target ≤ max and lsl ≤ target ≤ usl where given; stored without the unset keys."""
    if limits is None:
        return None
    lo_hi = [(limits.min, limits.max, "min", "max"), (limits.lsl, limits.usl, "lsl", "usl")]
    for lo, hi, lo_name, hi_name in lo_hi:
        if lo is not None and hi is not None and lo > hi:
            raise Rejected("DATA_SPEC_LIMITS_INVALID", f"{lo_name} ({lo}) is greater than {hi_name} ({hi})")
        t = limits.target
        if t is not None and ((lo is not None and t < lo) or (hi is not None and t > hi)):
            raise Rejected("DATA_SPEC_LIMITS_INVALID", f"target ({t}) is outside {lo_name}..{hi_name}")
    return limits.model_dump(exclude_none=True) or None


async def _operation(uow: UnitOfWork, code: str) -> Operation:
    op = await uow.session.scalar(select(Operation).where(Operation.code == code))
    if op is None:
        raise NotFound("OPERATION_NOT_FOUND", f"Operation {code} not found")
    return op


async def _name_free(uow: UnitOfWork, op: Operation, name: str, spec_id: int | None = None) -> None:
    stmt = select(DataCollectionSpec.id).where(
        DataCollectionSpec.operation_id == op.id, DataCollectionSpec.name == name
    )
    if spec_id is not None:
        stmt = stmt.where(DataCollectionSpec.id != spec_id)
    if await uow.session.scalar(stmt):
        raise Conflict("DATA_SPEC_NAME_DUPLICATE", f"Operation {op.code} already has a spec named {name!r}")


async def _flush(uow: UnitOfWork, op: Operation, name: str) -> None:
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Conflict(
            "DATA_SPEC_NAME_DUPLICATE", f"Operation {op.code} already has a spec named {name!r}"
        ) from None


async def _load(uow: UnitOfWork, spec_id: int, *, lock: bool = False) -> tuple[DataCollectionSpec, Operation]:
    stmt = (
        select(DataCollectionSpec, Operation)
        .join(Operation, Operation.id == DataCollectionSpec.operation_id)
        .where(DataCollectionSpec.id == spec_id)
    )
    if lock:
        stmt = stmt.with_for_update(of=DataCollectionSpec)
    row = (await uow.session.execute(stmt)).first()
    if row is None:
        raise NotFound("DATA_SPEC_NOT_FOUND", f"Data-collection spec {spec_id} not found")
    return row[0], row[1]


async def list_specs(uow: UnitOfWork, q: DataSpecQuery) -> dict[str, Any]:
    stmt = select(DataCollectionSpec, Operation).join(
        Operation, Operation.id == DataCollectionSpec.operation_id
    )
    if codes := split_csv(q.operation_code):
        stmt = stmt.where(Operation.code.in_(codes))
    if q.is_active is not None:
        stmt = stmt.where(DataCollectionSpec.is_active.is_(q.is_active))
    page = await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": DataCollectionSpec.created_at,
            "name": DataCollectionSpec.name,
            "operationCode": Operation.code,
        },
        search=[DataCollectionSpec.name],
        scalars=False,
    )
    page["items"] = [_out(spec, op) for spec, op in page["items"]]
    return page


async def get_spec(uow: UnitOfWork, spec_id: int) -> dict[str, Any]:
    return _out(*await _load(uow, spec_id))


async def create_spec(uow: UnitOfWork, body: DataSpecCreate) -> dict[str, Any]:
    op = await _operation(uow, body.operation_code)
    limits = _limits(body.spec)
    await _name_free(uow, op, body.name)
    spec = DataCollectionSpec(
        operation_id=op.id,
        spec=limits,
        alarm=body.alarm,
        **{f: getattr(body, f) for f in _PLAIN},
    )
    uow.session.add(spec)
    await _flush(uow, op, spec.name)
    uow.audit(
        spec.id,
        f"{op.code}/{spec.name}",
        entity_type="DATA_SPEC",
        action="DATA_SPEC_CREATE",
        after=_view(spec, op),
    )
    return _out(spec, op)


async def update_spec(uow: UnitOfWork, spec_id: int, body: DataSpecUpdate) -> dict[str, Any]:
    spec, op = await _load(uow, spec_id, lock=True)
    before = _view(spec, op)
    sent = body.model_fields_set
    new_op = op
    if body.operation_code is not None and body.operation_code != op.code:
        new_op = await _operation(uow, body.operation_code)
    limits = _limits(body.spec) if "spec" in sent else spec.spec
    changes_meaning = new_op.id != op.id or (body.data_type is not None and body.data_type != spec.data_type)
    if changes_meaning and await uow.session.scalar(
        select(DataValue.id).where(DataValue.spec_id == spec.id).limit(1)
    ):
        raise Conflict(
            "DATA_SPEC_IN_USE",
            "Values were collected against this spec; its operation and data type are fixed",
        )
    name = body.name if body.name is not None else spec.name
    if new_op.id != op.id or name != spec.name:
        await _name_free(uow, new_op, name, spec.id)
    for f in _PLAIN:
        if getattr(body, f) is not None:
            setattr(spec, f, getattr(body, f))
    spec.operation_id = new_op.id
    spec.spec = limits
    if "alarm" in sent:
        spec.alarm = body.alarm
    await _flush(uow, new_op, name)
    uow.audit(
        spec.id,
        f"{new_op.code}/{spec.name}",
        entity_type="DATA_SPEC",
        action="DATA_SPEC_UPDATE",
        before=before,
        after=_view(spec, new_op),
    )
    return _out(spec, new_op)
