"""Apply one edge batch (edge.md delivery rules 2–4): events in seq order, each in its own savepoint
inside one transaction per batch, commit, then the caller publishes the ack.

Per event: a receipt of the same eventId → DUPLICATE (the first answer stands); a domain refusal →
REJECTED with its code (the savepoint is rolled back, so a refused event writes nothing, and a FAILED
integration message records it for `GET /integration/messages`); a refusal that may pass later (503,
`INGEST_CONFLICT`) → RETRY for it and for every later event of the batch, so the edge resends them in
order. A database failure aborts the batch: the caller answers RETRY (or nothing) and the edge resends.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from central.db.engine import Database
from central.db.models import EdgeAgent, EdgeEventReceipt, IntegrationMessage
from central.domain.clock import utcnow
from central.domain.errors import MesError
from central.mqtt import parked
from central.mqtt.dispatch import HANDLERS, ingest_body
from central.schemas.ingest import IngestEventIn
from central.services.actor import Actor
from central.services.auth import load_actor
from central.services.ingest_many import NotEligible, flush, ingest_many
from central.services.uow import AuditContext, UnitOfWork
from shared.events import Ack, AckResult, EdgeEvent, EventBatch

log = logging.getLogger("central.mqtt")

# Refusals that are not the event's fault: another try may succeed.
RETRYABLE_CODES = frozenset({"INGEST_CONFLICT", "SERVICE_UNAVAILABLE", "DATABASE_UNAVAILABLE"})
ACTOR_TTL_SECONDS = 60.0


@dataclass
class EdgeIdentity:
    edge_id: str
    actor: Actor | None  # None: the edgeId is not registered (or inactive, or its user is disabled)
    loaded_at: float


@dataclass
class Applier:
    """Applies batches for every edge; caches each edge's identity for a minute (roles rarely change)."""

    db: Database
    settings: Any = None
    _identities: dict[str, EdgeIdentity] = field(default_factory=dict)

    async def identity(self, edge_id: str) -> Actor | None:
        hit = self._identities.get(edge_id)
        if hit and time.monotonic() - hit.loaded_at < ACTOR_TTL_SECONDS:
            return hit.actor
        async with self.db.reader() as s:
            agent = await s.scalar(select(EdgeAgent).where(EdgeAgent.edge_id == edge_id))
            actor = None
            if agent is not None and agent.is_active:
                actor = await load_actor(s, agent.user_id)
        if actor is not None:
            # The audit trail names the edge as a SYSTEM actor acting with its machine user's rights.
            actor = Actor(
                user_id=actor.user_id,
                name=f"edge:{edge_id}",
                email=actor.email,
                role_codes=actor.role_codes,
                scopes=actor.scopes,
                line_ids=actor.line_ids,
                station_ids=actor.station_ids,
                actor_type="SYSTEM",
            )
        self._identities[edge_id] = EdgeIdentity(edge_id, actor, time.monotonic())
        return actor

    async def apply(self, batch: EventBatch) -> Ack:
        actor = await self.identity(batch.edge_id)
        events = sorted(batch.events, key=lambda e: e.seq)
        if actor is None:
            return await self._refuse_all(batch, events)
        ctx = AuditContext(entity_type="EDGE_EVENT", action="EDGE_EVENT_APPLY", trace_id=batch.batch_id)
        async with UnitOfWork(self.db.writer, actor, ctx, self.settings) as uow:
            known = await _receipts(uow, batch.edge_id, [e.event_id for e in events])
            lane = _Lane(uow, batch, known)
            fresh = [e for e in events if e.event_id not in known]
            answers = dict(zip(map(id, fresh), await lane.apply(fresh), strict=True))
            results = [
                answers.get(id(e)) or AckResult(event_id=e.event_id, status="DUPLICATE") for e in events
            ]
            counts = {"ACCEPTED": 0, "DUPLICATE": 0, "REJECTED": 0}
            for r in results:
                if r.status in counts:
                    counts[r.status] += 1
            if counts["ACCEPTED"]:
                # Something moved: events that waited for their unit may fit now.
                await parked.retry_waiting(
                    uow, batch.edge_id, lambda u, e: _apply_waiting(u, batch.edge_id, e)
                )
            await uow.session.execute(
                update(EdgeAgent)
                .where(EdgeAgent.edge_id == batch.edge_id)
                .values(
                    last_batch_id=batch.batch_id,
                    last_batch_at=utcnow(),
                    events_accepted=EdgeAgent.events_accepted + counts["ACCEPTED"],
                    events_duplicate=EdgeAgent.events_duplicate + counts["DUPLICATE"],
                    events_rejected=EdgeAgent.events_rejected + counts["REJECTED"],
                )
            )
        return Ack(batch_id=batch.batch_id, results=results)

    async def _refuse_all(self, batch: EventBatch, events: list[EdgeEvent]) -> Ack:
        msg = f"edge {batch.edge_id!r} is not registered at central (or is disabled)"
        log.warning("refused batch %s: %s", batch.batch_id, msg)
        async with UnitOfWork(self.db.writer) as uow:
            for ev in events:
                _log_refusal(uow, batch, ev, "EDGE_NOT_REGISTERED", msg)
        return Ack(
            batch_id=batch.batch_id,
            results=[
                AckResult(event_id=e.event_id, status="REJECTED", code="EDGE_NOT_REGISTERED", message=msg)
                for e in events
            ],
        )


async def _receipts(uow: UnitOfWork, edge_id: str, event_ids: list[str]) -> set[str]:
    rows = await uow.session.scalars(
        select(EdgeEventReceipt.event_id).where(
            EdgeEventReceipt.edge_id == edge_id, EdgeEventReceipt.event_id.in_(event_ids)
        )
    )
    return set(rows)


# A set-based attempt refused on more events than this is split in halves, each tried set-based again, so one
# event that cannot go fast (its unit not there yet, a refusal) costs a few attempts, not the whole batch.
SPLIT_ABOVE = 8


class _Lane:
    """The events of one batch, in seq order: runs of equipment events set-based (services/ingest_many.py),
    everything else — other kinds, BATCH events, what a set-based attempt refused — one by one."""

    def __init__(self, uow: UnitOfWork, batch: EventBatch, known: set[str]) -> None:
        self.uow, self.batch = uow, batch
        self.known = set(known)  # eventIds answered ACCEPTED/DUPLICATE so far: a repeat is a DUPLICATE
        self.retry = False  # a RETRY answer: every later event of the batch is RETRY too (resent in order)
        self.bodies: dict[int, IngestEventIn] = {}

    async def apply(self, events: list[EdgeEvent]) -> list[AckResult]:
        self.bodies = _fast_bodies(self.uow, self.batch, events)
        out: list[AckResult] = []
        for fast, group in _groups(events, self.bodies):
            out += await (self._fast_or_split(group) if fast else self._one_by_one(group))
        return out

    async def _fast_or_split(self, events: list[EdgeEvent]) -> list[AckResult]:
        if self.retry:
            return self._retry_all(events)
        if len(events) >= 2:
            done = await _apply_fast(self.uow, self.batch, events, [self.bodies[id(e)] for e in events])
            if done is not None:
                self.known.update(e.event_id for e in events)
                return done
        if len(events) <= SPLIT_ABOVE:
            return await self._one_by_one(events)
        half = len(events) // 2
        first = await self._fast_or_split(events[:half])
        return first + await self._fast_or_split(events[half:])

    async def _one_by_one(self, events: list[EdgeEvent]) -> list[AckResult]:
        out: list[AckResult] = []
        for ev in events:
            if self.retry:
                out += self._retry_all([ev])
                continue
            if ev.event_id in self.known:
                out.append(AckResult(event_id=ev.event_id, status="DUPLICATE"))
                continue
            res = await _apply_one(self.uow, self.batch, ev)
            out.append(res)
            if res.status == "RETRY":
                self.retry = True
            elif res.status != "REJECTED":
                self.known.add(ev.event_id)
        return out

    @staticmethod
    def _retry_all(events: list[EdgeEvent]) -> list[AckResult]:
        return [AckResult(event_id=e.event_id, status="RETRY", code="EARLIER_RETRY") for e in events]


def _fast_bodies(uow: UnitOfWork, batch: EventBatch, events: list[EdgeEvent]) -> dict[int, IngestEventIn]:
    """The ingest bodies of the events that may go set-based (by id() of the event): AUTO/TEST equipment
    events that parse. None at all when the edge may not ingest (each event then gets its own refusal)."""
    perms = HANDLERS["INGEST"][0]
    if perms and not uow.actor.has_any(perms):
        return {}
    bodies: dict[int, IngestEventIn] = {}
    for ev in events:
        if ev.kind != "INGEST":
            continue
        try:
            body = ingest_body(batch.edge_id, ev)
        except ValidationError:
            continue  # the one-by-one path answers it with the exact validation error
        if body.event_type != "BATCH" and isinstance(body.payload, dict):
            bodies[id(ev)] = body
    return bodies


def _groups(events: list[EdgeEvent], bodies: dict[int, IngestEventIn]) -> list[tuple[bool, list[EdgeEvent]]]:
    """Consecutive runs of set-based events (True, run) and single other events (False, [event]), in order."""
    out: list[tuple[bool, list[EdgeEvent]]] = []
    for ev in events:
        fast = id(ev) in bodies
        if fast and out and out[-1][0]:
            out[-1][1].append(ev)
        else:
            out.append((fast, [ev]))
    return out


async def _apply_fast(
    uow: UnitOfWork, batch: EventBatch, events: list[EdgeEvent], bodies: list[IngestEventIn]
) -> list[AckResult] | None:
    """All `events` at once (services/ingest_many.py), in a savepoint; None when any of them needs the
    one-by-one path, which then gives each its exact answer."""
    s = uow.session
    savepoint = await s.begin_nested()
    try:
        outs = await ingest_many(uow, bodies)
        s.add_all([_receipt(batch, ev, _jsonable(out)) for ev, out in zip(events, outs, strict=True)])
        await flush(s)
    except (NotEligible, MesError, ValidationError, IntegrityError):
        await savepoint.rollback()
        return None
    await savepoint.commit()
    return [AckResult(event_id=ev.event_id, status="ACCEPTED") for ev in events]


def _jsonable(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value, default=str))


async def _apply_one(uow: UnitOfWork, batch: EventBatch, ev: EdgeEvent) -> AckResult:
    perms, handler = HANDLERS[ev.kind]
    s = uow.session
    try:
        async with s.begin_nested():
            uow.actor.require(*perms)
            applied = await handler(uow, batch.edge_id, ev)
            s.add(_receipt(batch, ev, _jsonable(applied.result)))
            await s.flush()
    except IntegrityError:
        # Another central process applied the same eventId first (its receipt won the unique index).
        return AckResult(event_id=ev.event_id, status="DUPLICATE")
    except MesError as exc:
        if exc.status >= 500 or exc.code in RETRYABLE_CODES:
            return AckResult(event_id=ev.event_id, status="RETRY", code=exc.code, message=exc.message)
        if parked.may_wait(ev, exc.code):
            # Its unit has not reached the step yet: held here until it does (central/mqtt/parked.py).
            parked.park(uow, batch.edge_id, batch.batch_id, ev, exc.code, exc.message, exc.details)
            s.add(_receipt(batch, ev, {"waiting": exc.code}))
            return AckResult(
                event_id=ev.event_id, status="ACCEPTED", code=parked.WAITING, message=exc.message
            )
        _log_refusal(uow, batch, ev, exc.code, exc.message)
        return AckResult(event_id=ev.event_id, status="REJECTED", code=exc.code, message=exc.message)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        _log_refusal(uow, batch, ev, "VALIDATION_FAILED", detail)
        return AckResult(event_id=ev.event_id, status="REJECTED", code="VALIDATION_FAILED", message=detail)
    return AckResult(event_id=ev.event_id, status="DUPLICATE" if applied.duplicate else "ACCEPTED")


def _receipt(batch: EventBatch, ev: EdgeEvent, result: Any) -> EdgeEventReceipt:
    return EdgeEventReceipt(
        edge_id=batch.edge_id,
        event_id=ev.event_id,
        seq=ev.seq,
        kind=ev.kind,
        batch_id=batch.batch_id,
        occurred_at=ev.occurred_at,
        applied_at=utcnow(),
        result=result,
    )


async def _apply_waiting(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> None:
    perms, handler = HANDLERS[ev.kind]
    uow.actor.require(*perms)
    await handler(uow, edge_id, ev)


def _log_refusal(uow: UnitOfWork, batch: EventBatch, ev: EdgeEvent, code: str, message: str | None) -> None:
    uow.session.add(
        IntegrationMessage(
            direction="IN",
            system="EDGE",
            entity_type=ev.kind,
            business_key=ev.station_code,
            dedupe_key=f"edge:{batch.edge_id}:{ev.event_id}",
            status="FAILED",
            payload=ev.wire(),
            error=f"{code}: {message}" if message else code,
            meta={"edgeId": batch.edge_id, "batchId": batch.batch_id, "seq": ev.seq, "code": code},
        )
    )
