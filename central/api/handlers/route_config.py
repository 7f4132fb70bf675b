"""Route execution config, compile into immutable versions, versions, FAI-template binding."""

from __future__ import annotations

from typing import Any

from central.api.registry import Router
from central.api.request import Req
from central.schemas.route_config import (
    ExecutionConfigIn,
    ExecutionConfigOut,
    ExecutionConfigPatch,
    FaiTemplateBinding,
    RouteVersionOut,
)
from central.services import route_config

router = Router(tag="routing", entity_type="ROUTING")


@router.get("/routes/{routingCode}/execution-config", perms=("route:read",))
async def list_execution_configs(rq: Req) -> list[ExecutionConfigOut]:
    """Route- and step-scoped execution configs (the newest of a scope wins at compile)."""
    return await rq.read(route_config.list_configs, rq.path("routingCode"))


@router.post(
    "/routes/{routingCode}/execution-config",
    perms=("route:configure",),
    action="ROUTE_EXECUTION_CONFIG_CREATE",
)
async def create_execution_config(rq: Req, body: ExecutionConfigIn) -> ExecutionConfigOut:
    """Add a ROUTE or STEP execution config (station type/group, allowed stations, data specs, mapping)."""
    return await rq.write(route_config.create_config, rq.path("routingCode"), body)


@router.patch(
    "/routes/{routingCode}/execution-config/{configId}",
    perms=("route:configure",),
    action="ROUTE_EXECUTION_CONFIG_UPDATE",
)
async def update_execution_config(rq: Req, body: ExecutionConfigPatch) -> ExecutionConfigOut:
    """Change an execution config (its scope cannot change)."""
    return await rq.write(
        route_config.update_config,
        rq.path("routingCode"),
        rq.path_int("configId", "EXECUTION_CONFIG_NOT_FOUND"),
        body,
    )


@router.post("/routes/{routingCode}/compile", perms=("route:compile",), action="ROUTE_COMPILE")
async def compile_route(rq: Req) -> RouteVersionOut:
    """Compile into an immutable version: READY or INVALID with errors; unchanged input → same version."""
    return await rq.write(route_config.compile_route, rq.path("routingCode"))


@router.get("/routes/{routingCode}/versions", perms=("route:read",))
async def list_route_versions(rq: Req) -> list[RouteVersionOut]:
    """Compiled versions, newest first."""
    return await rq.read(route_config.list_versions, rq.path("routingCode"))


@router.get("/routes/{routingCode}/versions/{versionNo}", perms=("route:read",))
async def get_route_version(rq: Req) -> RouteVersionOut:
    """One compiled version with its snapshot and errors."""
    return await rq.read(
        route_config.get_version, rq.path("routingCode"), rq.path_int("versionNo", "ROUTE_VERSION_NOT_FOUND")
    )


@router.patch(
    "/routes/{routingCode}/fai-template", perms=("route:configure",), action="ROUTE_FAI_TEMPLATE_BIND"
)
async def bind_fai_template(rq: Req, body: FaiTemplateBinding) -> dict[str, Any]:
    """Bind (or with null unbind) the FAI template whose items pre-fill FAIs of this routing."""
    return await rq.write(route_config.bind_fai_template, rq.path("routingCode"), body)
