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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy import select, update

from central.db.models import IntegrationMessage
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
MAX_PASSES = 20

Apply = Callable[[UnitOfWork, EdgeEvent], Awaitable[None]]


def may_wait(ev: EdgeEvent, code: str) -> bool:
    return ev.kind in WAIT_KINDS and code in WAIT_CODES


def _key_prefix(edge_id: str) -> str:
    return f"edge:{edge_id}:"


def park(uow: UnitOfWork, edge_id: str, batch_id: str, ev: EdgeEvent, code: str, message: str) -> None:
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
            meta={"edgeId": edge_id, "batchId": batch_id, "seq": ev.seq, "code": code},
        )
    )


async def retry_waiting(uow: UnitOfWork, edge_id: str, apply: Apply) -> int:
    """Applies what now fits; returns how many waiting events were applied."""
    s = uow.session
    applied = 0
    for _ in range(MAX_PASSES):
        rows = list(
            await s.scalars(
                select(IntegrationMessage)
                .where(
                    IntegrationMessage.status == WAITING,
                    IntegrationMessage.system == "EDGE",
                    IntegrationMessage.dedupe_key.startswith(_key_prefix(edge_id), autoescape=True),
                )
                .order_by(IntegrationMessage.id)
                .limit(PER_PASS)
            )
        )
        progress = 0
        for row in rows:
            outcome = await _try(uow, row, apply)
            if outcome == "APPLIED":
                progress += 1
            if outcome != WAITING:
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


class _Lost(Exception):
    """Another central process settled a waiting event first: this batch's transaction is retried."""


async def _try(uow: UnitOfWork, row: IntegrationMessage, apply: Apply) -> str:
    s = uow.session
    try:
        ev = EdgeEvent.model_validate(row.payload)
        async with s.begin_nested():
            await apply(uow, ev)
    except MesError as exc:
        if may_wait(ev, exc.code) and utcnow() - row.created_at < PARK_TTL:
            return WAITING
        row.error = f"{exc.code}: {exc.message}"
        row.meta = {**row.meta, "code": exc.code, "failedAt": utcnow().isoformat()}
        log.warning("waiting event %s of %s refused: %s", row.dedupe_key, row.business_key, row.error)
        return "FAILED"
    except ValidationError as exc:
        row.error = f"VALIDATION_FAILED: {exc.errors()[:1]}"
        return "FAILED"
    row.meta = {**row.meta, "appliedAt": utcnow().isoformat()}
    return "APPLIED"
