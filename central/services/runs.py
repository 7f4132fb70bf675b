"""Runs (domain.md §3 Run, Unit): create with frozen route version, reads, units, authorize/revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select

from central.db.models import (
    ExecutableRouteVersion,
    Inspection,
    Line,
    Operation,
    Routing,
    Run,
    Station,
    StationGroup,
    Track,
    Unit,
    WorkOrder,
)
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, NotFound, Rejected
from central.domain.states import RUN, RUN_TERMINAL, WORK_ORDER
from central.schemas.runs import AuthorizeBody, GenerateUnits, RunCreate, RunQuery, UnitQuery
from central.services import closeout, gates, hooks
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork
from central.services.work_orders import get_by_no, latest_ready_version, scoped_line_ids

READ_PERMS = ("run:read",)


async def get_run(uow: UnitOfWork, run_no: str, *, lock: bool = False) -> Run:
    stmt = select(Run).where(Run.run_no == run_no)
    if lock:
        stmt = stmt.with_for_update()
    run = await uow.session.scalar(stmt)
    if run is None:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    return run


async def version_of(uow: UnitOfWork, run: Run) -> ExecutableRouteVersion | None:
    return (
        await uow.session.get(ExecutableRouteVersion, run.route_version_id) if run.route_version_id else None
    )


def run_snapshot(run: Run) -> dict[str, Any]:
    return {
        "status": run.status,
        "startedAt": iso(run.started_at),
        "endedAt": iso(run.ended_at),
        "authorizedBy": run.authorized_by,
    }


async def line_stations(uow: UnitOfWork, line_id: int) -> list[Station]:
    return list(
        (
            await uow.session.scalars(
                select(Station).where(Station.line_id == line_id, Station.is_active.is_(True))
            )
        ).all()
    )


def fitting_codes(step: route.Step, stations: list[Station]) -> list[str]:
    return sorted(
        st.code
        for st in stations
        if route.station_fits(step, station_id=st.id, station_type=st.station_type, group_id=st.group_id)
    )


async def _new_run_no(uow: UnitOfWork, wo_no: str) -> str:
    ms = int(datetime.now(UTC).timestamp() * 1000)
    while await uow.session.scalar(select(Run.id).where(Run.run_no == f"RUN-{wo_no}-{ms}")):
        ms += 1  # two runs in the same millisecond
    return f"RUN-{wo_no}-{ms}"


async def create_run(uow: UnitOfWork, wo_no: str, body: RunCreate) -> dict[str, Any]:
    s = uow.session
    wo = await get_by_no(uow, wo_no, lock=True)
    WORK_ORDER.target(wo.status, "start")  # RELEASED/IN_PROGRESS, else WORK_ORDER_NOT_RELEASED
    routing = await s.get(Routing, wo.routing_id) if wo.routing_id else None
    if routing is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Work order {wo_no} has no routing")
    line = await s.scalar(select(Line).where(Line.code == body.line_code))
    if line is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {body.line_code} not found")
    dispatch = (wo.meta or {}).get("dispatch") or {}
    if dispatch.get("lineId") is not None and dispatch["lineId"] != line.id:
        raise Rejected(
            "WORK_ORDER_DISPATCH_LINE_MISMATCH",
            f"Work order {wo_no} is dispatched to {dispatch.get('lineCode')}, not {line.code}",
        )
    if routing.process_type and routing.process_type != line.process_type:  # Ours: re-checked (§12)
        raise Rejected(
            "LINE_ROUTING_PROCESS_MISMATCH",
            f"Line {line.code} is {line.process_type}; routing {routing.code} is {routing.process_type}",
        )
    version = await latest_ready_version(uow, routing.id)
    if version is None:
        raise NotFound("ROUTE_VERSION_NOT_READY", f"Routing {routing.code} has no READY version")
    stations = await line_stations(uow, line.id)
    unfit = [st["stepNo"] for st in route.steps(version.snapshot_json) if not fitting_codes(st, stations)]
    if unfit:
        raise Rejected(
            "RUN_LINE_INCOMPATIBLE_WITH_ROUTE",
            f"Line {line.code} has no station for step(s) {unfit}",
            details={"stepNos": unfit},
        )
    run = Run(
        run_no=await _new_run_no(uow, wo.wo_no),
        wo_id=wo.id,
        line_id=line.id,
        route_version_id=version.id,
        plan_qty=body.plan_qty,
        status="PREP",
        shift_code=body.shift_code,
        changeover_no=body.changeover_no,
        authorization_type="NORMAL",
        meta={},
    )
    s.add(run)
    wo_before = wo.status
    WORK_ORDER.apply(wo, "start")
    await s.flush()
    if wo_before != wo.status:
        uow.audit(
            wo.id,
            wo.wo_no,
            entity_type="WORK_ORDER",
            action="WORK_ORDER_START",
            before={"status": wo_before},
            after={"status": wo.status},
        )
    uow.audit(
        run.id,
        run.run_no,
        entity_type="RUN",
        action="RUN_CREATE",
        after={
            **run_snapshot(run),
            "woNo": wo.wo_no,
            "lineCode": line.code,
            "planQty": run.plan_qty,
            "routeVersionNo": version.version_no,
        },
    )
    await hooks.after_run_created(uow, run)
    return await run_out(uow, run)


async def run_out(uow: UnitOfWork, run: Run) -> dict[str, Any]:
    row = (
        await uow.session.execute(
            select(
                WorkOrder.wo_no,
                WorkOrder.product_code,
                Line.code,
                ExecutableRouteVersion.version_no,
                Routing.code,
            )
            .select_from(Run)
            .join(Line, Line.id == Run.line_id)
            .join(WorkOrder, WorkOrder.id == Run.wo_id)
            .outerjoin(ExecutableRouteVersion, ExecutableRouteVersion.id == Run.route_version_id)
            .outerjoin(Routing, Routing.id == ExecutableRouteVersion.routing_id)
            .where(Run.id == run.id)
        )
    ).one()
    parent = (
        await uow.session.scalar(select(Run.run_no).where(Run.id == run.parent_run_id))
        if run.parent_run_id
        else None
    )
    return _run_fields(run, row[0], row[1], row[2], row[3], row[4], parent)


def _run_fields(
    run: Run,
    wo_no: str,
    product: str,
    line_code: str,
    version_no: int | None,
    routing_code: str | None,
    parent: str | None = None,
) -> dict[str, Any]:
    return {
        **{
            c: getattr(run, c)
            for c in (
                "id",
                "run_no",
                "status",
                "plan_qty",
                "shift_code",
                "changeover_no",
                "route_version_id",
                "started_at",
                "ended_at",
                "rework_type",
                "authorization_type",
                "mrb_fai_waiver",
                "authorized_by",
                "authorized_at",
                "created_at",
            )
        },
        "wo_no": wo_no,
        "product_code": product,
        "line_code": line_code,
        "route_version_no": version_no,
        "routing_code": routing_code,
        "parent_run_no": parent,
    }


async def list_runs(uow: UnitOfWork, q: RunQuery) -> dict[str, Any]:
    stmt = (
        select(
            Run,
            WorkOrder.wo_no,
            WorkOrder.product_code,
            Line.code,
            ExecutableRouteVersion.version_no,
            Routing.code,
        )
        .join(WorkOrder, WorkOrder.id == Run.wo_id)
        .join(Line, Line.id == Run.line_id)
        .outerjoin(ExecutableRouteVersion, ExecutableRouteVersion.id == Run.route_version_id)
        .outerjoin(Routing, Routing.id == ExecutableRouteVersion.routing_id)
    )
    if statuses := split_csv(q.status):
        stmt = stmt.where(Run.status.in_(statuses))
    if q.wo_no:
        stmt = stmt.where(WorkOrder.wo_no == q.wo_no)
    if q.line_code:
        stmt = stmt.where(Line.code == q.line_code)
    lines = await scoped_line_ids(uow, READ_PERMS)
    if lines is not None:
        stmt = stmt.where(Run.line_id.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        scalars=False,
        search=[Run.run_no, WorkOrder.wo_no],
        sort_fields={
            "createdAt": Run.created_at,
            "runNo": Run.run_no,
            "status": Run.status,
            "startedAt": Run.started_at,
            "workOrder.woNo": WorkOrder.wo_no,
            "line.code": Line.code,
        },
    )
    page["items"] = [_run_fields(*row) for row in page["items"]]
    return page


async def visible_run(uow: UnitOfWork, run_no: str) -> Run:
    """A run the caller may read: outside a line-scoped caller's lines it does not exist (domain.md §10)."""
    run = await get_run(uow, run_no)
    lines = await scoped_line_ids(uow, READ_PERMS)
    if lines is not None and run.line_id not in lines:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    return run


async def run_detail(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    s = uow.session
    run = await visible_run(uow, run_no)
    out = await run_out(uow, run)
    wo = await s.get(WorkOrder, run.wo_id)
    line = await s.get(Line, run.line_id)
    version = await version_of(uow, run)
    assert wo is not None and line is not None
    counts = dict(
        (
            await s.execute(
                select(Unit.status, func.count()).where(Unit.run_id == run.id).group_by(Unit.status)
            )
        ).all()
    )
    total = sum(counts.values())
    steps = route.steps(version.snapshot_json if version else None)
    passed = dict(
        (
            await s.execute(
                select(Track.step_no, func.count(func.distinct(Track.unit_id)))
                .join(Unit, Unit.id == Track.unit_id)
                .where(Unit.run_id == run.id, Track.result == "PASS")
                .group_by(Track.step_no)
            )
        ).all()
    )
    ops = await _operations(uow, steps)
    groups = await _groups(uow, steps)
    recent = (
        await s.scalars(
            select(Unit)
            .where(Unit.run_id == run.id)
            .order_by(Unit.updated_at.desc(), Unit.id.desc())
            .limit(10)
        )
    ).all()
    return {
        **out,
        "work_order": {
            "woNo": wo.wo_no,
            "productCode": wo.product_code,
            "plannedQty": wo.planned_qty,
            "status": wo.status,
        },
        "line": {"id": line.id, "code": line.code, "name": line.name, "processType": line.process_type},
        "route_version": None
        if version is None
        else {
            "id": version.id,
            "versionNo": version.version_no,
            "status": version.status,
            "compiledAt": iso(version.compiled_at),
        },
        "route_steps": [
            {
                "stepNo": st["stepNo"],
                "operationCode": ops.get(st.get("operationId"), (None, None))[0],
                "operationName": ops.get(st.get("operationId"), (None, None))[1],
                "stationType": st.get("stationType"),
                "stationGroupCode": groups.get(st.get("stationGroupId")),
                "requiresFAI": bool(st.get("requiresFAI")),
                "completed": passed.get(st["stepNo"], 0),
                "total": total,
            }
            for st in steps
        ],
        "unit_stats": {
            "total": total,
            "queued": counts.get("QUEUED", 0),
            "inStation": counts.get("IN_STATION", 0),
            "done": counts.get("DONE", 0),
            "failed": counts.get("OUT_FAILED", 0),
            "onHold": counts.get("ON_HOLD", 0),
            "scrapped": counts.get("SCRAPPED", 0),
        },
        "fai_trial": await _fai_trial(uow, run) if run.status == "PREP" else None,
        "recent_units": [
            {
                "sn": u.sn,
                "status": u.status,
                "currentStepNo": u.current_step_no,
                "updatedAt": iso(u.updated_at),
            }
            for u in recent
        ],
    }


async def _operations(uow: UnitOfWork, steps: list[route.Step]) -> dict[int, tuple[str, str]]:
    ids = {st.get("operationId") for st in steps if st.get("operationId") is not None}
    if not ids:
        return {}
    rows = await uow.session.execute(
        select(Operation.id, Operation.code, Operation.name).where(Operation.id.in_(ids))
    )
    return {r.id: (r.code, r.name) for r in rows}


async def _groups(uow: UnitOfWork, steps: list[route.Step]) -> dict[int, str]:
    ids = {st.get("stationGroupId") for st in steps if st.get("stationGroupId") is not None}
    if not ids:
        return {}
    rows = await uow.session.execute(
        select(StationGroup.id, StationGroup.code).where(StationGroup.id.in_(ids))
    )
    return {r.id: r.code for r in rows}


async def _fai_trial(uow: UnitOfWork, run: Run) -> dict[str, Any] | None:
    fai = await gates.latest_fai(uow, run)
    if fai is None:
        return None
    return {
        "faiId": fai.id,
        "status": fai.status,
        "sampleQty": fai.sample_qty,
        "trackedQty": await trial_units_tracked(uow, run, fai),
    }


async def trial_units_tracked(uow: UnitOfWork, run: Run, fai: Inspection) -> int:
    if fai.started_at is None:
        return 0
    n = await uow.session.scalar(
        select(func.count(func.distinct(Track.unit_id)))
        .join(Unit, Unit.id == Track.unit_id)
        .where(Unit.run_id == run.id, Track.in_at >= fai.started_at)
    )
    return n or 0


async def list_units(uow: UnitOfWork, run_no: str, q: UnitQuery) -> dict[str, Any]:
    s = uow.session
    run = await visible_run(uow, run_no)  # the units of a run are scoped like the run itself
    version = await version_of(uow, run)
    snapshot = version.snapshot_json if version else None
    steps = route.steps(snapshot)
    stations = await line_stations(uow, run.line_id)
    ops, groups = await _operations(uow, steps), await _groups(uow, steps)

    def describe(step_no: int | None) -> dict[str, Any] | None:
        st = route.step(snapshot, step_no) if step_no is not None else None
        if st is None:
            return None
        op = ops.get(st.get("operationId"), (None, None))
        return {
            "stepNo": st["stepNo"],
            "operationCode": op[0],
            "operationName": op[1],
            "stationType": st.get("stationType"),
            "stationGroup": groups.get(st.get("stationGroupId")),
            "stationCodes": fitting_codes(st, stations),
        }

    stmt = select(Unit).where(Unit.run_id == run.id)
    if statuses := split_csv(q.status):
        stmt = stmt.where(Unit.status.in_(statuses))
    if q.station_code:
        station = next((st for st in stations if st.code == q.station_code), None)
        fits = [
            st["stepNo"]
            for st in steps
            if station
            and route.station_fits(
                st, station_id=station.id, station_type=station.station_type, group_id=station.group_id
            )
        ]
        stmt = stmt.where(Unit.current_step_no.in_(fits))
    page = await paginate(
        s,
        stmt,
        q,
        search=[Unit.sn],
        default_sort="sn.asc",
        sort_fields={
            "sn": Unit.sn,
            "createdAt": Unit.created_at,
            "status": Unit.status,
            "updatedAt": Unit.updated_at,
        },
    )
    page["items"] = [
        {
            **unit_fields(u, run.run_no, None),
            "current_step": describe(u.current_step_no),
            "next_step": describe(route.next_step_no(snapshot, u.current_step_no)),
        }
        for u in page["items"]
    ]
    wo_no = await s.scalar(select(WorkOrder.wo_no).where(WorkOrder.id == run.wo_id))
    for item in page["items"]:
        item["wo_no"] = wo_no
    return page


def unit_fields(u: Unit, run_no: str | None, wo_no: str | None) -> dict[str, Any]:
    return {
        "id": u.id,
        "sn": u.sn,
        "status": u.status,
        "current_step_no": u.current_step_no,
        "run_no": run_no,
        "wo_no": wo_no,
        "updated_at": u.updated_at,
    }


async def generate_units(uow: UnitOfWork, run_no: str, body: GenerateUnits) -> dict[str, Any]:
    s = uow.session
    run = await get_run(uow, run_no, lock=True)
    if run.status not in ("PREP", "AUTHORIZED"):
        raise Rejected(
            "INVALID_RUN_STATUS",
            f"Units can be generated only for PREP or AUTHORIZED runs (run {run_no} is {run.status})",
        )
    existing = await s.scalar(select(func.count(Unit.id)).where(Unit.run_id == run.id)) or 0
    if existing + body.quantity > run.plan_qty:
        raise Rejected(
            "QUANTITY_EXCEEDS_PLAN",
            f"Run {run_no} plans {run.plan_qty} units; {existing} exist, "
            f"{body.quantity} more would exceed it",
        )
    version = await version_of(uow, run)
    first = route.first_step_no(version.snapshot_json if version else None)
    if first is None:
        raise Rejected("ROUTING_EMPTY", f"The route version of run {run_no} has no steps")
    prefix = body.sn_prefix or f"SN-{run.run_no}-"
    # domain.md §3: a 4-digit running number; beyond 9999 it simply grows (…-10000), never re-pads a batch.
    sns = [f"{prefix}{n:04d}" for n in range(existing + 1, existing + body.quantity + 1)]
    taken = list(await s.scalars(select(Unit.sn).where(Unit.sn.in_(sns))))
    if taken:
        raise Conflict(
            "UNIT_SN_DUPLICATE",
            f"{len(taken)} serial number(s) already exist, e.g. {taken[0]}",
            details={"sns": taken[:50]},
        )
    units = [
        Unit(sn=sn, wo_id=run.wo_id, run_id=run.id, status="QUEUED", current_step_no=first, meta={})
        for sn in sns
    ]
    s.add_all(units)
    await s.flush()
    wo_no = await s.scalar(select(WorkOrder.wo_no).where(WorkOrder.id == run.wo_id))
    uow.audit(
        run.id,
        run.run_no,
        entity_type="RUN",
        action="RUN_GENERATE_UNITS",
        payload={"quantity": body.quantity, "first": sns[0], "last": sns[-1]},
    )
    return {"generated": len(units), "units": [unit_fields(u, run.run_no, wo_no) for u in units]}


async def delete_units(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    s = uow.session
    run = await get_run(uow, run_no, lock=True)
    if run.status in RUN_TERMINAL:
        raise Rejected("RUN_IN_TERMINAL_STATUS", f"Run {run_no} is {run.status}")
    units = (await s.scalars(select(Unit).where(Unit.run_id == run.id))).all()
    ids = [u.id for u in units]
    tracked = await s.scalar(select(func.count(Track.id)).where(Track.unit_id.in_(ids))) if ids else 0
    if any(u.status != "QUEUED" for u in units) or tracked:
        raise Rejected("UNITS_CANNOT_BE_DELETED", f"Run {run_no} has units that were tracked or moved")
    if ids:
        await s.execute(delete(Unit).where(Unit.id.in_(ids)))
    uow.audit(run.id, run.run_no, entity_type="RUN", action="RUN_DELETE_UNITS", payload={"deleted": len(ids)})
    return {"deleted": len(ids)}


async def authorize(uow: UnitOfWork, run_no: str, body: AuthorizeBody) -> dict[str, Any]:
    run = await get_run(uow, run_no, lock=True)
    before = run_snapshot(run)
    if body.action == "REVOKE":
        if run.status != "AUTHORIZED":  # revoking a run that is not authorized is a no-op
            return await run_out(uow, run)
        RUN.apply(run, "revoke")
        run.authorized_by, run.authorized_at = None, None
        action = "RUN_REVOKE"
    else:
        if run.status == "AUTHORIZED":  # authorizing twice is a no-op
            return await run_out(uow, run)
        RUN.target(run.status, "authorize")  # RUN_NOT_READY first
        version = await version_of(uow, run)
        await gates.authorization_gates(uow, run, version.snapshot_json if version else {})
        RUN.apply(run, "authorize")
        run.authorized_by, run.authorized_at = uow.actor.name, utcnow()
        action = "RUN_AUTHORIZE"
    await uow.session.flush()
    uow.audit(run.id, run.run_no, entity_type="RUN", action=action, before=before, after=run_snapshot(run))
    return await run_out(uow, run)


async def close(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    run = await get_run(uow, run_no, lock=True)
    result = await closeout.close_run(uow, run)
    return {**result, "run": await run_out(uow, run)}
