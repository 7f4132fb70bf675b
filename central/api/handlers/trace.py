"""Traceability: everything about one unit, and the units built with a material lot."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import CamelModel
from central.services import trace

router = Router(tag="trace", entity_type="UNIT")


class TraceQuery(CamelModel):
    mode: Literal["run", "latest"] = Field("run", description="run: frozen version; latest: newest READY")


@router.get("/trace/units/{sn}", perms=("trace:read",))
async def trace_unit(rq: Req, query: TraceQuery) -> dict[str, Any]:
    """Route, tracks, data, defects, inspections, loading, materials and readiness of one unit."""
    return await rq.read(trace.unit_trace, rq.path("sn"), query.mode)


@router.get("/trace/material-lots/{materialCode}/{lotNo}/units", perms=("trace:read",))
async def trace_material_lot(rq: Req) -> dict[str, Any]:
    """Units of every run that loaded this material lot."""
    return await rq.read(trace.lot_units, rq.path("materialCode"), rq.path("lotNo"))
