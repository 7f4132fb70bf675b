"""Events that came before their unit: held at central until the unit reaches their step.

An edge reads its machines independently, so a board's record at a later station can reach the edge (and
central) before its record at the earlier station — a slow OPC UA server, a machine briefly unreachable,
a loaded edge PC. Central would refuse it (`STATION_MISMATCH` / `STEP_MISMATCH`: the unit is not at that
step yet), and since the earlier record has a later seq, the edge cannot resend it "in order". Neither RETRY
(the edge would resend it before the record it waits for, forever) nor REJECTED (production data lost) is
right, so central takes responsibility instead: the event is acknowledged ACCEPTED with code `WAITING`, its
receipt is written (a resend is a DUPLICATE) and it is kept as an integration message in status WAITING.

After every batch that moved something, the waiting events of that edge are tried again, oldest first, each
in its own savepoint, until a pass applies nothing: one that now fits is applied (status APPLIED, with the
machine's time as it was), one refused for another reason becomes FAILED, and one still waiting after
`PARK_TTL` becomes FAILED with its original refusal — visible in `GET /integration/messages?status=FAILED`,
like any refused event. Two central processes never apply the same one: a row moves out of WAITING only by a
conditional update that one of them wins.

Only events whose units moved are tried: the refusal names each unit with the step it was at (its
`details.units`, kept in the row's meta), and one query tells which of them are elsewhere now. After a long
outage hundreds of events may wait for records still deep in the edge's backlog; trying each of them after
every batch (a savepoint and the event's guards each) slowed the very drain they wait for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.db.models import IntegrationMessage, Unit
from central.domain.clock import utcnow
from central.domain.errors import MesError
from central.services.uow import UnitOfWork
from shared.events import EdgeEvent

log = logging.getLogger("central.mqtt")

WAIT_CODES = frozenset({"STATION_MISMATCH", "STEP_MISMATCH"})
WAIT_KINDS = frozenset({"INGEST"})
WAITING = "WAITING"
PARK_TTL = timedelta(minutes=10)
PER_PASS = 200  # waiting events tried per pass; more wait for the next batch
SCAN = 5000  # waiting events looked at per pass to find those worth a try (oldest first)
MAX_PASSES = 20

Apply = Callable[[UnitOfWork, EdgeEvent], Awaitable[None]]


def may_wait(ev: EdgeEvent, code: str) -> bool:
    return ev.kind in WAIT_KINDS and code in WAIT_CODES


def _key_prefix(edge_id: str) -> str:
    return f"edge:{edge_id}:"


def _units(meta_or_details: Any) -> dict[str, int]:
    """{sn: stepNo} of the units a waiting event was refused for (the refusal's details, then the row's
    meta); {} when the refusal did not say."""
    units = meta_or_details.get("units") if isinstance(meta_or_details, dict) else None
    return units if isinstance(units, dict) else {}


def park(
    uow: UnitOfWork, edge_id: str, batch_id: str, ev: EdgeEvent, code: str, message: str, details: Any = None
) -> None:
    meta: dict[str, Any] = {"edgeId": edge_id, "batchId": batch_id, "seq": ev.seq, "code": code}
    if units := _units(details):
        meta["units"] = units
    uow.session.add(
        IntegrationMessage(
            direction="IN",
            system="EDGE",
            entity_type=ev.kind,
            business_key=ev.station_code,
            dedupe_key=f"{_key_prefix(edge_id)}{ev.event_id}",
            status=WAITING,
            payload=ev.wire(),
            error=f"{code}: {message}",
            meta=meta,
        )
    )


async def retry_waiting(uow: UnitOfWork, edge_id: str, apply: Apply) -> int:
    """Applies what now fits; returns how many waiting events were applied."""
    s = uow.session
    applied = 0
    for _ in range(MAX_PASSES):
        ids = await _worth_a_try(s, edge_id)
        if not ids:
            break
        rows = list(
            await s.scalars(
                select(IntegrationMessage)
                .where(IntegrationMessage.id.in_(ids))
                .order_by(IntegrationMessage.id)
            )
        )
        progress = 0
        for row in rows:
            outcome, units_now = await _try(uow, row, apply)
            if outcome == "APPLIED":
                progress += 1
            if outcome == WAITING:
                if units_now and units_now != _units(row.meta):
                    # Still waiting, its units moved on: note where, not to be tried before they move again.
                    await s.execute(
                        update(IntegrationMessage)
                        .where(IntegrationMessage.id == row.id, IntegrationMessage.status == WAITING)
                        .values(meta={**row.meta, "units": units_now})
                        .execution_options(synchronize_session=False)
                    )
                continue
            # Only the process whose update moves the row out of WAITING keeps its work.
            won = await s.execute(
                update(IntegrationMessage)
                .where(IntegrationMessage.id == row.id, IntegrationMessage.status == WAITING)
                .values(status=outcome, error=row.error, meta=row.meta)
                .execution_options(synchronize_session=False)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                raise _Lost()
        applied += progress
        if not progress:
            break
    return applied


async def _worth_a_try(s: AsyncSession, edge_id: str) -> list[int]:
    """Ids of the edge's waiting events to try now, oldest first (at most PER_PASS): those whose units are no
    longer at the steps they were refused at, those that never said, and those past PARK_TTL (to fail)."""
    waiting = (
        await s.execute(
            select(IntegrationMessage.id, IntegrationMessage.meta, IntegrationMessage.created_at)
            .where(
                IntegrationMessage.status == WAITING,
                IntegrationMessage.system == "EDGE",
                IntegrationMessage.dedupe_key.startswith(_key_prefix(edge_id), autoescape=True),
            )
            .order_by(IntegrationMessage.id)
            .limit(SCAN)
        )
    ).all()
    sns = {sn for _id, meta, _at in waiting for sn in _units(meta)}
    steps: dict[str, int] = {}
    if sns:
        steps = {
            sn: step
            for sn, step in (
                await s.execute(select(Unit.sn, Unit.current_step_no).where(Unit.sn.in_(sns)))
            ).all()
        }
    fresh_since = utcnow() - PARK_TTL
    out: list[int] = []
    for row_id, meta, created_at in waiting:
        units = _units(meta)
        if units and created_at > fresh_since and all(steps.get(sn) == step for sn, step in units.items()):
            continue  # nothing moved: it would be refused the same way
        out.append(row_id)
        if len(out) == PER_PASS:
            break
    return out


class _Lost(Exception):
    """Another central process settled a waiting event first: this batch's transaction is retried."""


async def _try(uow: UnitOfWork, row: IntegrationMessage, apply: Apply) -> tuple[str, dict[str, int]]:
    """→ (APPLIED | FAILED | WAITING, the units a WAITING refusal named with their steps now)."""
    s = uow.session
    try:
        ev = EdgeEvent.model_validate(row.payload)
        async with s.begin_nested():
            await apply(uow, ev)
    except MesError as exc:
        if may_wait(ev, exc.code) and utcnow() - row.created_at < PARK_TTL:
            return WAITING, _units(exc.details)
        row.error = f"{exc.code}: {exc.message}"
        row.meta = {**row.meta, "code": exc.code, "failedAt": utcnow().isoformat()}
        log.warning("waiting event %s of %s refused: %s", row.dedupe_key, row.business_key, row.error)
        return "FAILED", {}
    except ValidationError as exc:
        row.error = f"VALIDATION_FAILED: {exc.errors()[:1]}"
        return "FAILED", {}
    row.meta = {**row.meta, "appliedAt": utcnow().isoformat()}
    return "APPLIED", {}
