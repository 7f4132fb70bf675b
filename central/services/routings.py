"""MES routing administration (api.md master data): create, change, replace the step set, list, read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    ExecutableRouteVersion,
    FaiTemplate,
    Operation,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
    StationGroup,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, Forbidden, NotFound, Rejected
from central.schemas.routing import (
    RoutingCreate,
    RoutingQuery,
    RoutingStepIn,
    RoutingStepsReplace,
    RoutingUpdate,
)
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

_STEP_FIELDS = ("operation_id", "station_group_id", "station_type", "requires_fai", "is_last")


async def get_routing_row(uow: UnitOfWork, code: str, *, lock: bool = False) -> Routing:
    """The routing by code; `lock` takes its row lock (PostgreSQL) so concurrent changes queue."""
    stmt = select(Routing).where(Routing.code == code)
    routing = await uow.session.scalar(stmt.with_for_update() if lock else stmt)
    if routing is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Routing {code} not found")
    return routing


def _header(r: Routing, fai_code: str | None) -> dict[str, Any]:
    return {
        "id": r.id,
        "code": r.code,
        "name": r.name,
        "source_system": r.source_system,
        "source_key": r.source_key,
        "product_code": r.product_code,
        "process_type": r.process_type,
        "version": r.version,
        "effective_from": r.effective_from,
        "effective_to": r.effective_to,
        "is_active": r.is_active,
        "fai_template_id": r.fai_template_id,
        "fai_template_code": fai_code,
        "step_count": len(r.steps),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def _audit_header(r: Routing) -> dict[str, Any]:
    return {
        "code": r.code,
        "name": r.name,
        "sourceSystem": r.source_system,
        "productCode": r.product_code,
        "processType": r.process_type,
        "version": r.version,
        "effectiveFrom": iso(r.effective_from),
        "effectiveTo": iso(r.effective_to),
        "isActive": r.is_active,
    }


async def _steps(uow: UnitOfWork, routing_id: int) -> list[dict[str, Any]]:
    rows = await uow.session.execute(
        select(RoutingStep, Operation.code, Operation.name, StationGroup.code)
        .join(Operation, Operation.id == RoutingStep.operation_id)
        .outerjoin(StationGroup, StationGroup.id == RoutingStep.station_group_id)
        .where(RoutingStep.routing_id == routing_id)
        .order_by(RoutingStep.step_no)
    )
    return [
        {
            "id": s.id,
            "step_no": s.step_no,
            "operation_id": s.operation_id,
            "operation_code": op_code,
            "operation_name": op_name,
            "station_group_id": s.station_group_id,
            "station_group_code": group_code,
            "station_type": s.station_type,
            "is_last": s.is_last,
            "requires_fai": s.requires_fai,
            "source_step_key": s.source_step_key,
        }
        for s, op_code, op_name, group_code in rows
    ]


def _audit_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "stepNo": s["step_no"],
            "operationCode": s["operation_code"],
            "stationGroupCode": s["station_group_code"],
            "stationType": s["station_type"],
            "requiresFai": s["requires_fai"],
            "isLast": s["is_last"],
        }
        for s in steps
    ]


async def _fai_code(uow: UnitOfWork, template_id: int | None) -> str | None:
    if template_id is None:
        return None
    return await uow.session.scalar(select(FaiTemplate.code).where(FaiTemplate.id == template_id))


async def routing_detail(
    uow: UnitOfWork, r: Routing, steps: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    s = uow.session
    latest = await s.scalar(
        select(ExecutableRouteVersion)
        .where(ExecutableRouteVersion.routing_id == r.id)
        .order_by(ExecutableRouteVersion.version_no.desc())
        .limit(1)
    )
    out = _header(r, await _fai_code(uow, r.fai_template_id))
    out["steps"] = steps if steps is not None else await _steps(uow, r.id)
    out["latest_version"] = (
        None
        if latest is None
        else {
            "id": latest.id,
            "version_no": latest.version_no,
            "status": latest.status,
            "signature": latest.signature,
            "error_count": len(latest.errors_json or []),
            "compiled_at": latest.compiled_at,
        }
    )
    return out


async def list_routings(uow: UnitOfWork, q: RoutingQuery) -> dict[str, Any]:
    stmt = select(Routing)
    if systems := split_csv(q.source_system):
        stmt = stmt.where(Routing.source_system.in_(systems))
    if types := split_csv(q.process_type):
        stmt = stmt.where(Routing.process_type.in_(types))
    if q.is_active is not None:
        stmt = stmt.where(Routing.is_active.is_(q.is_active))
    page = await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": Routing.created_at, "code": Routing.code},
        search=[Routing.code, Routing.name, Routing.product_code],
    )
    ids = {r.fai_template_id for r in page["items"] if r.fai_template_id is not None}
    codes = dict(
        (await uow.session.execute(select(FaiTemplate.id, FaiTemplate.code).where(FaiTemplate.id.in_(ids))))
        .tuples()
        .all()
    )
    page["items"] = [_header(r, codes.get(r.fai_template_id)) for r in page["items"]]
    return page


async def get_routing(uow: UnitOfWork, code: str) -> dict[str, Any]:
    return await routing_detail(uow, await get_routing_row(uow, code))


def _check_dates(r: Routing) -> None:
    if r.effective_from and r.effective_to and r.effective_to < r.effective_from:
        raise Rejected("ROUTING_EFFECTIVE_RANGE_INVALID", "effectiveTo is before effectiveFrom")


async def resolve_steps(uow: UnitOfWork, steps: list[RoutingStepIn]) -> list[dict[str, Any]]:
    """Checks a step set (unique stepNo, last step = highest, known codes) → RoutingStep column values."""
    nos = [st.step_no for st in steps]
    dup = sorted({n for n in nos if nos.count(n) > 1})
    if dup:
        raise Rejected("ROUTING_STEP_DUPLICATE", f"Duplicate stepNo: {dup}", details=dup)
    top = max(nos, default=None)
    flagged = [st.step_no for st in steps if st.is_last]
    if len(flagged) > 1 or (flagged and flagged[0] != top):
        raise Rejected(
            "ROUTING_LAST_STEP_INVALID",
            f"Only the highest stepNo ({top}) may be the last step; flagged: {flagged}",
            details=flagged,
        )
    s = uow.session
    op_codes = {st.operation_code for st in steps}
    ops = dict(
        (await s.execute(select(Operation.code, Operation.id).where(Operation.code.in_(op_codes))))
        .tuples()
        .all()
    )
    if missing := sorted(op_codes - set(ops)):
        raise NotFound("OPERATION_NOT_FOUND", f"Unknown operation(s): {', '.join(missing)}", details=missing)
    group_codes = {st.station_group_code for st in steps if st.station_group_code}
    groups = dict(
        (
            await s.execute(
                select(StationGroup.code, StationGroup.id).where(StationGroup.code.in_(group_codes))
            )
        )
        .tuples()
        .all()
    )
    if missing := sorted(group_codes - set(groups)):
        raise NotFound(
            "STATION_GROUP_NOT_FOUND", f"Unknown station group(s): {', '.join(missing)}", details=missing
        )
    return [
        {
            "step_no": st.step_no,
            "operation_id": ops[st.operation_code],
            "station_group_id": groups.get(st.station_group_code) if st.station_group_code else None,
            "station_type": st.station_type,
            "requires_fai": st.requires_fai,
            "is_last": st.step_no == top,
        }
        for st in sorted(steps, key=lambda x: x.step_no)
    ]


async def create_routing(uow: UnitOfWork, body: RoutingCreate) -> dict[str, Any]:
    s = uow.session
    if await s.scalar(select(Routing.id).where(Routing.code == body.code)):
        raise Conflict("ROUTING_CODE_EXISTS", f"Routing {body.code} already exists")
    rows = await resolve_steps(uow, body.steps)
    routing = Routing(
        code=body.code,
        name=body.name,
        source_system="MES",
        product_code=body.product_code or None,
        process_type=body.process_type,
        version=body.version or None,
        effective_from=body.effective_from,
        effective_to=body.effective_to,
        is_active=body.is_active,
        steps=[RoutingStep(**row) for row in rows],
    )
    _check_dates(routing)
    s.add(routing)
    try:
        await s.flush()
    except IntegrityError:
        raise Conflict("ROUTING_CODE_EXISTS", f"Routing {body.code} already exists") from None
    steps = await _steps(uow, routing.id)
    uow.audit(
        routing.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTING_CREATE",
        after={**_audit_header(routing), "steps": _audit_steps(steps)},
    )
    return await routing_detail(uow, routing, steps)


async def update_routing(uow: UnitOfWork, code: str, body: RoutingUpdate) -> dict[str, Any]:
    routing = await get_routing_row(uow, code, lock=True)
    before = _audit_header(routing)
    sent = body.model_fields_set
    for field in ("name", "process_type", "is_active"):
        if getattr(body, field) is not None:
            setattr(routing, field, getattr(body, field))
    for field in ("product_code", "version", "effective_from", "effective_to"):
        if field in sent:
            setattr(routing, field, getattr(body, field) or None)
    _check_dates(routing)
    await uow.session.flush()
    uow.audit(
        routing.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTING_UPDATE",
        before=before,
        after=_audit_header(routing),
    )
    return await routing_detail(uow, routing)


async def replace_steps(uow: UnitOfWork, code: str, body: RoutingStepsReplace) -> dict[str, Any]:
    """Replaces the step set in place by stepNo; compiled versions are snapshots and stay as they are."""
    s = uow.session
    routing = await get_routing_row(uow, code, lock=True)
    if routing.source_system == "ERP":
        raise Forbidden("ROUTING_ERP_READONLY", f"Routing {code} comes from ERP; its steps are read-only")
    before = _audit_steps(await _steps(uow, routing.id))
    rows = await resolve_steps(uow, body.steps)
    wanted = {row["step_no"]: row for row in rows}
    kept = {st.step_no: st for st in routing.steps if st.step_no in wanted}
    removed = [st for st in routing.steps if st.step_no not in wanted]
    dropped_configs: list[int] = []
    if removed:
        # A step-scope config of a removed MES step would otherwise fall back to route scope (SET NULL).
        cond = RouteExecutionConfig.routing_step_id.in_([st.id for st in removed]) & (
            RouteExecutionConfig.source_step_key.is_(None)
        )
        dropped_configs = list((await s.scalars(select(RouteExecutionConfig.id).where(cond))).all())
        if dropped_configs:
            await s.execute(delete(RouteExecutionConfig).where(RouteExecutionConfig.id.in_(dropped_configs)))
        for st in removed:
            routing.steps.remove(st)
    for no, row in wanted.items():
        if no in kept:
            for field in _STEP_FIELDS:
                setattr(kept[no], field, row[field])
        else:
            routing.steps.append(RoutingStep(**row))
    routing.updated_at = utcnow()
    try:
        await s.flush()
    except IntegrityError:
        raise Conflict("ROUTING_STEPS_CONFLICT", f"Routing {code} changed meanwhile; retry") from None
    steps = await _steps(uow, routing.id)
    uow.audit(
        routing.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTING_STEPS_REPLACE",
        before={"steps": before},
        after={"steps": _audit_steps(steps)},
        payload={"droppedExecutionConfigIds": dropped_configs} if dropped_configs else None,
    )
    return await routing_detail(uow, routing, steps)
