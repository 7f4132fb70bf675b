"""Work orders: receive from ERP/planning, list, release, routing override, pick status, close."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.work_orders import (
    PickStatusBody,
    ReleaseBody,
    RoutingOverrideBody,
    WorkOrderOut,
    WorkOrderQuery,
    WorkOrderReceive,
)
from central.services import work_orders

router = Router(tag="work-orders", entity_type="WORK_ORDER")


@router.post("/integration/work-orders", perms=("wo:receive",), action="WORK_ORDER_RECEIVE")
async def receive_work_order(rq: Req, body: WorkOrderReceive) -> WorkOrderOut:
    """Receive a work order (upsert by woNo; the status never regresses)."""
    return await rq.write(work_orders.receive, body)


@router.get("/work-orders", perms=("wo:read",))
async def list_work_orders(rq: Req, query: WorkOrderQuery) -> Page[WorkOrderOut]:
    """Work orders (search woNo/productCode; status=A,B; sort createdAt|woNo|dueDate|status|productCode)."""
    return await rq.read(work_orders.list_work_orders, query)


@router.get("/work-orders/{woNo}", perms=("wo:read",))
async def get_work_order(rq: Req) -> WorkOrderOut:
    """One work order."""
    return await rq.read(work_orders.get_work_order, rq.path("woNo"))


@router.post("/work-orders/{woNo}/release", perms=("wo:release",), action="WORK_ORDER_RELEASE")
async def release_work_order(rq: Req, body: ReleaseBody) -> WorkOrderOut:
    """Release a RECEIVED work order to a line (needs a READY routing version of the line's process type)."""
    return await rq.write(work_orders.release, rq.path("woNo"), body)


@router.patch("/work-orders/{woNo}/routing", perms=("wo:update",), action="WORK_ORDER_ROUTING_UPDATE")
async def override_work_order_routing(rq: Req, body: RoutingOverrideBody) -> WorkOrderOut:
    """Choose the routing of a work order that has no runs yet (wins over ERP sync)."""
    return await rq.write(work_orders.override_routing, rq.path("woNo"), body)


@router.patch("/work-orders/{woNo}/pick-status", perms=("wo:update",), action="WORK_ORDER_PICK_STATUS_UPDATE")
async def update_work_order_pick_status(rq: Req, body: PickStatusBody) -> WorkOrderOut:
    """Set the material pick status of a manual (non-ERP) work order."""
    return await rq.write(work_orders.update_pick_status, rq.path("woNo"), body)


@router.post("/work-orders/{woNo}/close", perms=("wo:close",), action="WORK_ORDER_CLOSE")
async def close_work_order(rq: Req) -> WorkOrderOut:
    """Complete a work order whose runs are all terminal (idempotent)."""
    return await rq.write(work_orders.close, rq.path("woNo"))
