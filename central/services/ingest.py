"""Equipment ingest `POST /ingest/events` (domain.md §4.3): dedupe, run, mapping, normalise, then the
AUTO/TEST or BATCH writes. A rejected event writes nothing (the whole transaction rolls back), so a fixed
resend with the same dedupeKey is evaluated again.

`ingest_event(uow, body)` is the one entry point: REST handlers and the MQTT consumer (one savepoint per edge
event) call it alike.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import ExecutableRouteVersion, IngestEvent, Run, Unit
from central.domain import ingest_mapping as im
from central.domain import route
from central.domain.clock import utcnow
from central.domain.errors import MesError, NotFound, Rejected
from central.schemas.ingest import BatchEventIn, EquipmentEventIn, IngestEventIn, TestResultIn
from central.services import ingest_batch, ingest_unit
from central.services.ingest_common import ACTION, Event, not_future
from central.services.uow import UnitOfWork


async def ingest_event(uow: UnitOfWork, body: IngestEventIn, *, canonical: bool = False) -> dict[str, Any]:
    """Apply one equipment event once. → {event_id, duplicate, status: "RECEIVED"}.

    `canonical`: the payload has the canonical shape of the typed endpoints, so it is read at the canonical
    paths whatever the step's mapping says (its value lists, dataSpecMap and batchPolicy still apply)."""
    try:
        return await _ingest(uow, body, canonical)
    except MesError as exc:
        # domain.md §4.3: every not-found code is 404 here, also those shared helpers answer with 400
        # (DATA_SPEC_NOT_FOUND of the data-collection rules).
        if exc.code.endswith("_NOT_FOUND") and exc.status != 404:
            raise NotFound(exc.code, exc.message, details=exc.details) from exc
        raise


async def _ingest(uow: UnitOfWork, body: IngestEventIn, canonical: bool) -> dict[str, Any]:
    s = uow.session
    original = await _original(uow, body)  # 1. dedupe
    if original is not None:
        return _duplicate(uow, original, body)
    occurred_at = event_time(body.occurred_at)  # 2.
    row = claim_row(body, occurred_at)
    # Claim the key before anything else: an identical event applied concurrently waits on the unique index
    # here and, once this transaction commits, answers duplicate; if this one is refused the claim rolls back.
    try:
        async with s.begin_nested():
            s.add(row)
            await s.flush()
    except IntegrityError:
        original = await _original(uow, body)
        if original is None:
            raise
        return _duplicate(uow, original, body)
    ev = await event(uow, body, row, occurred_at, canonical)
    if body.event_type == "BATCH":  # 7.
        await ingest_batch.apply(uow, ev)
    else:  # 6.
        await ingest_unit.apply(uow, ev)
    return received(row)


def received(row: IngestEvent) -> dict[str, Any]:
    return {"event_id": row.id, "duplicate": False, "status": "RECEIVED"}


def claim_row(body: IngestEventIn, occurred_at: datetime) -> IngestEvent:
    if not isinstance(body.payload, dict):
        raise Rejected(im.PAYLOAD_INVALID, "payload must be a JSON object")
    return IngestEvent(
        source_system=body.source_system,
        dedupe_key=body.dedupe_key,
        event_type=body.event_type,
        occurred_at=occurred_at,
        received_at=utcnow(),
        payload=body.payload,
        meta={},
    )


async def event(
    uow: UnitOfWork, body: IngestEventIn, row: IngestEvent, occurred_at: datetime, canonical: bool
) -> Event:
    """Steps 3–5 for a claimed event: its run, frozen version, mapping and normalised reading."""
    run = await _run(uow, body)  # 3.
    version = await _version(uow, run)
    memo, key = uow.memo, ("mapping", version.id, body.event_type, canonical)
    if memo is not None and key in memo:  # a batch parses each route's mapping once
        step_no, mapping = memo[key]
    else:
        step_no, mapping = _mapping(version, body.event_type, canonical)  # 4.
        if memo is not None:
            memo[key] = step_no, mapping
    norm = im.normalize(body.payload, mapping)  # 5.
    im.require(norm, body.event_type)
    if norm.occurred_at is not None:  # the machine's own timestamp inside the payload wins
        occurred_at = not_future(norm.occurred_at)
    return Event(body, row, run, version, mapping, norm, occurred_at, step_no, canonical)


async def _original(uow: UnitOfWork, body: IngestEventIn) -> IngestEvent | None:
    row: IngestEvent | None = await uow.session.scalar(
        select(IngestEvent).where(
            IngestEvent.source_system == body.source_system, IngestEvent.dedupe_key == body.dedupe_key
        )
    )
    return row


def _duplicate(uow: UnitOfWork, original: IngestEvent, body: IngestEventIn) -> dict[str, Any]:
    uow.audit(
        original.id,
        f"{original.source_system}:{original.dedupe_key}",
        entity_type="INTEGRATION",
        action=ACTION,
        payload={"sourceSystem": body.source_system, "dedupeKey": body.dedupe_key, "duplicate": True},
    )
    return {"event_id": original.id, "duplicate": True, "status": "RECEIVED"}


def event_time(value: Any) -> datetime:
    if value is None:
        raise Rejected(im.PAYLOAD_INVALID, "occurredAt is required")
    return not_future(im.parse_time(value))


async def _run(uow: UnitOfWork, body: IngestEventIn) -> Run:
    """runNo, else the run of top-level payload.sn, else the one run of payload.snList (§4.3 step 3)."""
    s = uow.session
    if body.run_no:
        run = await s.scalar(select(Run).where(Run.run_no == body.run_no))
        if run is None:
            raise NotFound("RUN_NOT_FOUND", f"Run {body.run_no} not found")
        return run
    payload: dict[str, Any] = body.payload
    sn, sn_list = payload.get("sn"), payload.get("snList")
    if isinstance(sn, str) and sn.strip():
        memo = uow.memo  # a batch loaded its units (and their runs) at once
        unit = memo.get(("unit", sn.strip())) if memo is not None else None
        run_id = (
            unit.run_id
            if unit is not None
            else await s.scalar(select(Unit.run_id).where(Unit.sn == sn.strip()))
        )
        if run_id is None:
            raise NotFound("UNIT_RUN_NOT_FOUND", f"Unit {sn} is unknown or belongs to no run")
        return await _get_run(uow, run_id)
    if isinstance(sn_list, list) and sn_list and all(isinstance(x, str) for x in sn_list):
        sns = {x.strip() for x in sn_list}
        found = dict((await s.execute(select(Unit.sn, Unit.run_id).where(Unit.sn.in_(sns)))).tuples().all())
        orphans = sorted(x for x in sns if found.get(x) is None)
        if orphans:
            raise NotFound(
                "UNIT_RUN_NOT_FOUND",
                f"Unit(s) {', '.join(orphans)} are unknown or belong to no run",
                details={"sns": orphans},
            )
        run_ids = {found[x] for x in sns}
        if len(run_ids) > 1:
            raise Rejected("RUN_MISMATCH", "The listed units belong to more than one run")
        return await _get_run(uow, run_ids.pop())
    raise NotFound("UNIT_RUN_NOT_FOUND", "Give runNo, or payload.sn / payload.snList of units of a run")


async def _get_run(uow: UnitOfWork, run_id: int) -> Run:
    memo = uow.memo  # a batch loaded its runs at once
    run = memo.get(("run", run_id)) if memo is not None else None
    if run is None:
        run = await uow.session.get(Run, run_id)
    assert run is not None  # units reference runs through a foreign key
    return run


async def _version(uow: UnitOfWork, run: Run) -> ExecutableRouteVersion:
    memo = uow.memo
    version = memo.get(("version", run.route_version_id)) if memo is not None else None
    if version is None and run.route_version_id:
        version = await uow.session.get(ExecutableRouteVersion, run.route_version_id)
    if version is None or version.status != "READY":
        raise Rejected("ROUTE_VERSION_NOT_READY", f"Run {run.run_no} has no READY route version")
    return version


def _mapping(version: ExecutableRouteVersion, event_type: str, canonical: bool) -> tuple[int, im.Mapping]:
    """The ingestMapping of the first step of the event's type (domain.md §4.3 step 4)."""
    steps = route.steps(version.snapshot_json)
    step = next((st for st in steps if st.get("stationType") == event_type), None)
    raw = step.get("ingestMapping") if step else None
    if step is None or not raw:
        raise Rejected(
            "INGEST_MAPPING_MISSING", f"The run's route has no {event_type} step with an ingestMapping"
        )
    mapping = im.Mapping.parse(raw)
    if mapping.event_type is not None and mapping.event_type != event_type:
        raise Rejected(
            "INGEST_MAPPING_MISSING",
            f"The first {event_type} step's ingestMapping is for {mapping.event_type} events",
        )
    return int(step["stepNo"]), mapping.canonical() if canonical else mapping


# ---- the typed forms of the seed contract ----------------------------------------------------------------

Typed = EquipmentEventIn | TestResultIn | BatchEventIn
DEFAULT_SOURCES = {"AUTO": "EQUIPMENT", "TEST": "TESTER", "BATCH": "BATCH"}
_PRINTABLE = re.compile(r"[\x21-\x7E][\x20-\x7E]*")


async def ingest_typed(uow: UnitOfWork, event_type: str, body: Typed) -> dict[str, Any]:
    """`/ingest/equipment/events`, `/ingest/test/results`, `/ingest/batch/events`: the same service, fed a
    canonical payload."""
    return await ingest_event(uow, to_generic(event_type, body), canonical=True)


def to_generic(event_type: str, body: Typed) -> IngestEventIn:
    payload: dict[str, Any] = {
        "stationCode": body.station_code,
        "result": body.result,
        "type": body.type,
        "measurements": _typed_measurements(body),
    }
    if isinstance(body, BatchEventIn):
        payload |= {"carrierCode": body.carrier_no, "snList": body.sns}
    else:
        payload["sn"] = body.sn
    if isinstance(body, TestResultIn):
        payload["testResultId"] = body.test_result_id
    payload = {k: v for k, v in payload.items() if v is not None}
    return IngestEventIn(
        dedupe_key=body.dedupe_key or _derived_key(event_type, body),
        source_system=body.source_system or DEFAULT_SOURCES[event_type],
        event_type=event_type,  # type: ignore[arg-type]
        occurred_at=body.occurred_at if body.occurred_at is not None else utcnow(),
        run_no=body.run_no,
        payload=payload,
        meta=body.meta,
    )


def _derived_key(event_type: str, body: Typed) -> str:
    """TEST: the tester's record id. Otherwise a digest of the content: an identical resend is a duplicate."""
    if isinstance(body, TestResultIn) and body.test_result_id:
        key = f"test:{body.test_result_id}"
        # The record id is free text; a key must be printable ASCII, so any other id is keyed by its digest.
        if _PRINTABLE.fullmatch(key):
            return key
        return f"test:sha256:{hashlib.sha256(body.test_result_id.encode()).hexdigest()}"
    content = orjson.dumps(
        body.model_dump(mode="json", by_alias=True, exclude_none=True), option=orjson.OPT_SORT_KEYS
    )
    return f"{event_type.lower()}:sha256:{hashlib.sha256(content).hexdigest()}"


def _typed_measurements(body: Typed) -> list[dict[str, Any]] | None:
    items: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in (body.data or {}).items()]
    for m in body.measurements or []:
        judge = m.judge
        if judge is None and isinstance(m.value, int | float) and not isinstance(m.value, bool):
            judge = im.judge_limits(float(m.value), m.min, m.max)  # a tester that sends limits, not a verdict
        items.append({"name": m.name, "value": m.value, "unit": m.unit, "judge": judge})
    return items or None
