"""Plant master data administration: lines, station groups, stations, operations, work centers."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Deleted, Page
from central.schemas.plant import (
    LineCreate,
    LineOut,
    LineQuery,
    LineUpdate,
    OperationCreate,
    OperationOut,
    OperationQuery,
    OperationUpdate,
    StationCreate,
    StationGroupCreate,
    StationGroupOut,
    StationGroupQuery,
    StationOut,
    StationQuery,
    StationUpdate,
    WorkCenterOut,
    WorkCenterQuery,
)
from central.services import operations, plant

router = Router(tag="plant", entity_type="LINE")
LINE_CONFIG = ("line:config",)
# domain.md §10 station lists (exec:*), plus line:config so engineers see the stations they configure.
STATION_READ = ("exec:read", "exec:track_in", "exec:track_out", "line:config")
OPERATION_READ = ("operation:read", "operation:config", "route:read", "route:configure")
OPERATION_WRITE = ("operation:config",)


@router.get("/lines")
async def list_lines(rq: Req, query: LineQuery) -> Page[LineOut]:
    """Production lines (search: code, name; filter: processType; sort: code, name, createdAt)."""
    return await rq.read(plant.list_lines, query)


@router.post("/lines", perms=LINE_CONFIG, status=201, action="LINE_CREATE")
async def create_line(rq: Req, body: LineCreate) -> LineOut:
    """Create a production line, optionally with its enabled readiness checks."""
    return await rq.write(plant.create_line, body)


@router.get("/lines/{lineId}")
async def get_line(rq: Req) -> LineOut:
    """One line; {lineId} is the numeric id or the line code (e.g. /lines/LINE-A)."""
    return await rq.read(plant.get_line, rq.path("lineId"))


@router.patch("/lines/{lineId}", perms=LINE_CONFIG, action="LINE_UPDATE")
async def update_line(rq: Req, body: LineUpdate) -> LineOut:
    """Change a line's name, process type or meta; {lineId} is the numeric id or the line code."""
    return await rq.write(plant.update_line, rq.path("lineId"), body)


@router.delete("/lines/{lineId}", perms=LINE_CONFIG, action="LINE_DELETE")
async def delete_line(rq: Req) -> Deleted:
    """Delete a line nothing refers to; {lineId} is the numeric id or the line code."""
    return await rq.write(plant.delete_line, rq.path("lineId"))


@router.get("/stations/groups", perms=STATION_READ)
async def list_station_groups(rq: Req, query: StationGroupQuery) -> Page[StationGroupOut]:
    """Station groups with their stations' codes (search: code, name; filter: lineCode)."""
    return await rq.read(plant.list_station_groups, query)


@router.post(
    "/stations/groups", perms=LINE_CONFIG, entity_type="STATION_GROUP", action="STATION_GROUP_CREATE"
)
async def create_station_group(rq: Req, body: StationGroupCreate) -> StationGroupOut:
    """Create a station group, optionally bound to a line."""
    return await rq.write(plant.create_station_group, body)


@router.get("/stations", perms=STATION_READ)
async def list_stations(rq: Req, query: StationQuery) -> Page[StationOut]:
    """Stations within the caller's data scope (filters: lineCode, stationType, groupCode, isActive)."""
    scope = plant.station_scope(rq.actor.scope_for(STATION_READ), rq.actor)
    return await rq.read(plant.list_stations, query, scope)


@router.post("/stations", perms=LINE_CONFIG, entity_type="STATION", action="STATION_CREATE")
async def create_station(rq: Req, body: StationCreate) -> StationOut:
    """Create a station on a line (its code is also the TPM equipment code)."""
    return await rq.write(plant.create_station, body)


@router.patch("/stations/{stationCode}", perms=LINE_CONFIG, entity_type="STATION", action="STATION_UPDATE")
async def update_station(rq: Req, body: StationUpdate) -> StationOut:
    """Change a station's name, group, type or activity."""
    return await rq.write(plant.update_station, rq.path("stationCode"), body)


@router.delete("/stations/{stationCode}", perms=LINE_CONFIG, entity_type="STATION", action="STATION_DELETE")
async def delete_station(rq: Req) -> Deleted:
    """Delete a station nothing refers to."""
    return await rq.write(plant.delete_station, rq.path("stationCode"))


@router.get("/operations", perms=OPERATION_READ)
async def list_operations(rq: Req, query: OperationQuery) -> Page[OperationOut]:
    """Operations (search: code, name; filters: sourceSystem, defaultType, isKeyQuality)."""
    return await rq.read(operations.list_operations, query)


@router.post(
    "/operations", perms=OPERATION_WRITE, status=201, entity_type="OPERATION", action="OPERATION_CREATE"
)
async def create_operation(rq: Req, body: OperationCreate) -> OperationOut:
    """Create an MES operation."""
    return await rq.write(operations.create_operation, body)


@router.patch("/operations/{code}", perms=OPERATION_WRITE, entity_type="OPERATION", action="OPERATION_UPDATE")
async def update_operation(rq: Req, body: OperationUpdate) -> OperationOut:
    """Change an MES operation (ERP-origin operations are read-only)."""
    return await rq.write(operations.update_operation, rq.path("code"), body)


@router.get("/work-centers")
async def list_work_centers(rq: Req, query: WorkCenterQuery) -> Page[WorkCenterOut]:
    """ERP work centers (search: code, name; filters: department, sourceSystem)."""
    return await rq.read(operations.list_work_centers, query)
