"""Station-side reads for operators: queue, which run a unit belongs to, the data specs of its step."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import ExecutableRouteVersion, Operation, Run, Track, Unit, WorkOrder
from central.domain import route
from central.domain.errors import NotFound, Rejected
from central.services import exec_guards
from central.services.data_collection import specs_for_step
from central.services.uow import UnitOfWork

STATION_READ_PERMS = ("exec:read", "exec:track_in", "exec:track_out")


async def queue(uow: UnitOfWork, station_code: str) -> list[dict[str, Any]]:
    """Units with an open track at the station (oldest first, at most 50)."""
    st = await exec_guards.station(uow, station_code, STATION_READ_PERMS)
    rows = await uow.session.execute(
        select(Unit.sn, Unit.status, Track.step_no, Track.in_at, Run.run_no, WorkOrder.wo_no)
        .join(Track, Track.unit_id == Unit.id)
        .join(Run, Run.id == Unit.run_id)
        .join(WorkOrder, WorkOrder.id == Unit.wo_id)
        .where(Track.station_id == st.id, Track.out_at.is_(None))
        .order_by(Track.in_at)
        .limit(50)
    )
    return [
        {
            "sn": r.sn,
            "status": r.status,
            "stepNo": r.step_no,
            "inAt": r.in_at,
            "runNo": r.run_no,
            "woNo": r.wo_no,
        }
        for r in rows
    ]


async def resolve_unit(uow: UnitOfWork, sn: str) -> dict[str, Any]:
    row = (
        await uow.session.execute(
            select(Unit.sn, Unit.status, Unit.current_step_no, WorkOrder.wo_no, Run.run_no)
            .join(WorkOrder, WorkOrder.id == Unit.wo_id)
            .outerjoin(Run, Run.id == Unit.run_id)
            .where(Unit.sn == sn)
        )
    ).first()
    if row is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    return {
        "sn": row.sn,
        "woNo": row.wo_no,
        "runNo": row.run_no,
        "status": row.status,
        "currentStepNo": row.current_step_no,
    }


async def unit_data_specs(uow: UnitOfWork, station_code: str, sn: str) -> dict[str, Any]:
    s = uow.session
    await exec_guards.station(uow, station_code, STATION_READ_PERMS)
    unit = await s.scalar(select(Unit).where(Unit.sn == sn))
    if unit is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    run = await s.get(Run, unit.run_id) if unit.run_id else None
    version = (
        await s.get(ExecutableRouteVersion, run.route_version_id) if run and run.route_version_id else None
    )
    if run is None or version is None:
        raise Rejected("UNIT_NO_RUN", f"Unit {sn} is not in a run with a route version")
    step = route.step(version.snapshot_json, unit.current_step_no)
    if step is None:
        raise Rejected("STEP_MISMATCH", f"Unit {sn} is at step {unit.current_step_no}, which the route lacks")
    op = await s.get(Operation, step.get("operationId"))
    if op is None:
        raise NotFound("OPERATION_NOT_FOUND", f"The operation of step {step['stepNo']} does not exist")
    specs, bound = await specs_for_step(uow, step)
    return {
        "sn": sn,
        "stepNo": unit.current_step_no,
        "operationCode": op.code,
        "operationName": op.name,
        # Only the specs bound to the step are listed (empty when none are bound: any active spec of the
        # operation is still accepted at track-out).
        "specs": [
            {
                "id": sp.id,
                "name": sp.name,
                "itemType": sp.item_type,
                "dataType": sp.data_type,
                "method": sp.method,
                "triggerType": sp.trigger_type,
                "isRequired": sp.is_required,
                "spec": {k: (sp.spec or {}).get(k) for k in ("min", "max", "target", "lsl", "usl", "unit")},
            }
            for sp in (specs if bound else [])
        ],
    }
