"""Work orders (domain.md §3): receive (upsert), list, release to a line, routing override, close."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select

from central.db.models import ExecutableRouteVersion, Line, Routing, Run, Station, StationGroup, WorkOrder
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, NotFound, Rejected
from central.domain.permissions import DataScope
from central.domain.states import RUN_TERMINAL, WORK_ORDER
from central.schemas.work_orders import (
    PickStatusBody,
    ReleaseBody,
    RoutingOverrideBody,
    WorkOrderQuery,
    WorkOrderReceive,
)
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork

READ_PERMS = ("wo:read",)


def snapshot(wo: WorkOrder) -> dict[str, Any]:
    """The fields an audit diff compares."""
    return {
        "status": wo.status,
        "productCode": wo.product_code,
        "plannedQty": wo.planned_qty,
        "routingId": wo.routing_id,
        "pickStatus": wo.pick_status,
        "dueDate": iso(wo.due_date),
        "dispatch": (wo.meta or {}).get("dispatch"),
        "routingOverride": (wo.meta or {}).get("routingOverride"),
    }


async def get_by_no(uow: UnitOfWork, wo_no: str, *, lock: bool = False) -> WorkOrder:
    stmt = select(WorkOrder).where(WorkOrder.wo_no == wo_no)
    if lock:
        stmt = stmt.with_for_update()
    wo = await uow.session.scalar(stmt)
    if wo is None:
        raise NotFound("WORK_ORDER_NOT_FOUND", f"Work order {wo_no} not found")
    return wo


async def routing_for_product(uow: UnitOfWork, product_code: str) -> Routing | None:
    """The one active, effective routing of a product: MES routings first, then ERP (domain.md §9)."""
    now = utcnow()
    for system in ("MES", "ERP"):
        rows = (
            await uow.session.scalars(
                select(Routing).where(
                    Routing.product_code == product_code,
                    Routing.source_system == system,
                    Routing.is_active.is_(True),
                    or_(Routing.effective_from.is_(None), Routing.effective_from <= now),
                    or_(Routing.effective_to.is_(None), Routing.effective_to > now),
                )
            )
        ).all()
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            return None  # ambiguous: the planner picks one with a routing override
    return None


async def _routing_by_code(uow: UnitOfWork, code: str) -> Routing:
    routing = await uow.session.scalar(select(Routing).where(Routing.code == code))
    if routing is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Routing {code} not found")
    return routing


async def receive(uow: UnitOfWork, body: WorkOrderReceive) -> dict[str, Any]:
    """Upsert by woNo; a re-post never changes the status and never overrides a routing override."""
    s = uow.session
    routing = await _routing_by_code(uow, body.routing_code) if body.routing_code else None
    wo = await s.scalar(select(WorkOrder).where(WorkOrder.wo_no == body.wo_no).with_for_update())
    before = snapshot(wo) if wo else None
    if wo is None:
        routing = routing or await routing_for_product(uow, body.product_code)
        wo = WorkOrder(
            wo_no=body.wo_no,
            status="RECEIVED",
            meta=body.meta or {},
            source_system=body.source_system or "MES",
            product_code=body.product_code,
            planned_qty=body.planned_qty,
            routing_id=routing.id if routing else None,
        )
        s.add(wo)
    else:
        wo.product_code, wo.planned_qty = body.product_code, body.planned_qty
        if not (wo.meta or {}).get("routingOverride"):
            if routing is None and wo.routing_id is None:
                # No code and still no routing: the product's unique active routing, as on first receive.
                routing = await routing_for_product(uow, body.product_code)
            if routing is not None:
                wo.routing_id = routing.id
        if body.meta:
            wo.meta = {**(wo.meta or {}), **body.meta}
    if body.pick_status is not None:
        wo.pick_status = body.pick_status
    if body.due_date is not None:
        wo.due_date = body.due_date
    await s.flush()
    uow.audit(
        wo.id,
        wo.wo_no,
        entity_type="WORK_ORDER",
        action="WORK_ORDER_RECEIVE",
        before=before,
        after=snapshot(wo),
    )
    return await detail(uow, wo)


async def scoped_line_ids(uow: UnitOfWork, perms: tuple[str, ...]) -> set[int] | None:
    """Lines the caller may see for `perms`: None = all (scope ALL), else the bound lines."""
    a = uow.actor
    scope = a.scope_for(perms)
    if scope is None or scope == DataScope.ALL:
        return None
    if scope == DataScope.ASSIGNED_LINES:
        return set(a.line_ids)
    if not a.station_ids:
        return set()
    rows = await uow.session.scalars(select(Station.line_id).where(Station.id.in_(a.station_ids)))
    return set(rows)


async def list_work_orders(uow: UnitOfWork, q: WorkOrderQuery) -> dict[str, Any]:
    run_count = (
        select(func.count(Run.id)).where(Run.wo_id == WorkOrder.id).correlate(WorkOrder).scalar_subquery()
    )
    stmt = select(WorkOrder, Routing.code, run_count).outerjoin(Routing, Routing.id == WorkOrder.routing_id)
    if statuses := split_csv(q.status):
        stmt = stmt.where(WorkOrder.status.in_(statuses))
    if q.product_code:
        stmt = stmt.where(WorkOrder.product_code == q.product_code)
    lines = await scoped_line_ids(uow, READ_PERMS)
    if lines is not None:  # scoped callers see WOs with runs on their lines
        stmt = stmt.where(WorkOrder.id.in_(select(Run.wo_id).where(Run.line_id.in_(lines))))
    page = await paginate(
        uow.session,
        stmt,
        q,
        scalars=False,
        search=[WorkOrder.wo_no, WorkOrder.product_code],
        sort_fields={
            "createdAt": WorkOrder.created_at,
            "woNo": WorkOrder.wo_no,
            "dueDate": WorkOrder.due_date,
            "status": WorkOrder.status,
            "productCode": WorkOrder.product_code,
        },
    )
    page["items"] = [_out(wo, code, n) for wo, code, n in page["items"]]
    return page


def _out(wo: WorkOrder, routing_code: str | None, run_count: int = 0) -> dict[str, Any]:
    return {
        **{
            c: getattr(wo, c)
            for c in (
                "id",
                "wo_no",
                "product_code",
                "planned_qty",
                "routing_id",
                "status",
                "erp_status",
                "erp_pick_status",
                "pick_status",
                "due_date",
                "source_system",
                "meta",
                "created_at",
                "updated_at",
            )
        },
        "routing_code": routing_code,
        "run_count": run_count,
    }


async def detail(uow: UnitOfWork, wo: WorkOrder) -> dict[str, Any]:
    code = (
        await uow.session.scalar(select(Routing.code).where(Routing.id == wo.routing_id))
        if wo.routing_id
        else None
    )
    n = await uow.session.scalar(select(func.count(Run.id)).where(Run.wo_id == wo.id))
    return _out(wo, code, n or 0)


async def get_work_order(uow: UnitOfWork, wo_no: str) -> dict[str, Any]:
    return await detail(uow, await get_by_no(uow, wo_no))


async def latest_ready_version(uow: UnitOfWork, routing_id: int) -> ExecutableRouteVersion | None:
    return await uow.session.scalar(
        select(ExecutableRouteVersion)
        .where(ExecutableRouteVersion.routing_id == routing_id, ExecutableRouteVersion.status == "READY")
        .order_by(ExecutableRouteVersion.version_no.desc())
        .limit(1)
    )


async def release(uow: UnitOfWork, wo_no: str, body: ReleaseBody) -> dict[str, Any]:
    s = uow.session
    wo = await get_by_no(uow, wo_no, lock=True)
    before = snapshot(wo)
    WORK_ORDER.target(wo.status, "release")  # WORK_ORDER_NOT_RECEIVED before any other check
    routing = await s.get(Routing, wo.routing_id) if wo.routing_id else None
    if routing is None:
        raise Rejected("ROUTE_NOT_FOUND", f"Work order {wo_no} has no routing")
    if await latest_ready_version(uow, routing.id) is None:
        raise Rejected("ROUTE_NOT_READY", f"Routing {routing.code} has no READY compiled version")
    line = await s.scalar(select(Line).where(Line.code == body.line_code))
    if line is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {body.line_code} not found")
    if routing.process_type and routing.process_type != line.process_type:
        raise Rejected(
            "LINE_ROUTING_PROCESS_MISMATCH",
            f"Line {line.code} is {line.process_type}; routing {routing.code} is {routing.process_type}",
        )
    group = None
    if body.station_group_code:
        group = await s.scalar(select(StationGroup).where(StationGroup.code == body.station_group_code))
        if group is None:
            raise NotFound("STATION_GROUP_NOT_FOUND", f"Station group {body.station_group_code} not found")
    WORK_ORDER.apply(wo, "release")
    wo.meta = {
        **(wo.meta or {}),
        "dispatch": {
            "lineId": line.id,
            "lineCode": line.code,
            "stationGroupId": group.id if group else None,
            "stationGroupCode": group.code if group else None,
            "dispatchedAt": iso(utcnow()),
        },
    }
    await s.flush()
    uow.audit(
        wo.id,
        wo.wo_no,
        entity_type="WORK_ORDER",
        action="WORK_ORDER_RELEASE",
        before=before,
        after=snapshot(wo),
    )
    return await detail(uow, wo)


async def override_routing(uow: UnitOfWork, wo_no: str, body: RoutingOverrideBody) -> dict[str, Any]:
    s = uow.session
    wo = await get_by_no(uow, wo_no, lock=True)
    before = snapshot(wo)
    if wo.status == "COMPLETED":
        raise Rejected("WORK_ORDER_COMPLETED", f"Work order {wo_no} is completed")
    if await s.scalar(select(func.count(Run.id)).where(Run.wo_id == wo.id)):
        raise Rejected("WORK_ORDER_HAS_RUNS", f"Work order {wo_no} already has runs")
    routing = await _routing_by_code(uow, body.routing_code)
    wo.routing_id = routing.id
    wo.meta = {
        **(wo.meta or {}),
        "routingOverride": {
            "routingId": routing.id,
            "routingCode": routing.code,
            "updatedBy": uow.actor.name,
            "updatedAt": iso(utcnow()),
        },
    }
    await s.flush()
    uow.audit(
        wo.id,
        wo.wo_no,
        entity_type="WORK_ORDER",
        action="WORK_ORDER_ROUTING_UPDATE",
        before=before,
        after=snapshot(wo),
    )
    return await detail(uow, wo)


async def update_pick_status(uow: UnitOfWork, wo_no: str, body: PickStatusBody) -> dict[str, Any]:
    wo = await get_by_no(uow, wo_no, lock=True)
    before = snapshot(wo)
    if wo.erp_status:
        raise Rejected("ERP_WORK_ORDER_NOT_EDITABLE", f"Work order {wo_no} is managed by ERP")
    wo.pick_status = body.pick_status
    await uow.session.flush()
    uow.audit(
        wo.id,
        wo.wo_no,
        entity_type="WORK_ORDER",
        action="WORK_ORDER_PICK_STATUS_UPDATE",
        before=before,
        after=snapshot(wo),
    )
    return await detail(uow, wo)


async def close(uow: UnitOfWork, wo_no: str) -> dict[str, Any]:
    s = uow.session
    wo = await get_by_no(uow, wo_no, lock=True)
    if wo.status == "COMPLETED":  # closing a closed work order is an idempotent no-op
        return await detail(uow, wo)
    statuses = list(await s.scalars(select(Run.status).where(Run.wo_id == wo.id)))
    if not statuses:
        raise Rejected("WORK_ORDER_HAS_NO_RUNS", f"Work order {wo_no} has no runs")
    open_runs = [st for st in statuses if st not in RUN_TERMINAL]
    if open_runs:
        raise Conflict(
            "WORK_ORDER_RUNS_NOT_TERMINAL",
            f"Work order {wo_no} has {len(open_runs)} run(s) not COMPLETED/CLOSED_REWORK/SCRAPPED",
        )
    before = snapshot(wo)
    WORK_ORDER.apply(wo, "close")
    await s.flush()
    uow.audit(
        wo.id,
        wo.wo_no,
        entity_type="WORK_ORDER",
        action="WORK_ORDER_CLOSE",
        before=before,
        after=snapshot(wo),
    )
    return await detail(uow, wo)
