"""Routing administration, data-collection specs and FAI templates (api.md master data)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.routing import (
    DataSpecCreate,
    DataSpecOut,
    DataSpecQuery,
    DataSpecUpdate,
    FaiTemplateCreate,
    FaiTemplateOut,
    FaiTemplateQuery,
    FaiTemplateUpdate,
    RoutingCreate,
    RoutingDetail,
    RoutingOut,
    RoutingQuery,
    RoutingStepsReplace,
    RoutingUpdate,
)
from central.services import data_specs, fai_templates, routings

router = Router(tag="routing", entity_type="ROUTING")
SPEC_READ = ("data_spec:read", "data_spec:config", "route:read")
FAI_READ = ("quality:fai", "route:configure", "route:read")
FAI_WRITE = ("quality:fai", "route:configure")


@router.get("/routes", perms=("route:read",))
async def list_routes(rq: Req, query: RoutingQuery) -> Page[RoutingOut]:
    """Routings (search: code, name, productCode; filters: sourceSystem, processType, isActive)."""
    return await rq.read(routings.list_routings, query)


@router.post("/routes", perms=("route:create",), action="ROUTING_CREATE")
async def create_route(rq: Req, body: RoutingCreate) -> RoutingDetail:
    """Create an MES routing with its steps."""
    return await rq.write(routings.create_routing, body)


@router.get("/routes/{routingCode}", perms=("route:read",))
async def get_route(rq: Req) -> RoutingDetail:
    """A routing with its steps, FAI template and latest compiled version."""
    return await rq.read(routings.get_routing, rq.path("routingCode"))


@router.patch("/routes/{routingCode}", perms=("route:configure",), action="ROUTING_UPDATE")
async def update_route(rq: Req, body: RoutingUpdate) -> RoutingDetail:
    """Change a routing's header (name, product, process type, version, effective dates, activity)."""
    return await rq.write(routings.update_routing, rq.path("routingCode"), body)


@router.put("/routes/{routingCode}/steps", perms=("route:configure",), action="ROUTING_STEPS_REPLACE")
async def replace_route_steps(rq: Req, body: RoutingStepsReplace) -> RoutingDetail:
    """Replace the step set of an MES routing (compiled versions stay as they are)."""
    return await rq.write(routings.replace_steps, rq.path("routingCode"), body)


@router.get("/data-collection-specs", perms=SPEC_READ)
async def list_data_specs(rq: Req, query: DataSpecQuery) -> Page[DataSpecOut]:
    """Data-collection specs (search: name; filters: operationCode, isActive)."""
    return await rq.read(data_specs.list_specs, query)


@router.post(
    "/data-collection-specs",
    perms=("data_spec:config",),
    status=201,
    entity_type="DATA_SPEC",
    action="DATA_SPEC_CREATE",
)
async def create_data_spec(rq: Req, body: DataSpecCreate) -> DataSpecOut:
    """Create a data-collection spec for an operation."""
    return await rq.write(data_specs.create_spec, body)


@router.get("/data-collection-specs/{specId}", perms=SPEC_READ)
async def get_data_spec(rq: Req) -> DataSpecOut:
    """One data-collection spec."""
    return await rq.read(data_specs.get_spec, rq.path_int("specId", "DATA_SPEC_NOT_FOUND"))


@router.patch(
    "/data-collection-specs/{specId}",
    perms=("data_spec:config",),
    entity_type="DATA_SPEC",
    action="DATA_SPEC_UPDATE",
)
async def update_data_spec(rq: Req, body: DataSpecUpdate) -> DataSpecOut:
    """Change a data-collection spec."""
    return await rq.write(data_specs.update_spec, rq.path_int("specId", "DATA_SPEC_NOT_FOUND"), body)


@router.get("/fai-templates", perms=FAI_READ)
async def list_fai_templates(rq: Req, query: FaiTemplateQuery) -> Page[FaiTemplateOut]:
    """FAI templates with items (search: code, name; filters: productCode, processType, isActive)."""
    return await rq.read(fai_templates.list_templates, query)


@router.post(
    "/fai-templates", perms=FAI_WRITE, status=201, entity_type="FAI_TEMPLATE", action="FAI_TEMPLATE_CREATE"
)
async def create_fai_template(rq: Req, body: FaiTemplateCreate) -> FaiTemplateOut:
    """Create an FAI template with its checklist items."""
    return await rq.write(fai_templates.create_template, body)


@router.get("/fai-templates/{id}", perms=FAI_READ)
async def get_fai_template(rq: Req) -> FaiTemplateOut:
    """One FAI template with its items."""
    return await rq.read(fai_templates.get_template, rq.path_int("id", "FAI_TEMPLATE_NOT_FOUND"))


@router.patch(
    "/fai-templates/{id}", perms=FAI_WRITE, entity_type="FAI_TEMPLATE", action="FAI_TEMPLATE_UPDATE"
)
async def update_fai_template(rq: Req, body: FaiTemplateUpdate) -> FaiTemplateOut:
    """Rename, (de)activate or replace the items of an FAI template."""
    return await rq.write(fai_templates.update_template, rq.path_int("id", "FAI_TEMPLATE_NOT_FOUND"), body)
