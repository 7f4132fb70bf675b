"""Route execution config (route or step scope), compiled versions, FAI-template binding (domain.md §2)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import (
    DataCollectionSpec,
    ExecutableRouteVersion,
    FaiTemplate,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
    Station,
    StationGroup,
)
from central.domain.errors import NotFound, Rejected
from central.schemas.route_config import ExecutionConfigIn, ExecutionConfigPatch, FaiTemplateBinding
from central.services.routings import get_routing_row
from central.services.uow import UnitOfWork


async def _config_out(uow: UnitOfWork, c: RouteExecutionConfig) -> dict[str, Any]:
    s = uow.session
    step_no = (
        await s.scalar(select(RoutingStep.step_no).where(RoutingStep.id == c.routing_step_id))
        if c.routing_step_id
        else None
    )
    group = (
        await s.scalar(select(StationGroup.code).where(StationGroup.id == c.station_group_id))
        if c.station_group_id
        else None
    )
    ids = [int(i) for i in c.allowed_station_ids or []]
    codes = (
        list(await s.scalars(select(Station.code).where(Station.id.in_(ids)).order_by(Station.code)))
        if ids
        else []
    )
    scope = "ROUTE" if c.routing_step_id is None and c.source_step_key is None else "STEP"
    return {
        "id": c.id,
        "scope_type": scope,
        "step_no": step_no,
        "source_step_key": c.source_step_key,
        "station_type": c.station_type,
        "station_group_code": group,
        "allowed_station_ids": ids,
        "allowed_station_codes": codes,
        "requires_fai": c.requires_fai,
        "requires_authorization": c.requires_authorization,
        "data_spec_ids": list(c.data_spec_ids or []),
        "ingest_mapping": c.ingest_mapping,
        "updated_at": c.updated_at,
    }


async def list_configs(uow: UnitOfWork, code: str) -> list[dict[str, Any]]:
    routing = await get_routing_row(uow, code)
    rows = (
        await uow.session.scalars(
            select(RouteExecutionConfig)
            .where(RouteExecutionConfig.routing_id == routing.id)
            .order_by(RouteExecutionConfig.id)
        )
    ).all()
    return [await _config_out(uow, c) for c in rows]


async def _apply(uow: UnitOfWork, c: RouteExecutionConfig, body: ExecutionConfigIn, fields: set[str]) -> None:
    s = uow.session
    if "station_group_code" in fields:
        c.station_group_id = None
        if body.station_group_code:
            group = await s.scalar(select(StationGroup).where(StationGroup.code == body.station_group_code))
            if group is None:
                raise NotFound(
                    "STATION_GROUP_NOT_FOUND", f"Station group {body.station_group_code} not found"
                )
            c.station_group_id = group.id
    if "allowed_station_codes" in fields:
        codes = body.allowed_station_codes or []
        found = (
            dict(
                (await s.execute(select(Station.code, Station.id).where(Station.code.in_(codes))))
                .tuples()
                .all()
            )
            if codes
            else {}
        )
        if missing := [x for x in codes if x not in found]:
            raise NotFound("STATION_NOT_FOUND", f"Unknown station(s): {', '.join(missing)}")
        c.allowed_station_ids = [found[x] for x in codes]
    if "data_spec_ids" in fields:
        ids = body.data_spec_ids or []
        known = (
            set(await s.scalars(select(DataCollectionSpec.id).where(DataCollectionSpec.id.in_(ids))))
            if ids
            else set()
        )
        if missing_ids := [i for i in ids if i not in known]:
            raise NotFound("DATA_SPEC_NOT_FOUND", f"Unknown data spec id(s): {missing_ids}")
        c.data_spec_ids = list(ids)
    for name in ("station_type", "requires_fai", "requires_authorization", "ingest_mapping"):
        if name in fields:
            setattr(c, name, getattr(body, name))


async def _step(uow: UnitOfWork, routing: Routing, body: ExecutionConfigIn) -> RoutingStep | None:
    if body.scope_type not in ("ROUTE", "STEP"):
        raise Rejected("SCOPE_TYPE_INVALID", "scopeType must be ROUTE or STEP")
    if body.scope_type == "ROUTE":
        return None
    if body.step_no is None:
        raise Rejected("STEP_NO_REQUIRED", "A STEP-scoped config needs stepNo")
    step = await uow.session.scalar(
        select(RoutingStep).where(RoutingStep.routing_id == routing.id, RoutingStep.step_no == body.step_no)
    )
    if step is None:
        raise NotFound("ROUTE_STEP_NOT_FOUND", f"Routing {routing.code} has no step {body.step_no}")
    return step


def _config_view(c: RouteExecutionConfig) -> dict[str, Any]:
    return {
        k: getattr(c, k)
        for k in (
            "station_type",
            "station_group_id",
            "allowed_station_ids",
            "requires_fai",
            "requires_authorization",
            "data_spec_ids",
            "ingest_mapping",
        )
    }


async def create_config(uow: UnitOfWork, code: str, body: ExecutionConfigIn) -> dict[str, Any]:
    routing = await get_routing_row(uow, code)
    step = await _step(uow, routing, body)
    c = RouteExecutionConfig(
        routing_id=routing.id,
        routing_step_id=step.id if step else None,
        source_step_key=step.source_step_key if step else None,
        allowed_station_ids=[],
        data_spec_ids=[],
        meta={},
    )
    await _apply(uow, c, body, body.model_fields_set)
    uow.session.add(c)
    await uow.session.flush()
    uow.audit(
        c.id,
        f"{routing.code}/{body.scope_type}{'/' + str(body.step_no) if step else ''}",
        entity_type="ROUTING",
        action="ROUTE_EXECUTION_CONFIG_CREATE",
        after=_config_view(c),
    )
    return await _config_out(uow, c)


async def update_config(
    uow: UnitOfWork, code: str, config_id: int, body: ExecutionConfigPatch
) -> dict[str, Any]:
    routing = await get_routing_row(uow, code)
    c = await uow.session.get(RouteExecutionConfig, config_id)
    if c is None or c.routing_id != routing.id:
        raise NotFound("EXECUTION_CONFIG_NOT_FOUND", f"Execution config {config_id} not found on {code}")
    scope = "ROUTE" if c.routing_step_id is None and c.source_step_key is None else "STEP"
    if body.scope_type is not None and body.scope_type not in ("ROUTE", "STEP"):
        raise Rejected("SCOPE_TYPE_INVALID", "scopeType must be ROUTE or STEP")
    if body.scope_type is not None and body.scope_type != scope:
        raise Rejected("EXECUTION_CONFIG_SCOPE_MISMATCH", f"Config {config_id} is {scope}-scoped")
    if body.step_no is not None:
        step_no = await uow.session.scalar(
            select(RoutingStep.step_no).where(RoutingStep.id == c.routing_step_id)
        )
        if step_no != body.step_no:
            raise Rejected("EXECUTION_CONFIG_SCOPE_MISMATCH", f"Config {config_id} belongs to step {step_no}")
    before = _config_view(c)
    await _apply(uow, c, body, body.model_fields_set - {"scope_type", "step_no"})
    await uow.session.flush()
    uow.audit(
        c.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTE_EXECUTION_CONFIG_UPDATE",
        before=before,
        after=_config_view(c),
    )
    return await _config_out(uow, c)


def version_out(v: ExecutableRouteVersion, routing_code: str) -> dict[str, Any]:
    return {
        "id": v.id,
        "routing_code": routing_code,
        "version_no": v.version_no,
        "status": v.status,
        "snapshot": v.snapshot_json,
        "errors": v.errors_json,
        "compiled_at": v.compiled_at,
    }


async def compile_route(uow: UnitOfWork, code: str) -> dict[str, Any]:
    from central.services.compile import compile_routing

    version = await compile_routing(uow, code)
    return version_out(version, code)


async def list_versions(uow: UnitOfWork, code: str) -> list[dict[str, Any]]:
    routing = await get_routing_row(uow, code)
    rows = (
        await uow.session.scalars(
            select(ExecutableRouteVersion)
            .where(ExecutableRouteVersion.routing_id == routing.id)
            .order_by(ExecutableRouteVersion.version_no.desc())
        )
    ).all()
    return [version_out(v, code) for v in rows]


async def get_version(uow: UnitOfWork, code: str, version_no: int) -> dict[str, Any]:
    routing = await get_routing_row(uow, code)
    v = await uow.session.scalar(
        select(ExecutableRouteVersion).where(
            ExecutableRouteVersion.routing_id == routing.id, ExecutableRouteVersion.version_no == version_no
        )
    )
    if v is None:
        raise NotFound("ROUTE_VERSION_NOT_FOUND", f"Routing {code} has no version {version_no}")
    return version_out(v, code)


async def bind_fai_template(uow: UnitOfWork, code: str, body: FaiTemplateBinding) -> dict[str, Any]:
    routing = await get_routing_row(uow, code)
    before = {"faiTemplateId": routing.fai_template_id}
    if body.fai_template_id is not None:
        tpl = await uow.session.get(FaiTemplate, body.fai_template_id)
        if tpl is None:
            raise NotFound("FAI_TEMPLATE_NOT_FOUND", f"FAI template {body.fai_template_id} not found")
        if tpl.product_code and routing.product_code and tpl.product_code != routing.product_code:
            raise Rejected(
                "FAI_TEMPLATE_PRODUCT_MISMATCH",
                f"Template {tpl.code} is for {tpl.product_code}, routing {code} for {routing.product_code}",
            )
    routing.fai_template_id = body.fai_template_id
    await uow.session.flush()
    uow.audit(
        routing.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTE_FAI_TEMPLATE_BIND",
        before=before,
        after={"faiTemplateId": routing.fai_template_id},
    )
    return {"routingCode": routing.code, "faiTemplateId": routing.fai_template_id}
