"""Compile a routing into an immutable executable version (domain.md §2 "Compile")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    DataCollectionSpec,
    ExecutableRouteVersion,
    FaiTemplate,
    FaiTemplateItem,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
)
from central.domain.clock import iso, utcnow
from central.domain.compile import (
    CompileInput,
    CompileResult,
    ExecConfig,
    FaiItemDef,
    FaiTemplateDef,
    RouteHead,
    StepDef,
    compile_route,
)
from central.domain.errors import Conflict, NotFound, Rejected
from central.schemas.base import parse_row_id
from central.services.uow import UnitOfWork


def _int_ids(values: list[Any] | None) -> set[int]:
    out: set[int] = set()
    for v in values or []:
        if isinstance(v, int) and not isinstance(v, bool):
            out.add(v)
        elif isinstance(v, str) and (n := parse_row_id(v.strip())) is not None:
            out.add(n)
    return out


async def load_compile_input(uow: UnitOfWork, routing: Routing) -> CompileInput:
    """Reads everything the pure compile needs: steps, this routing's configs, spec owners, FAI template."""
    s = uow.session
    steps = (
        await s.scalars(
            select(RoutingStep).where(RoutingStep.routing_id == routing.id).order_by(RoutingStep.step_no)
        )
    ).all()
    if not steps:
        raise Rejected("ROUTING_EMPTY", f"Routing {routing.code} has no steps")
    configs = (
        await s.scalars(select(RouteExecutionConfig).where(RouteExecutionConfig.routing_id == routing.id))
    ).all()
    spec_ids: set[int] = set()
    for c in configs:
        spec_ids |= _int_ids(c.data_spec_ids)
    spec_operations = (
        dict(
            (
                await s.execute(
                    select(DataCollectionSpec.id, DataCollectionSpec.operation_id).where(
                        DataCollectionSpec.id.in_(spec_ids)
                    )
                )
            )
            .tuples()
            .all()
        )
        if spec_ids
        else {}
    )
    template = None
    if routing.fai_template_id is not None:
        t = await s.scalar(select(FaiTemplate).where(FaiTemplate.id == routing.fai_template_id))
        if t is not None:
            items = (
                await s.scalars(
                    select(FaiTemplateItem)
                    .where(FaiTemplateItem.template_id == t.id)
                    .order_by(FaiTemplateItem.seq)
                )
            ).all()
            template = FaiTemplateDef(
                id=t.id,
                code=t.code,
                name=t.name,
                product_code=t.product_code,
                process_type=t.process_type,
                version=t.version,
                items=[
                    FaiItemDef(
                        id=i.id, seq=i.seq, item_name=i.item_name, item_spec=i.item_spec, required=i.required
                    )
                    for i in items
                ],
            )
    return CompileInput(
        route=RouteHead(
            code=routing.code, source_system=routing.source_system, source_key=routing.source_key
        ),
        steps=[
            StepDef(
                id=st.id,
                step_no=st.step_no,
                operation_id=st.operation_id,
                station_type=st.station_type,
                station_group_id=st.station_group_id,
                requires_fai=bool(st.requires_fai),
                source_step_key=st.source_step_key,
            )
            for st in steps
        ],
        configs=[
            ExecConfig(
                id=c.id,
                updated_at=c.updated_at,
                routing_step_id=c.routing_step_id,
                source_step_key=c.source_step_key,
                station_type=c.station_type,
                station_group_id=c.station_group_id,
                allowed_station_ids=list(c.allowed_station_ids or []),
                requires_fai=c.requires_fai,
                requires_authorization=c.requires_authorization,
                data_spec_ids=list(c.data_spec_ids or []),
                ingest_mapping=c.ingest_mapping,
            )
            for c in configs
        ],
        spec_operations=spec_operations,
        fai_template=template,
    )


def _same(latest: ExecutableRouteVersion | None, result: CompileResult) -> bool:
    return (
        latest is not None
        and latest.signature == result.signature
        and latest.status == result.status
        and list(latest.errors_json or []) == result.errors
    )


async def compile_routing(uow: UnitOfWork, routing_code: str) -> ExecutableRouteVersion:
    """Deterministic: an unchanged compile returns the latest version; anything else writes versionNo + 1."""
    s = uow.session
    routing = await s.scalar(select(Routing).where(Routing.code == routing_code))
    if routing is None:
        raise NotFound("ROUTE_NOT_FOUND", f"Routing {routing_code} not found")
    result = compile_route(await load_compile_input(uow, routing))
    latest = await s.scalar(
        select(ExecutableRouteVersion)
        .where(ExecutableRouteVersion.routing_id == routing.id)
        .order_by(ExecutableRouteVersion.version_no.desc())
        .limit(1)
    )
    if _same(latest, result):
        assert latest is not None
        uow.audit(
            routing.id,
            routing.code,
            entity_type="ROUTING",
            action="ROUTE_COMPILE",
            payload={"versionNo": latest.version_no, "status": latest.status, "created": False},
        )
        return latest
    version_no = (latest.version_no if latest else 0) + 1
    compiled_at = utcnow()
    version = ExecutableRouteVersion(
        routing_id=routing.id,
        version_no=version_no,
        status=result.status,
        signature=result.signature,
        snapshot_json=result.versioned_snapshot(version_no, iso(compiled_at) or ""),
        errors_json=result.errors,
        compiled_at=compiled_at,
    )
    s.add(version)
    try:
        await s.flush()
    except IntegrityError as exc:
        raise Conflict(
            "ROUTE_COMPILE_CONFLICT", f"Routing {routing_code} was compiled concurrently; compile again"
        ) from exc
    uow.audit(
        routing.id,
        routing.code,
        entity_type="ROUTING",
        action="ROUTE_COMPILE",
        before={"versionNo": latest.version_no, "status": latest.status} if latest else None,
        after={"versionNo": version_no, "status": result.status, "errorCount": len(result.errors)},
        payload={"created": True, "signature": result.signature},
    )
    return version
