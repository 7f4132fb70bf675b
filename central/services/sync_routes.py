"""ERP routings into MES routings (domain.md §9 "Pull", route apply).

Upserts the Routing and its steps by stepNo, creates an ERP Operation + mapping (station type MANUAL) for an
unknown process code, resolves station groups through the work-center mapping, marks the highest step last,
deletes steps ERP no longer sends and keeps the raw header/lines. Compiling stays an engineer's action.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from central.db.models import (
    ErpRouteHeaderRaw,
    ErpRouteLineRaw,
    Operation,
    OperationMapping,
    Routing,
    RoutingStep,
    WorkCenterStationGroupMapping,
)
from central.domain.clock import iso
from central.schemas.sync import ErpRoute, ErpRouteStep
from central.services.sync_apply import Counts, Pairs, keep_raw, raw_rows, set_changed
from central.services.uow import UnitOfWork


def step_key(route_no: str, step: ErpRouteStep) -> str:
    return f"ERP:{route_no}:{step.step_no}:{step.process_code}"


def _view(r: Routing) -> dict[str, Any]:
    return {
        "name": r.name,
        "productCode": r.product_code,
        "processType": r.process_type,
        "version": r.version,
        "effectiveFrom": iso(r.effective_from),
        "effectiveTo": iso(r.effective_to),
        "isActive": r.is_active,
        "steps": [
            {
                "stepNo": st.step_no,
                "operationId": st.operation_id,
                "stationGroupId": st.station_group_id,
                "stationType": st.station_type,
                "requiresFai": st.requires_fai,
                "isLast": st.is_last,
            }
            for st in sorted(r.steps, key=lambda x: x.step_no)
        ],
    }


def _refusal(r: Routing | None, it: ErpRoute) -> tuple[str, str] | None:
    no = it.header.route_no
    if r is not None and r.source_system != "ERP":
        return "ROUTING_SOURCE_CONFLICT", f"Routing {no} is an MES routing; ERP may not overwrite it"
    nos = [st.step_no for st in it.steps]
    if dup := sorted({n for n in nos if nos.count(n) > 1}):
        return "ROUTING_STEP_DUPLICATE", f"Routing {no} repeats stepNo {dup}"
    h = it.header
    if h.effective_from and h.effective_to and h.effective_to < h.effective_from:
        return "ROUTING_EFFECTIVE_RANGE_INVALID", f"Routing {no}: effectiveTo is before effectiveFrom"
    return None


async def apply_routes(uow: UnitOfWork, items: Pairs[ErpRoute]) -> Counts:
    s, c = uow.session, Counts()
    nos = [it.header.route_no for _, it in items]
    routings = {r.code: r for r in await s.scalars(select(Routing).where(Routing.code.in_(nos)))}
    raws = await raw_rows(uow, ErpRouteHeaderRaw, nos)
    for raw, it in items:
        no = it.header.route_no
        r = routings.get(no)
        if refusal := _refusal(r, it):
            c.reject(no, *refusal)
            continue
        if not keep_raw(uow, raws, ErpRouteHeaderRaw, no, raw) and r is not None:
            c.unchanged += 1  # identical payload: steps, and so any compiled version, stay as they are
            continue
        before = _view(r) if r is not None else None
        if r is None:
            routings[no] = r = Routing(
                code=no, source_system="ERP", source_key=no, name=no, steps=[], meta={}
            )
            s.add(r)
        h = it.header
        set_changed(
            r,
            name=h.route_name or no,
            product_code=h.product_code or None,
            version=h.version or r.version,
            process_type=h.process_type or r.process_type,
            effective_from=h.effective_from,
            effective_to=h.effective_to,
            is_active=h.is_active,
        )
        r.meta = {**(r.meta or {}), "erp": {"header": raw.get("header")}}
        if it.steps:  # a header-only row (no steps) never wipes the step set
            await _replace_steps(uow, r, it, raw.get("steps") or [])
            await _keep_lines(uow, no, it, raw.get("steps") or [])
        await s.flush()
        after = _view(r)
        if before is None:
            c.created += 1
        elif before != after:
            c.updated += 1
        else:
            c.unchanged += 1
        if before != after:
            uow.audit(
                r.id, r.code, entity_type="ROUTING", action="ERP_ROUTE_SYNC", before=before, after=after
            )
    return c


async def _replace_steps(uow: UnitOfWork, r: Routing, it: ErpRoute, raw_steps: list[Any]) -> None:
    no = it.header.route_no
    ops = await _operations(uow, it.steps)
    groups = await _groups(uow, it.steps)
    top = max(st.step_no for st in it.steps)
    wanted = {st.step_no: (st, raw_steps[i] if i < len(raw_steps) else {}) for i, st in enumerate(it.steps)}
    for old in [st for st in r.steps if st.step_no not in wanted]:
        r.steps.remove(old)  # delete-orphan; step-scope configs keep their sourceStepKey (FK SET NULL)
    current = {st.step_no: st for st in r.steps}
    for step_no, (st, raw_step) in sorted(wanted.items()):
        op_id, station_type = ops[st.process_code]
        group_id = groups.get((st.work_center_code or "", st.department_code or "")) or groups.get(
            (st.work_center_code or "", "")
        )
        values = {
            "source_step_key": step_key(no, st),
            "operation_id": op_id,
            "station_group_id": group_id,
            "station_type": station_type,
            "requires_fai": st.first_piece_inspect,
            "is_last": step_no == top,
        }
        row = current.get(step_no)
        if row is None:
            r.steps.append(RoutingStep(step_no=step_no, meta={"erp": raw_step}, **values))
        else:
            set_changed(row, **values)
            if (row.meta or {}).get("erp") != raw_step:
                row.meta = {**(row.meta or {}), "erp": raw_step}


async def _operations(uow: UnitOfWork, steps: list[ErpRouteStep]) -> dict[str, tuple[int, str]]:
    """processCode → (operation id, station type): mapping, else same-code operation, else a new ERP one."""
    s = uow.session
    by_code = {st.process_code: st for st in steps}
    mapped = dict(
        (
            await s.execute(
                select(OperationMapping.source_process_key, OperationMapping.operation_id).where(
                    OperationMapping.source_system == "ERP",
                    OperationMapping.source_process_key.in_(by_code),
                )
            )
        )
        .tuples()
        .all()
    )
    missing = [code for code in by_code if code not in mapped]
    existing = {o.code: o for o in await s.scalars(select(Operation).where(Operation.code.in_(missing)))}
    for code in missing:
        st = by_code[code]
        op = existing.get(code)
        if op is None:
            op = Operation(
                code=code,
                name=st.process_name or code,
                default_type="MANUAL",
                is_key_quality=st.key_oper,
                source_system="ERP",
                meta={},
            )
            s.add(op)
            await s.flush()
        s.add(
            OperationMapping(
                source_system="ERP",
                source_process_key=code,
                source_process_name=st.process_name,
                operation_id=op.id,
                meta={},
            )
        )
        mapped[code] = op.id
    types = dict(
        (
            await s.execute(
                select(Operation.id, Operation.default_type).where(Operation.id.in_(mapped.values()))
            )
        )
        .tuples()
        .all()
    )
    return {code: (op_id, types.get(op_id) or "MANUAL") for code, op_id in mapped.items()}


async def _groups(uow: UnitOfWork, steps: list[ErpRouteStep]) -> dict[tuple[str, str], int]:
    """(workCenter, department) → station group; department "" is the work center's catch-all."""
    centers = {st.work_center_code for st in steps if st.work_center_code}
    if not centers:
        return {}
    rows = await uow.session.scalars(
        select(WorkCenterStationGroupMapping).where(
            WorkCenterStationGroupMapping.source_system == "ERP",
            WorkCenterStationGroupMapping.work_center_code.in_(centers),
        )
    )
    return {(m.work_center_code, m.department or ""): m.station_group_id for m in rows}


async def _keep_lines(uow: UnitOfWork, route_no: str, it: ErpRoute, raw_steps: list[Any]) -> None:
    keys = [f"{route_no}:{st.step_no}:{st.process_code}" for st in it.steps]
    rows = {
        row.business_key: row
        for row in await uow.session.scalars(
            select(ErpRouteLineRaw).where(ErpRouteLineRaw.route_no == route_no)
        )
    }
    for i, key in enumerate(keys):
        keep_raw(
            uow, rows, ErpRouteLineRaw, key, raw_steps[i] if i < len(raw_steps) else {}, route_no=route_no
        )
    gone = [k for k in rows if k not in set(keys)]
    if gone:
        await uow.session.execute(delete(ErpRouteLineRaw).where(ErpRouteLineRaw.business_key.in_(gone)))
