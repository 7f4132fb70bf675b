"""Data values collected at a step (domain.md §4.2 step 5): which specs apply, type checks, judging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from central.db.models import DataCollectionSpec
from central.domain import route
from central.domain.errors import Rejected
from central.services.uow import UnitOfWork

VALUE_FIELDS = {
    "NUMBER": "value_number",
    "TEXT": "value_text",
    "BOOLEAN": "value_boolean",
    "JSON": "value_json",
}


@dataclass(frozen=True)
class Value:
    spec: DataCollectionSpec
    number: float | None = None
    text: str | None = None
    boolean: bool | None = None
    json: Any = None

    @property
    def judge(self) -> str | None:
        """Ours: NUMBER values are judged against min/max (else lsl/usl); other types stay unjudged."""
        limits = self.spec.spec or {}
        if self.spec.data_type != "NUMBER" or self.number is None:
            return None
        low = limits.get("min", limits.get("lsl"))
        high = limits.get("max", limits.get("usl"))
        if low is None and high is None:
            return None
        ok = (low is None or self.number >= float(low)) and (high is None or self.number <= float(high))
        return "PASS" if ok else "FAIL"


async def specs_for_step(uow: UnitOfWork, step: route.Step) -> tuple[list[DataCollectionSpec], bool]:
    """→ (allowed specs, bound?). Bound: the step's dataSpecIds (a missing id is an error; inactive ignored).
    Unbound: the active specs of the step's operation."""
    ids = [int(i) for i in step.get("dataSpecIds") or []]
    memo = uow.memo  # a batch of equipment events reads each step's specs once
    key = ("specs", tuple(ids), step.get("operationId"), step.get("stepNo"))
    if memo is not None and key in memo:
        return memo[key]  # type: ignore[no-any-return]
    found = await _specs_for_step(uow, step, ids)
    if memo is not None:
        memo[key] = found
    return found


async def _specs_for_step(
    uow: UnitOfWork, step: route.Step, ids: list[int]
) -> tuple[list[DataCollectionSpec], bool]:
    s = uow.session
    if ids:
        rows = {
            r.id: r
            for r in (await s.scalars(select(DataCollectionSpec).where(DataCollectionSpec.id.in_(ids)))).all()
        }
        missing = [i for i in ids if i not in rows]
        if missing:
            raise Rejected(
                "DATA_SPEC_NOT_FOUND", f"Data spec(s) {missing} bound to step {step['stepNo']} do not exist"
            )
        return [rows[i] for i in ids if rows[i].is_active], True
    rows = (
        await s.scalars(
            select(DataCollectionSpec).where(
                DataCollectionSpec.operation_id == step.get("operationId"),
                DataCollectionSpec.is_active.is_(True),
            )
        )
    ).all()
    return list(rows), False


def parse_values(items: list[dict[str, Any]], specs: list[DataCollectionSpec]) -> list[Value]:
    """items: [{specName, valueNumber|valueText|valueBoolean|valueJson}] → typed values, or a refusal."""
    by_name = {sp.name: sp for sp in specs}
    out: list[Value] = []
    for item in items:
        name = item.get("spec_name")
        spec = by_name.get(name or "")
        if spec is None:
            raise Rejected("DATA_SPEC_NOT_FOUND", f"No data spec {name!r} applies to this step")
        field = VALUE_FIELDS.get(spec.data_type)
        value = item.get(field) if field else None
        others = [f for f in VALUE_FIELDS.values() if f != field and item.get(f) is not None]
        if value is None or others or not _type_ok(spec.data_type, value):
            raise Rejected(
                "DATA_VALUE_INVALID",
                f"Spec {name} is {spec.data_type}: give {_camel(field or '?')} (and nothing else)",
            )
        out.append(Value(spec=spec, **{field.removeprefix("value_"): value}))  # type: ignore[union-attr]
    return out


def _type_ok(data_type: str, value: Any) -> bool:
    if data_type == "NUMBER":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if data_type == "TEXT":
        return isinstance(value, str)
    if data_type == "BOOLEAN":
        return isinstance(value, bool)
    return True


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(p.capitalize() for p in rest)


def missing_required(specs: list[DataCollectionSpec], values: list[Value]) -> list[str]:
    given = {v.spec.id for v in values}
    return [sp.name for sp in specs if sp.is_required and sp.id not in given]
