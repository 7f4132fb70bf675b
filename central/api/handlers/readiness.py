"""Readiness: run checks, latest/history, waive, exceptions board, per-line configuration."""

from __future__ import annotations

from typing import Any

from central.api.registry import Router
from central.api.request import Req
from central.schemas.readiness import ExceptionsQuery, LatestQuery, ReadinessConfig, WaiveBody
from central.services import readiness

router = Router(tag="readiness", entity_type="READINESS_CHECK")
VIEW = ("readiness:view",)


@router.post("/runs/{runNo}/readiness/precheck", perms=("readiness:check",), action="READINESS_PRECHECK")
async def readiness_precheck(rq: Req) -> dict[str, Any]:
    """Advisory check of the run's preparation (also run automatically after run creation)."""
    return await rq.write(readiness.run_check, rq.path("runNo"), "PRECHECK")


@router.post("/runs/{runNo}/readiness/check", perms=("readiness:check",), action="READINESS_FORMAL")
async def readiness_check(rq: Req) -> dict[str, Any]:
    """FORMAL check: the one authorization reads. A FAILED check is still HTTP 200."""
    return await rq.write(readiness.run_check, rq.path("runNo"), "FORMAL")


@router.post("/runs/{runNo}/prep-checks", perms=("readiness:check",), action="READINESS_FORMAL")
async def prep_checks(rq: Req) -> dict[str, Any]:
    """Seed-contract alias of POST /runs/{runNo}/readiness/check."""
    return await rq.write(readiness.run_check, rq.path("runNo"), "FORMAL")


@router.get("/runs/{runNo}/readiness/latest", perms=VIEW)
async def readiness_latest(rq: Req, query: LatestQuery) -> dict[str, Any]:
    """The newest check of the run (type=PRECHECK|FORMAL to choose)."""
    return await rq.read(readiness.get_latest, rq.path("runNo"), query.type)


@router.get("/runs/{runNo}/readiness/history", perms=VIEW)
async def readiness_history(rq: Req) -> list[dict[str, Any]]:
    """Every check of the run, newest first."""
    return await rq.read(readiness.history, rq.path("runNo"))


@router.post(
    "/runs/{runNo}/readiness/items/{itemId}/waive",
    perms=("readiness:override",),
    action="READINESS_ITEM_WAIVE",
)
async def waive_item(rq: Req, body: WaiveBody) -> dict[str, Any]:
    """Waive a FAILED item with a reason; the check passes when no FAILED item is left."""
    return await rq.write(readiness.waive, rq.path("runNo"), rq.path_int("itemId", "ITEM_NOT_FOUND"), body)


@router.get("/readiness/exceptions", perms=VIEW)
async def readiness_exceptions(rq: Req, query: ExceptionsQuery) -> dict[str, Any]:
    """PREP runs whose latest check FAILED (status=… to widen; lineId; from/to; page, limit)."""
    return await rq.read(readiness.exceptions, query)


@router.get("/lines/{lineId}/readiness-config", perms=("readiness:view", "readiness:config"))
async def get_readiness_config(rq: Req) -> dict[str, Any]:
    """Item types evaluated for runs on this line."""
    return await rq.read(readiness.get_config, rq.path("lineId"))


@router.put(
    "/lines/{lineId}/readiness-config",
    perms=("readiness:config",),
    entity_type="LINE",
    action="LINE_READINESS_CONFIG_UPDATE",
)
async def put_readiness_config(rq: Req, body: ReadinessConfig) -> dict[str, Any]:
    """Set the item types evaluated on this line (EQUIPMENT, MATERIAL, ROUTE, STENCIL, SOLDER_PASTE, …)."""
    return await rq.write(readiness.put_config, rq.path("lineId"), body)
