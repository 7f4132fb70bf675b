"""Runs: create from a released work order, list, detail, units, authorize/revoke, close."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.domain.errors import Conflict
from central.schemas.base import Page
from central.schemas.runs import (
    AuthorizeBody,
    GeneratedUnits,
    GenerateUnits,
    RunCreate,
    RunDetail,
    RunOut,
    RunQuery,
    UnitOut,
    UnitQuery,
)
from central.services import runs

router = Router(tag="runs", entity_type="RUN")


@router.post("/work-orders/{woNo}/runs", perms=("run:create",), action="RUN_CREATE")
async def create_run(rq: Req, body: RunCreate) -> RunOut:
    """Create a PREP run on a line, frozen to the routing's highest READY version."""
    return await rq.write(runs.create_run, rq.path("woNo"), body)


@router.get("/runs", perms=("run:read",))
async def list_runs(rq: Req, query: RunQuery) -> Page[RunOut]:
    """Runs (status=A,B; woNo; lineCode; search runNo/woNo); line-scoped callers see their lines only."""
    return await rq.read(runs.list_runs, query)


@router.get("/runs/{runNo}", perms=("run:read",))
async def get_run(rq: Req) -> RunDetail:
    """A run with its work order, line, route version, step progress, unit counts and FAI trial."""
    return await rq.read(runs.run_detail, rq.path("runNo"))


@router.get("/runs/{runNo}/units", perms=("run:read",))
async def list_run_units(rq: Req, query: UnitQuery) -> Page[UnitOut]:
    """Units of a run with their current and next step (status=…, stationCode=…; pageSize ≤ 200)."""
    return await rq.read(runs.list_units, rq.path("runNo"), query)


@router.post("/runs/{runNo}/generate-units", perms=("run:authorize",), action="RUN_GENERATE_UNITS")
async def generate_units(rq: Req, body: GenerateUnits) -> GeneratedUnits:
    """Generate serial numbers (prefix + 4-digit running number) queued at the first step."""
    return await rq.write(runs.generate_units, rq.path("runNo"), body)


@router.delete("/runs/{runNo}/units", perms=("run:authorize",), action="RUN_DELETE_UNITS")
async def delete_units(rq: Req) -> dict[str, int]:
    """Delete a run's units while none has been tracked."""
    return await rq.write(runs.delete_units, rq.path("runNo"))


@router.post("/runs/{runNo}/authorize", perms=("run:authorize", "run:revoke"), action="RUN_AUTHORIZE")
async def authorize_run(rq: Req, body: AuthorizeBody) -> RunOut:
    """AUTHORIZE (readiness → FAI gates) or REVOKE a run; repeating either is a no-op."""
    rq.actor.require("run:authorize" if body.action == "AUTHORIZE" else "run:revoke")
    return await rq.write(runs.authorize, rq.path("runNo"), body)


@router.post("/runs/{runNo}/close", perms=("run:close",), action="RUN_CLOSE")
async def close_run(rq: Req) -> RunOut:
    """Close a run whose units are all terminal; 409 OQC_REQUIRED while a sampling rule asks for OQC."""
    result = await rq.write(runs.close, rq.path("runNo"))
    if result["oqcRequired"]:
        raise Conflict(
            "OQC_REQUIRED",
            "An outgoing quality inspection is required before this run closes",
            details={"oqcId": result.get("oqcId")},
        )
    return result["run"]
