"""Plant master data (domain.md §2 "Plant"): lines, station groups and stations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.exc import IntegrityError

from central.db.base import Base
from central.db.models import (
    Line,
    RouteExecutionConfig,
    Run,
    Station,
    StationGroup,
    Track,
    WorkOrder,
)
from central.domain.errors import Conflict, NotFound, Rejected
from central.domain.permissions import DataScope
from central.domain.states import RUN_TERMINAL
from central.schemas.base import parse_row_id
from central.schemas.plant import (
    LineCreate,
    LineQuery,
    LineUpdate,
    StationCreate,
    StationGroupCreate,
    StationGroupQuery,
    StationQuery,
    StationUpdate,
)
from central.services.actor import Actor
from central.services.listing import paginate, split_csv
from central.services.uow import UnitOfWork


async def flush_or(uow: UnitOfWork, code: str, message: str) -> None:
    """Flush; a unique/foreign-key violation lost to a concurrent writer becomes the Conflict `code`."""
    try:
        await uow.session.flush()
    except IntegrityError:
        raise Conflict(code, message) from None


async def _referencing_tables(uow: UnitOfWork, table: str, row_id: int) -> list[str]:
    """Names of the tables holding a foreign key to `table`.id = row_id (every model, found from metadata)."""
    found: set[str] = set()
    for t in Base.metadata.sorted_tables:
        cols = [
            fk.parent for fk in t.foreign_keys if fk.column.table.name == table and fk.column.name == "id"
        ]
        for col in cols:
            probe = select(literal(1)).select_from(t).where(col == row_id).limit(1)
            if await uow.session.scalar(probe):
                found.add(t.name)
                break
    return sorted(found)


# ---- lines ----------------------------------------------------------------------------------------------


def line_out(line: Line) -> dict[str, Any]:
    meta = dict(line.meta or {})
    checks = meta.get("readinessChecks")
    enabled = checks.get("enabled") if isinstance(checks, dict) else None
    return {
        "id": line.id,
        "code": line.code,
        "name": line.name,
        "process_type": line.process_type,
        "readiness_checks": None if enabled is None else {"enabled": list(enabled)},
        "meta": meta,
        "created_at": line.created_at,
        "updated_at": line.updated_at,
    }


def _line_view(line: Line) -> dict[str, Any]:
    return {"code": line.code, "name": line.name, "processType": line.process_type, "meta": line.meta}


async def get_line_row(uow: UnitOfWork, key: str) -> Line:
    """A line by numeric id or by code (`/lines/7` and `/lines/LINE-A` both work)."""
    line_id = parse_row_id(key)
    line = await uow.session.get(Line, line_id) if line_id is not None else None
    if line is None:
        line = await uow.session.scalar(select(Line).where(Line.code == key))
    if line is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {key} not found")
    return line


async def _line_by_code(uow: UnitOfWork, code: str) -> Line:
    line = await uow.session.scalar(select(Line).where(Line.code == code))
    if line is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {code} not found")
    return line


async def list_lines(uow: UnitOfWork, q: LineQuery) -> dict[str, Any]:
    stmt = select(Line)
    if types := split_csv(q.process_type):
        stmt = stmt.where(Line.process_type.in_(types))
    page = await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={"createdAt": Line.created_at, "code": Line.code, "name": Line.name},
        search=[Line.code, Line.name],
    )
    page["items"] = [line_out(x) for x in page["items"]]
    return page


async def get_line(uow: UnitOfWork, key: str) -> dict[str, Any]:
    return line_out(await get_line_row(uow, key))


async def create_line(uow: UnitOfWork, body: LineCreate) -> dict[str, Any]:
    message = f"Line {body.code} already exists"
    if await uow.session.scalar(select(Line.id).where(Line.code == body.code)):
        raise Conflict("LINE_CODE_EXISTS", message)
    meta: dict[str, Any] = {}
    if body.readiness_checks is not None:
        meta["readinessChecks"] = {"enabled": list(body.readiness_checks.enabled)}
    line = Line(code=body.code, name=body.name, process_type=body.process_type, meta=meta)
    uow.session.add(line)
    await flush_or(uow, "LINE_CODE_EXISTS", message)
    uow.audit(line.id, line.code, entity_type="LINE", action="LINE_CREATE", after=_line_view(line))
    return line_out(line)


async def update_line(uow: UnitOfWork, key: str, body: LineUpdate) -> dict[str, Any]:
    line = await get_line_row(uow, key)
    before = _line_view(line)
    if body.process_type is not None and body.process_type != line.process_type:
        active = await uow.session.scalar(
            select(Run.run_no).where(Run.line_id == line.id, Run.status.not_in(RUN_TERMINAL)).limit(1)
        )
        if active:
            raise Conflict(
                "LINE_IN_USE", f"Line {line.code} has run {active} in progress; its process type is fixed"
            )
        line.process_type = body.process_type
    if body.name is not None:
        line.name = body.name
    if body.meta:
        merged = {**(line.meta or {}), **body.meta}
        line.meta = {k: v for k, v in merged.items() if v is not None}
    await uow.session.flush()
    uow.audit(
        line.id, line.code, entity_type="LINE", action="LINE_UPDATE", before=before, after=_line_view(line)
    )
    return line_out(line)


async def delete_line(uow: UnitOfWork, key: str) -> dict[str, Any]:
    line = await get_line_row(uow, key)
    refs = await _referencing_tables(uow, "lines", line.id)
    dispatched = await uow.session.scalar(
        select(WorkOrder.wo_no).where(WorkOrder.meta[("dispatch", "lineId")].as_integer() == line.id).limit(1)
    )
    if dispatched:
        refs.append("work_orders")
    if refs:
        raise Conflict(
            "LINE_HAS_DEPENDENCIES",
            f"Line {line.code} is still referenced by: {', '.join(refs)}",
            details=refs,
        )
    before = _line_view(line)
    await uow.session.delete(line)
    await flush_or(uow, "LINE_HAS_DEPENDENCIES", f"Line {line.code} is still referenced")
    uow.audit(line.id, line.code, entity_type="LINE", action="LINE_DELETE", before=before)
    return {"id": line.id, "deleted": True}


# ---- station groups -------------------------------------------------------------------------------------


async def _group_by_code(uow: UnitOfWork, code: str) -> StationGroup:
    group = await uow.session.scalar(select(StationGroup).where(StationGroup.code == code))
    if group is None:
        raise NotFound("STATION_GROUP_NOT_FOUND", f"Station group {code} not found")
    return group


async def _group_outs(uow: UnitOfWork, rows: list[tuple[StationGroup, str | None]]) -> list[dict[str, Any]]:
    """Groups with their stations' codes (one query for the whole page)."""
    members: dict[int, list[str]] = {g.id: [] for g, _ in rows}
    if members:
        found = await uow.session.execute(
            select(Station.group_id, Station.code)
            .where(Station.group_id.in_(list(members)))
            .order_by(Station.code)
        )
        for group_id, code in found:
            members[group_id].append(code)
    return [
        {
            "id": g.id,
            "code": g.code,
            "name": g.name,
            "line_id": g.line_id,
            "line_code": line_code,
            "station_codes": members[g.id],
            "created_at": g.created_at,
            "updated_at": g.updated_at,
        }
        for g, line_code in rows
    ]


async def list_station_groups(uow: UnitOfWork, q: StationGroupQuery) -> dict[str, Any]:
    stmt = select(StationGroup, Line.code).outerjoin(Line, Line.id == StationGroup.line_id)
    if lines := split_csv(q.line_code):
        stmt = stmt.where(Line.code.in_(lines))
    page = await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": StationGroup.created_at,
            "code": StationGroup.code,
            "name": StationGroup.name,
            "line.code": Line.code,
        },
        search=[StationGroup.code, StationGroup.name],
        scalars=False,
    )
    page["items"] = await _group_outs(uow, [(g, line_code) for g, line_code in page["items"]])
    return page


async def create_station_group(uow: UnitOfWork, body: StationGroupCreate) -> dict[str, Any]:
    message = f"Station group {body.code} already exists"
    if await uow.session.scalar(select(StationGroup.id).where(StationGroup.code == body.code)):
        raise Conflict("STATION_GROUP_CODE_EXISTS", message)
    line = await _line_by_code(uow, body.line_code) if body.line_code else None
    group = StationGroup(code=body.code, name=body.name, line_id=line.id if line else None)
    uow.session.add(group)
    await flush_or(uow, "STATION_GROUP_CODE_EXISTS", message)
    after = {"code": group.code, "name": group.name, "lineCode": line.code if line else None}
    uow.audit(group.id, group.code, entity_type="STATION_GROUP", action="STATION_GROUP_CREATE", after=after)
    return (await _group_outs(uow, [(group, line.code if line else None)]))[0]


# ---- stations -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StationScope:
    """Data-scope filter of a station list: None = unrestricted, else only these line/station ids."""

    line_ids: frozenset[int] | None = None
    station_ids: frozenset[int] | None = None


def station_scope(scope: DataScope | None, actor: Actor) -> StationScope:
    if scope == DataScope.ASSIGNED_STATIONS:
        return StationScope(station_ids=actor.station_ids)
    if scope == DataScope.ASSIGNED_LINES:
        return StationScope(line_ids=actor.line_ids)
    return StationScope()


def _station_out(st: Station, line_code: str, group_code: str | None) -> dict[str, Any]:
    return {
        "id": st.id,
        "code": st.code,
        "name": st.name,
        "line_id": st.line_id,
        "line_code": line_code,
        "group_id": st.group_id,
        "group_code": group_code,
        "station_type": st.station_type,
        "is_active": st.is_active,
        "meta": st.meta or {},
        "created_at": st.created_at,
        "updated_at": st.updated_at,
    }


def _station_view(st: Station, line_code: str, group_code: str | None) -> dict[str, Any]:
    return {
        "code": st.code,
        "name": st.name,
        "lineCode": line_code,
        "groupCode": group_code,
        "stationType": st.station_type,
        "isActive": st.is_active,
    }


def _station_select() -> Any:
    return (
        select(Station, Line.code, StationGroup.code)
        .join(Line, Line.id == Station.line_id)
        .outerjoin(StationGroup, StationGroup.id == Station.group_id)
    )


async def _station_row(uow: UnitOfWork, code: str) -> tuple[Station, str, str | None]:
    row = (await uow.session.execute(_station_select().where(Station.code == code))).first()
    if row is None:
        raise NotFound("STATION_NOT_FOUND", f"Station {code} not found")
    return row[0], row[1], row[2]


def _check_group_line(group: StationGroup, line_id: int, station_code: str) -> None:
    if group.line_id is not None and group.line_id != line_id:
        raise Rejected(
            "STATION_GROUP_LINE_MISMATCH",
            f"Station group {group.code} belongs to another line than {station_code}",
        )


async def list_stations(uow: UnitOfWork, q: StationQuery, scope: StationScope) -> dict[str, Any]:
    stmt = _station_select()
    if scope.station_ids is not None:
        stmt = stmt.where(Station.id.in_(sorted(scope.station_ids)))
    if scope.line_ids is not None:
        stmt = stmt.where(Station.line_id.in_(sorted(scope.line_ids)))
    if lines := split_csv(q.line_code):
        stmt = stmt.where(Line.code.in_(lines))
    if types := split_csv(q.station_type):
        stmt = stmt.where(Station.station_type.in_(types))
    if groups := split_csv(q.group_code):
        stmt = stmt.where(StationGroup.code.in_(groups))
    if q.is_active is not None:
        stmt = stmt.where(Station.is_active.is_(q.is_active))
    page = await paginate(
        uow.session,
        stmt,
        q,
        sort_fields={
            "createdAt": Station.created_at,
            "code": Station.code,
            "name": Station.name,
            "stationType": Station.station_type,
            "line.code": Line.code,
            "group.code": StationGroup.code,
        },
        search=[Station.code, Station.name],
        scalars=False,
    )
    page["items"] = [_station_out(st, lc, gc) for st, lc, gc in page["items"]]
    return page


async def create_station(uow: UnitOfWork, body: StationCreate) -> dict[str, Any]:
    message = f"Station {body.code} already exists"
    if await uow.session.scalar(select(Station.id).where(Station.code == body.code)):
        raise Conflict("STATION_CODE_EXISTS", message)
    line = await _line_by_code(uow, body.line_code)
    group = await _group_by_code(uow, body.group_code) if body.group_code else None
    if group is not None:
        _check_group_line(group, line.id, body.code)
    st = Station(
        code=body.code,
        name=body.name,
        line_id=line.id,
        group_id=group.id if group else None,
        station_type=body.station_type,
        is_active=True,
        meta={},
    )
    uow.session.add(st)
    await flush_or(uow, "STATION_CODE_EXISTS", message)
    group_code = group.code if group else None
    after = _station_view(st, line.code, group_code)
    uow.audit(st.id, st.code, entity_type="STATION", action="STATION_CREATE", after=after)
    return _station_out(st, line.code, group_code)


async def update_station(uow: UnitOfWork, code: str, body: StationUpdate) -> dict[str, Any]:
    st, line_code, group_code = await _station_row(uow, code)
    before = _station_view(st, line_code, group_code)
    sent = body.model_fields_set
    new_group_id, new_group_code = st.group_id, group_code
    if "group_code" in sent:
        group = await _group_by_code(uow, body.group_code) if body.group_code else None
        if group is not None:
            _check_group_line(group, st.line_id, st.code)
        new_group_id, new_group_code = (group.id, group.code) if group else (None, None)
    new_type = body.station_type or st.station_type
    if (new_group_id, new_type) != (st.group_id, st.station_type):
        busy = await uow.session.scalar(
            select(Track.id).where(Track.station_id == st.id, Track.out_at.is_(None)).limit(1)
        )
        if busy:
            raise Conflict(
                "STATION_IN_USE", f"Units are inside station {st.code}; its type and group are fixed"
            )
    st.group_id, st.station_type = new_group_id, new_type
    if body.name is not None:
        st.name = body.name
    if body.is_active is not None:
        st.is_active = body.is_active
    await uow.session.flush()
    after = _station_view(st, line_code, new_group_code)
    uow.audit(
        st.id,
        st.code,
        entity_type="STATION",
        action="STATION_UPDATE",
        before=before,
        after=after,
    )
    return _station_out(st, line_code, new_group_code)


async def delete_station(uow: UnitOfWork, code: str) -> dict[str, Any]:
    st, line_code, group_code = await _station_row(uow, code)
    refs = await _referencing_tables(uow, "stations", st.id)
    allowed = await uow.session.scalars(select(RouteExecutionConfig.allowed_station_ids))
    if any(st.id in [int(i) for i in ids or []] for ids in allowed):
        refs.append("route_execution_configs")
    if refs:
        raise Conflict(
            "STATION_HAS_DEPENDENCIES",
            f"Station {st.code} is still referenced by: {', '.join(refs)}",
            details=refs,
        )
    before = _station_view(st, line_code, group_code)
    await uow.session.delete(st)
    await flush_or(uow, "STATION_HAS_DEPENDENCIES", f"Station {st.code} is still referenced")
    uow.audit(st.id, st.code, entity_type="STATION", action="STATION_DELETE", before=before)
    return {"id": st.id, "deleted": True}
