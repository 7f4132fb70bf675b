"""Route compile (domain.md §2): merge step config > route config > step, validate, snapshot, signature."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from central.domain.errors import Rejected

READY = "READY"
INVALID = "INVALID"
# Station types whose events arrive through ingest and therefore need an ingestMapping.
INGEST_STATION_TYPES = frozenset({"AUTO", "BATCH", "TEST"})


@dataclass(frozen=True)
class RouteHead:
    code: str
    source_system: str = "MES"
    source_key: str | None = None


@dataclass(frozen=True)
class StepDef:
    """One RoutingStep as stored."""

    id: int
    step_no: int
    operation_id: int
    station_type: str | None = None
    station_group_id: int | None = None
    requires_fai: bool = False
    source_step_key: str | None = None


@dataclass(frozen=True)
class ExecConfig:
    """One RouteExecutionConfig; None (or an empty list/mapping) means "not set here" and falls through."""

    id: int
    updated_at: datetime
    routing_step_id: int | None = None
    source_step_key: str | None = None
    station_type: str | None = None
    station_group_id: int | None = None
    allowed_station_ids: Sequence[Any] = ()
    requires_fai: bool | None = None
    requires_authorization: bool | None = None
    data_spec_ids: Sequence[Any] = ()
    ingest_mapping: Mapping[str, Any] | None = None

    @property
    def is_route_scope(self) -> bool:
        return self.routing_step_id is None and self.source_step_key is None

    def applies_to(self, step: StepDef) -> bool:
        return (self.routing_step_id is not None and self.routing_step_id == step.id) or (
            self.source_step_key is not None and self.source_step_key == step.source_step_key
        )


@dataclass(frozen=True)
class FaiItemDef:
    id: int
    seq: int
    item_name: str
    item_spec: str | None = None
    required: bool = True


@dataclass(frozen=True)
class FaiTemplateDef:
    id: int
    code: str
    name: str
    product_code: str | None = None
    process_type: str | None = None
    version: str | None = None
    items: Sequence[FaiItemDef] = ()


@dataclass(frozen=True)
class CompileInput:
    route: RouteHead
    steps: Sequence[StepDef]
    configs: Sequence[ExecConfig] = ()
    # Every data-collection spec id that exists → its operation id (unknown ids → DATA_SPEC_NOT_FOUND).
    spec_operations: Mapping[int, int] = field(default_factory=dict)
    fai_template: FaiTemplateDef | None = None


@dataclass(frozen=True)
class CompileResult:
    status: str  # READY | INVALID
    snapshot: dict[str, Any]  # {route, steps}; routeVersion is added when a version row is written
    errors: list[dict[str, Any]]
    signature: str  # sha256 hex of the canonical JSON of snapshot + status + errors (no compile time)

    @property
    def ready(self) -> bool:
        return self.status == READY

    def versioned_snapshot(self, version_no: int, compiled_at: str) -> dict[str, Any]:
        """The stored snapshot: `{route, steps, routeVersion{versionNo, compiledAt}}`."""
        return {**self.snapshot, "routeVersion": {"versionNo": version_no, "compiledAt": compiled_at}}


def latest_config(configs: Sequence[ExecConfig]) -> ExecConfig | None:
    """The winning config of one scope: latest updatedAt, ties broken by the highest id."""
    return max(configs, key=lambda c: (c.updated_at, c.id), default=None)


def _first(*values: Any) -> Any:
    """First value that is set: not None, and not an empty list/mapping (False and 0 are set)."""
    for v in values:
        if v is None or (isinstance(v, (list, tuple, Mapping)) and not v):
            continue
        return v
    return None


def _ids(values: Sequence[Any] | None) -> list[Any]:
    """Ids as ints where they look like ints (JSON columns may hold "12"); anything else is kept as is."""
    out: list[Any] = []
    for v in values or ():
        if isinstance(v, str) and v.strip().isdigit():
            out.append(int(v))
        else:
            out.append(v)
    return out


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def signature_of(snapshot: Mapping[str, Any], status: str, errors: Sequence[Mapping[str, Any]]) -> str:
    body = {"snapshot": {k: v for k, v in snapshot.items() if k != "routeVersion"}, "status": status}
    body["errors"] = list(errors)
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _fai_snapshot(t: FaiTemplateDef | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "id": t.id,
        "code": t.code,
        "name": t.name,
        "productCode": t.product_code,
        "processType": t.process_type,
        "version": t.version,
        "items": [
            {
                "id": i.id,
                "seq": i.seq,
                "itemName": i.item_name,
                "itemSpec": i.item_spec,
                "required": i.required,
            }
            for i in sorted(t.items, key=lambda i: (i.seq, i.id))
        ],
    }


def _step_errors(
    snap: Mapping[str, Any], operation_id: int, spec_operations: Mapping[int, int]
) -> list[dict[str, Any]]:
    no = snap["stepNo"]
    errs: list[dict[str, Any]] = []

    def err(code: str, message: str) -> None:
        errs.append({"stepNo": no, "code": code, "message": message})

    if not snap["stationType"]:
        err("STATION_TYPE_MISSING", f"Step {no}: no station type")
    if snap["stationGroupId"] is None and not snap["allowedStationIds"]:
        err("STATION_CONSTRAINT_MISSING", f"Step {no}: needs a station group or allowed stations")
    if snap["stationType"] in INGEST_STATION_TYPES and not snap["ingestMapping"]:
        err("INGEST_MAPPING_MISSING", f"Step {no}: a {snap['stationType']} step needs an ingestMapping")
    spec_ids = snap["dataSpecIds"]
    missing = [i for i in spec_ids if i not in spec_operations]
    if missing:
        err("DATA_SPEC_NOT_FOUND", f"Step {no}: data spec(s) not found: {', '.join(map(str, missing))}")
    foreign = [i for i in spec_ids if i in spec_operations and spec_operations[i] != operation_id]
    if foreign:
        err(
            "DATA_SPEC_OPERATION_MISMATCH",
            f"Step {no}: data spec(s) {', '.join(map(str, foreign))} belong to another operation",
        )
    return errs


def compile_route(inp: CompileInput) -> CompileResult:
    """Merges and validates every step (in stepNo order); INVALID when any step has an error."""
    if not inp.steps:
        raise Rejected("ROUTING_EMPTY", f"Routing {inp.route.code} has no steps")
    route_cfg = latest_config([c for c in inp.configs if c.is_route_scope])
    steps: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for step in sorted(inp.steps, key=lambda s: s.step_no):
        step_cfg = latest_config([c for c in inp.configs if not c.is_route_scope and c.applies_to(step)])
        layers = [c for c in (step_cfg, route_cfg) if c is not None]
        snap = {
            "stepNo": step.step_no,
            "operationId": step.operation_id,
            "stationType": _first(*(c.station_type for c in layers), step.station_type),
            "stationGroupId": _first(*(c.station_group_id for c in layers), step.station_group_id),
            "allowedStationIds": _ids(_first(*(list(c.allowed_station_ids) for c in layers)) or []),
            "requiresFAI": bool(_first(*(c.requires_fai for c in layers), step.requires_fai)),
            "requiresAuthorization": bool(_first(*(c.requires_authorization for c in layers), False)),
            "dataSpecIds": _ids(_first(*(list(c.data_spec_ids) for c in layers)) or []),
            "ingestMapping": _first(*(dict(c.ingest_mapping or {}) for c in layers)),
        }
        steps.append(snap)
        errors.extend(_step_errors(snap, step.operation_id, inp.spec_operations))
    snapshot = {
        "route": {
            "code": inp.route.code,
            "sourceSystem": inp.route.source_system,
            "sourceKey": inp.route.source_key,
            "faiTemplate": _fai_snapshot(inp.fai_template),
        },
        "steps": steps,
    }
    status = READY if not errors else INVALID
    return CompileResult(status, snapshot, errors, signature_of(snapshot, status, errors))
