"""Execution at a station: track-in, track-out, queue, unit lookup, data specs of the unit's step."""

from __future__ import annotations

from typing import Any

from central.api.registry import Router
from central.api.request import Req
from central.schemas.execution import TrackIn, TrackInOut, TrackOut
from central.services import execution, station_reads

router = Router(tag="execution", entity_type="TRACK")
READ = station_reads.STATION_READ_PERMS


@router.post("/stations/{stationCode}/track-in", perms=("exec:track_in",), action="TRACK_IN", omit_none=True)
async def track_in(rq: Req, body: TrackIn) -> TrackInOut:
    """Start the unit's current step at this station (every guard of domain.md §4.1, in order)."""
    return await rq.write(execution.track_in, rq.path("stationCode"), body)


@router.post(
    "/stations/{stationCode}/track-out", perms=("exec:track_out",), action="TRACK_OUT", omit_none=True
)
async def track_out(rq: Req, body: TrackOut) -> TrackInOut:
    """Finish the step PASS (advance) or FAIL (defect recorded), with collected data (domain.md §4.2)."""
    return await rq.write(execution.track_out, rq.path("stationCode"), body)


@router.get("/stations/{stationCode}/queue", perms=READ)
async def station_queue(rq: Req) -> list[dict[str, Any]]:
    """Units currently inside the station (open tracks), oldest first, at most 50."""
    return await rq.read(station_reads.queue, rq.path("stationCode"))


@router.get("/stations/resolve-unit/{sn}", perms=READ)
async def resolve_unit(rq: Req) -> dict[str, Any]:
    """The work order and run of a scanned serial number."""
    return await rq.read(station_reads.resolve_unit, rq.path("sn"))


@router.get("/stations/{stationCode}/unit/{sn}/data-specs", perms=READ)
async def unit_data_specs(rq: Req) -> dict[str, Any]:
    """The data specs bound to the unit's current step."""
    return await rq.read(station_reads.unit_data_specs, rq.path("stationCode"), rq.path("sn"))
