"""Outbound ERP completion feedback through the transactional outbox (domain.md §9 Push, §3 MesEvent).

A terminal run becomes one `OUTBOUND_FEEDBACK` MesEvent whose payload is the `RUN_COMPLETION_V1` message,
written in the business transaction. The delivery worker (central/integration/outbound_worker.py) claims due
events here, POSTs them outside any transaction, and records each attempt here: event state + one
IntegrationMessage.

Re-enqueueing a run finds the same event (unique idempotency key) and changes nothing: the payload is frozen
at the first enqueue because every attempt must carry the same body under the same Idempotency-Key, a
delivered event is never sent again, and a dead letter stays dead until the retry endpoint revives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    ExecutableRouteVersion,
    IntegrationMessage,
    Line,
    MesEvent,
    Routing,
    Run,
    Unit,
    WorkOrder,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, NotFound
from central.domain.states import MES_EVENT, RUN_TERMINAL
from central.schemas.outbound import OutboundEventQuery
from central.services.listing import split_csv
from central.services.uow import UnitOfWork
from shared.backoff import Backoff

EVENT_TYPE = "OUTBOUND_FEEDBACK"
TARGET_SYSTEM = "ERP"
MESSAGE_TYPE = "RUN_COMPLETION_V1"
LOG_ENTITY_TYPE = "RUN_COMPLETION"  # IntegrationMessage.entityType of each delivery attempt
RETENTION = timedelta(days=180)
DEFAULT_MAX_ATTEMPTS = 50
# A candidate can be taken by another worker between select and claim; try the next one a few times.
_CLAIM_TRIES = 5


def idempotency_key(run_no: str) -> str:
    return f"mes-event:{EVENT_TYPE}:{TARGET_SYSTEM}:{MESSAGE_TYPE}:{run_no}"


# ---- the message and the enqueue ------------------------------------------------------------------------


async def _unit_stats(uow: UnitOfWork, run: Run) -> dict[str, int]:
    rows = await uow.session.execute(
        select(Unit.status, func.count()).where(Unit.run_id == run.id).group_by(Unit.status)
    )
    return {status: int(n) for status, n in sorted(rows.all())}


async def build_run_completion(uow: UnitOfWork, run: Run) -> dict[str, Any]:
    """The RUN_COMPLETION_V1 message of a run (domain.md §9), as sent to the ERP."""
    s = uow.session
    wo = await s.get(WorkOrder, run.wo_id)
    assert wo is not None  # runs.wo_id is a RESTRICT foreign key
    line = await s.get(Line, run.line_id)
    version = await s.get(ExecutableRouteVersion, run.route_version_id) if run.route_version_id else None
    routing = await s.get(Routing, version.routing_id) if version else None
    unit_stats = await _unit_stats(uow, run)
    return {
        "schemaVersion": 1,
        "idempotencyKey": idempotency_key(run.run_no),
        "targetSystem": TARGET_SYSTEM,
        "messageType": MESSAGE_TYPE,
        "occurredAt": iso(run.ended_at or run.updated_at),
        "businessKey": {
            "runNo": run.run_no,
            "woNo": wo.wo_no,
            "productCode": wo.product_code,
            "lineCode": line.code if line else None,
        },
        "data": {
            "run": {
                "runNo": run.run_no,
                "status": run.status,
                "planQty": run.plan_qty,
                "startedAt": iso(run.started_at),
                "endedAt": iso(run.ended_at),
            },
            "route": {
                "code": routing.code if routing else None,
                "sourceSystem": routing.source_system if routing else "MES",
                "sourceKey": routing.source_key if routing else None,
                "routeVersionId": version.id if version else None,
                "routeVersionNo": version.version_no if version else None,
                "routeVersionCompiledAt": iso(version.compiled_at) if version else None,
            },
            "stats": {
                "unitStats": unit_stats,
                "goodQty": unit_stats.get("DONE", 0),
                "scrapQty": unit_stats.get("SCRAPPED", 0),
            },
        },
    }


async def _by_key(uow: UnitOfWork, key: str) -> MesEvent | None:
    row: MesEvent | None = await uow.session.scalar(select(MesEvent).where(MesEvent.idempotency_key == key))
    return row


async def enqueue_run_completion(uow: UnitOfWork, run: Run) -> tuple[MesEvent, bool]:
    """The run's feedback event, created PENDING if new. → (event, created). The caller checked the run is
    terminal; an existing event (any status) is returned unchanged."""
    key = idempotency_key(run.run_no)
    existing = await _by_key(uow, key)
    if existing is not None:
        return existing, False
    payload = await build_run_completion(uow, run)
    now = utcnow()
    settings = uow.settings
    row = MesEvent(
        event_type=EVENT_TYPE,
        status="PENDING",
        attempts=0,
        max_attempts=settings.outbound_max_attempts if settings else DEFAULT_MAX_ATTEMPTS,
        next_attempt_at=now,
        occurred_at=run.ended_at or run.updated_at or now,
        idempotency_key=key,
        entity_type="RUN",
        entity_id=run.run_no,
        run_id=run.id,
        payload=payload,
        retention_until=now + RETENTION,
    )
    s = uow.session
    try:
        async with s.begin_nested():  # a concurrent enqueue of the same run loses only this savepoint
            s.add(row)
            await s.flush()
    except IntegrityError:
        existing = await _by_key(uow, key)
        if existing is None:
            raise
        return existing, False
    return row, True


async def enqueue_completion(uow: UnitOfWork, run_no: str) -> dict[str, Any]:
    """Manual enqueue (POST …/runs/:runNo/completion): 404 RUN_NOT_FOUND, 409 RUN_NOT_TERMINAL."""
    run = await uow.session.scalar(select(Run).where(Run.run_no == run_no))
    if run is None:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    if run.status not in RUN_TERMINAL:
        raise Conflict(
            "RUN_NOT_TERMINAL",
            f"Run {run_no} is {run.status}; only COMPLETED, CLOSED_REWORK or SCRAPPED runs are reported",
        )
    event, created = await enqueue_run_completion(uow, run)
    uow.audit(
        event.id,
        run.run_no,
        entity_type="INTEGRATION",
        action="OUTBOUND_ERP_RUN_COMPLETION_ENQUEUE",
        after={"eventId": event.id, "idempotencyKey": event.idempotency_key, "status": event.status},
        payload={"runNo": run.run_no, "created": created},
    )
    return {"event_id": event.id, "idempotency_key": event.idempotency_key, "status": event.status}


# ---- reads and the retry endpoint ------------------------------------------------------------------------


def event_out(row: MesEvent) -> dict[str, Any]:
    return {
        "event_id": row.id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "next_attempt_at": row.next_attempt_at,
        "claimed_at": row.claimed_at,
        "processed_at": row.processed_at,
        "occurred_at": row.occurred_at,
        "idempotency_key": row.idempotency_key,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "run_id": row.run_id,
        "error": row.error,
        "payload": row.payload or {},
        "retention_until": row.retention_until,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "dead_letter": row.status == "FAILED" and row.next_attempt_at is None,
    }


async def list_events(uow: UnitOfWork, q: OutboundEventQuery) -> dict[str, Any]:
    """Newest first, at most `limit`."""
    stmt = select(MesEvent).where(MesEvent.event_type == EVENT_TYPE)
    statuses = split_csv(q.status)
    if statuses:
        stmt = stmt.where(MesEvent.status.in_(statuses))
    rows = await uow.session.scalars(
        stmt.order_by(MesEvent.created_at.desc(), MesEvent.id.desc()).limit(q.limit)
    )
    return {"items": [event_out(r) for r in rows]}


async def retry_event(uow: UnitOfWork, event_id: int) -> dict[str, Any]:
    """FAILED (dead or waiting) or PENDING → PENDING, attempts 0, due now. 404 EVENT_NOT_FOUND; an event
    being delivered or already delivered → 409 EVENT_NOT_RETRYABLE."""
    row = await uow.session.scalar(
        select(MesEvent).where(MesEvent.id == event_id, MesEvent.event_type == EVENT_TYPE).with_for_update()
    )
    if row is None:
        raise NotFound("EVENT_NOT_FOUND", f"Outbound event {event_id} not found")
    if not MES_EVENT.allows(row.status, "retry"):
        raise Conflict(
            "EVENT_NOT_RETRYABLE",
            f"Outbound event {event_id} is {row.status}; only PENDING or FAILED events can be retried",
        )
    before = {"status": row.status, "attempts": row.attempts, "nextAttemptAt": iso(row.next_attempt_at)}
    MES_EVENT.apply(row, "retry")
    row.attempts = 0
    row.next_attempt_at = utcnow()
    row.claimed_at = None
    row.error = None
    uow.audit(
        row.id,
        row.entity_id,
        entity_type="INTEGRATION",
        action="OUTBOUND_EVENT_RETRY",
        before=before,
        after={"status": row.status, "attempts": row.attempts, "nextAttemptAt": iso(row.next_attempt_at)},
    )
    return {"event_id": row.id, "status": row.status, "next_attempt_at": row.next_attempt_at}


# ---- what the delivery worker does in the database ---------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """An event this worker holds (status PROCESSING, claimed_at = `claimed_at`) while it delivers it."""

    event_id: int
    idempotency_key: str
    payload: dict[str, Any]
    business_key: str | None
    attempts: int  # attempts made before this one
    claimed_at: datetime
    reclaimed: bool = False  # taken back from a worker that left it in PROCESSING


@dataclass(frozen=True)
class Attempt:
    """What one HTTP delivery attempt gave."""

    ok: bool
    url: str
    http_status: int | None
    error: str | None
    duration_ms: int


def _due(now: datetime, stale_before: datetime) -> Any:
    return or_(
        and_(
            MesEvent.status == "PENDING",
            or_(MesEvent.next_attempt_at.is_(None), MesEvent.next_attempt_at <= now),
        ),
        # FAILED with no next attempt is a dead letter: never due.
        and_(
            MesEvent.status == "FAILED",
            MesEvent.next_attempt_at <= now,
            MesEvent.attempts < MesEvent.max_attempts,
        ),
        # Left in PROCESSING by a worker that crashed or lost its database mid-delivery.
        and_(MesEvent.status == "PROCESSING", MesEvent.claimed_at < stale_before),
    )


async def claim_next(uow: UnitOfWork, now: datetime, stale_before: datetime) -> Claim | None:
    """Takes the oldest due outbound event with a compare-and-set on (status, claimed_at) → PROCESSING."""
    s = uow.session
    for _ in range(_CLAIM_TRIES):
        candidate = (
            await s.execute(
                select(MesEvent.id, MesEvent.status, MesEvent.claimed_at)
                .where(MesEvent.event_type == EVENT_TYPE, _due(now, stale_before))
                .order_by(MesEvent.id)
                .limit(1)
                # PostgreSQL: concurrent workers skip each other's candidates instead of queueing on them.
                .with_for_update(skip_locked=True)
            )
        ).first()
        if candidate is None:
            return None
        action = "reclaim" if candidate.status == "PROCESSING" else "claim"
        same_claim = (
            MesEvent.claimed_at.is_(None)
            if candidate.claimed_at is None
            else MesEvent.claimed_at == candidate.claimed_at
        )
        result = await s.execute(
            update(MesEvent)
            .where(MesEvent.id == candidate.id, MesEvent.status == candidate.status, same_claim)
            .values(status=MES_EVENT.target(candidate.status, action), claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            continue
        cols = (MesEvent.idempotency_key, MesEvent.payload, MesEvent.entity_id, MesEvent.attempts)
        row = (await s.execute(select(*cols).where(MesEvent.id == candidate.id))).one()
        return Claim(
            event_id=candidate.id,
            idempotency_key=row.idempotency_key,
            payload=row.payload or {},
            business_key=row.entity_id,
            attempts=row.attempts,
            claimed_at=now,
            reclaimed=action == "reclaim",
        )
    return None


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds before attempt `attempts + 1`: ≤ min(cap, base·2^(attempts−1)) (domain.md §3), jittered so
    events failed together do not all retry in the same second."""
    return Backoff(base=base, cap=cap, attempt=max(0, attempts - 1)).next_delay()


async def record_attempt(
    uow: UnitOfWork,
    claim: Claim,
    attempt: Attempt,
    now: datetime,
    *,
    backoff_base: float,
    backoff_max: float,
) -> str:
    """Event state after one attempt + its IntegrationMessage. Returns the event's new status, or "FENCED"
    when another worker took the event back meanwhile (its state is then left to that worker)."""
    s = uow.session
    row = await s.scalar(select(MesEvent).where(MesEvent.id == claim.event_id).with_for_update())
    fenced = row is None or row.status != "PROCESSING" or row.claimed_at != claim.claimed_at
    number = claim.attempts + 1
    if row is None or fenced:
        outcome, log_status = "FENCED", "SUCCESS" if attempt.ok else "FAILED"
    else:
        row.attempts = number = row.attempts + 1
        row.claimed_at = None
        if attempt.ok:
            MES_EVENT.apply(row, "succeed")
            row.processed_at, row.next_attempt_at, row.error = now, None, None
            log_status = "SUCCESS"
        else:
            MES_EVENT.apply(row, "fail")
            row.error = attempt.error
            if row.attempts >= row.max_attempts:
                row.next_attempt_at, log_status = None, "FAILED"  # dead letter
            else:
                delay = retry_delay(row.attempts, backoff_base, backoff_max)
                row.next_attempt_at, log_status = now + timedelta(seconds=delay), "RETRYING"
        outcome = row.status
    s.add(
        IntegrationMessage(
            direction="OUT",
            system=TARGET_SYSTEM,
            entity_type=LOG_ENTITY_TYPE,
            business_key=claim.business_key,
            dedupe_key=claim.idempotency_key,
            status=log_status,
            payload=claim.payload,
            error=attempt.error,
            meta={
                "eventId": claim.event_id,
                "attempt": number,
                "url": attempt.url,
                "httpStatus": attempt.http_status,
                "durationMs": attempt.duration_ms,
                "nextAttemptAt": iso(row.next_attempt_at) if row is not None and not fenced else None,
                **({"fenced": True} if fenced else {}),
            },
        )
    )
    return outcome
