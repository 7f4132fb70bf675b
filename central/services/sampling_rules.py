"""OQC sampling rules, domain.md §7.3 (`quality:oqc`): list, create, read, update, deactivate.

Selection and sample size live with the close-out (`closeout.select_rule`, `closeout.sample_size`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.models import Line, OqcSamplingRule, Routing
from central.domain.errors import NotFound, Rejected
from central.schemas.oqc import SamplingRuleCreate, SamplingRuleQuery, SamplingRuleUpdate
from central.services.listing import paginate
from central.services.uow import UnitOfWork

ENTITY = "SYSTEM_CONFIG"


def check_value(sampling_type: str, value: float) -> None:
    """PERCENTAGE 0–100, FIXED ≥ 1, else INVALID_SAMPLE_VALUE."""
    ok = 0 <= value <= 100 if sampling_type == "PERCENTAGE" else value >= 1
    if not ok:
        rng = "between 0 and 100" if sampling_type == "PERCENTAGE" else "at least 1"
        raise Rejected("INVALID_SAMPLE_VALUE", f"A {sampling_type} sampleValue must be {rng} (got {value:g})")


async def _line_id(uow: UnitOfWork, code: str | None, ident: int | None) -> int | None:
    if code is None and ident is None:
        return None
    where = Line.code == code if code is not None else Line.id == ident
    found = await uow.session.scalar(select(Line.id).where(where))
    if found is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {code if code is not None else ident} not found")
    return found


async def _routing_id(uow: UnitOfWork, code: str | None, ident: int | None) -> int | None:
    if code is None and ident is None:
        return None
    where = Routing.code == code if code is not None else Routing.id == ident
    found = await uow.session.scalar(select(Routing.id).where(where))
    if found is None:
        raise NotFound("ROUTING_NOT_FOUND", f"Routing {code if code is not None else ident} not found")
    return found


async def rule_out(uow: UnitOfWork, rule: OqcSamplingRule) -> dict[str, Any]:
    s = uow.session
    line = await s.scalar(select(Line.code).where(Line.id == rule.line_id)) if rule.line_id else None
    routing = (
        await s.scalar(select(Routing.code).where(Routing.id == rule.routing_id)) if rule.routing_id else None
    )
    return {
        **{
            c: getattr(rule, c)
            for c in (
                "id product_code line_id routing_id sampling_type sample_value priority is_active "
                "created_at updated_at"
            ).split()
        },
        "line_code": line,
        "routing_code": routing,
        "specificity": sum(x is not None for x in (rule.product_code, rule.line_id, rule.routing_id)),
    }


def _view(rule: OqcSamplingRule) -> dict[str, Any]:
    return {
        "productCode": rule.product_code,
        "lineId": rule.line_id,
        "routingId": rule.routing_id,
        "samplingType": rule.sampling_type,
        "sampleValue": rule.sample_value,
        "priority": rule.priority,
        "isActive": rule.is_active,
    }


async def get_rule(uow: UnitOfWork, rule_id: int, *, lock: bool = False) -> OqcSamplingRule:
    rule = await uow.session.get(OqcSamplingRule, rule_id, with_for_update=lock or None)
    if rule is None:
        raise NotFound("SAMPLING_RULE_NOT_FOUND", f"Sampling rule {rule_id} not found")
    return rule


async def list_rules(uow: UnitOfWork, q: SamplingRuleQuery) -> dict[str, Any]:
    stmt = select(OqcSamplingRule)
    if q.product_code:
        stmt = stmt.where(OqcSamplingRule.product_code == q.product_code)
    if q.line_code:
        stmt = stmt.where(OqcSamplingRule.line_id.in_(select(Line.id).where(Line.code == q.line_code)))
    if q.routing_code:
        stmt = stmt.where(
            OqcSamplingRule.routing_id.in_(select(Routing.id).where(Routing.code == q.routing_code))
        )
    if q.is_active is not None:
        stmt = stmt.where(OqcSamplingRule.is_active.is_(q.is_active))
    page = await paginate(
        uow.session,
        stmt,
        q,
        search=[OqcSamplingRule.product_code],
        sort_fields={
            "createdAt": OqcSamplingRule.created_at,
            "priority": OqcSamplingRule.priority,
            "productCode": OqcSamplingRule.product_code,
            "samplingType": OqcSamplingRule.sampling_type,
        },
    )
    page["items"] = [await rule_out(uow, r) for r in page["items"]]
    return page


async def read_rule(uow: UnitOfWork, rule_id: int) -> dict[str, Any]:
    return await rule_out(uow, await get_rule(uow, rule_id))


async def create_rule(uow: UnitOfWork, body: SamplingRuleCreate) -> dict[str, Any]:
    """Guards: LINE_NOT_FOUND → ROUTING_NOT_FOUND → INVALID_SAMPLE_VALUE."""
    line_id = await _line_id(uow, body.line_code, body.line_id)
    routing_id = await _routing_id(uow, body.routing_code, body.routing_id)
    check_value(body.sampling_type, body.sample_value)
    rule = OqcSamplingRule(
        product_code=body.product_code,
        line_id=line_id,
        routing_id=routing_id,
        sampling_type=body.sampling_type,
        sample_value=body.sample_value,
        priority=body.priority,
        is_active=body.is_active,
        meta={},
    )
    uow.session.add(rule)
    await uow.session.flush()
    out = await rule_out(uow, rule)
    uow.audit(rule.id, _display(out), entity_type=ENTITY, action="SAMPLING_RULE_CREATE", after=_view(rule))
    return out


async def update_rule(uow: UnitOfWork, rule_id: int, body: SamplingRuleUpdate) -> dict[str, Any]:
    rule = await get_rule(uow, rule_id, lock=True)
    sent = body.model_fields_set
    before = _view(rule)
    if {"line_code", "line_id"} & sent:
        rule.line_id = await _line_id(uow, body.line_code, body.line_id)
    if {"routing_code", "routing_id"} & sent:
        rule.routing_id = await _routing_id(uow, body.routing_code, body.routing_id)
    if "product_code" in sent:
        rule.product_code = body.product_code
    new_type = body.sampling_type or rule.sampling_type
    new_value = rule.sample_value if body.sample_value is None else body.sample_value
    check_value(new_type, new_value)
    rule.sampling_type, rule.sample_value = new_type, new_value
    if body.priority is not None:
        rule.priority = body.priority
    if body.is_active is not None:
        rule.is_active = body.is_active
    await uow.session.flush()
    out = await rule_out(uow, rule)
    uow.audit(
        rule.id,
        _display(out),
        entity_type=ENTITY,
        action="SAMPLING_RULE_UPDATE",
        before=before,
        after=_view(rule),
    )
    return out


async def deactivate_rule(uow: UnitOfWork, rule_id: int) -> dict[str, Any]:
    """DELETE deactivates (history of OQCs keeps pointing at the rule); repeating it is a no-op."""
    rule = await get_rule(uow, rule_id, lock=True)
    before = _view(rule)
    rule.is_active = False
    await uow.session.flush()
    out = await rule_out(uow, rule)
    uow.audit(
        rule.id,
        _display(out),
        entity_type=ENTITY,
        action="SAMPLING_RULE_DELETE",
        before=before,
        after=_view(rule),
    )
    return out


def _display(out: dict[str, Any]) -> str:
    scope = "/".join(str(out[k] or "*") for k in ("product_code", "line_code", "routing_code"))
    return f"OQC rule {scope}"
