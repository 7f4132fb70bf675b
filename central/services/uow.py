"""Unit of work: one session, one transaction, the caller and the audit rows written with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from central.config import Settings
from central.db.models import AuditEvent
from central.domain.clock import utcnow
from central.services.actor import SYSTEM_ACTOR, Actor
from central.services.idempotency import Claim, mark_applied

log = logging.getLogger(__name__)


@dataclass
class AuditContext:
    """What the transport knows about the call: request id, address, and the route's default action."""

    entity_type: str = "SYSTEM_CONFIG"
    action: str = "WRITE"
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    trace_id: str | None = None
    idempotency_key: str | None = None
    payload: dict[str, Any] | None = None
    is_write: bool = False


def diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """JSON-patch-like list of changed top-level fields (domain.md §1 audit `diff`)."""
    before, after = before or {}, after or {}
    out: list[dict[str, Any]] = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            out.append({"op": "add", "path": f"/{key}", "before": None, "after": after[key]})
        elif key not in after:
            out.append({"op": "remove", "path": f"/{key}", "before": before[key], "after": None})
        elif before[key] != after[key]:
            out.append({"op": "replace", "path": f"/{key}", "before": before[key], "after": after[key]})
    return out


@dataclass
class UnitOfWork:
    sessionmaker: async_sessionmaker[AsyncSession]
    actor: Actor = SYSTEM_ACTOR
    ctx: AuditContext = field(default_factory=AuditContext)
    # Behaviour switches some use cases read (e.g. outbound feedback on run completion); None = defaults.
    settings: Settings | None = None
    # The Idempotency-Key this request holds: marked APPLIED in this transaction, so a crash after the commit
    # never lets the key run twice (services/idempotency.py).
    idempotency: Claim | None = None
    session: AsyncSession = field(init=False)
    audited: bool = field(default=False, init=False)
    # While a batch of equipment events is applied set-based (services/ingest_many.py): the rows it loaded
    # for the whole batch, which the per-event lookups read instead of querying again. None otherwise.
    memo: dict[Any, Any] | None = field(default=None, init=False)

    async def __aenter__(self) -> UnitOfWork:
        self.session = self.sessionmaker()
        await self.session.begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                if self.ctx.is_write and not self.audited:
                    self.audit(None, None, payload=self.ctx.payload)
                if self.idempotency is not None:
                    await mark_applied(self.session, self.idempotency)
                await self.session.commit()
            else:
                await self.session.rollback()
        finally:
            await self.session.close()

    def audit(
        self,
        entity_id: Any,
        display: str | None = None,
        *,
        entity_type: str | None = None,
        action: str | None = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
        station_id: int | None = None,
    ) -> None:
        """Appends a SUCCESS audit row to this transaction (it commits or rolls back with the change)."""
        self.audited = True
        self.session.add(
            audit_row(
                self.actor,
                self.ctx,
                "SUCCESS",
                entity_type=entity_type,
                action=action,
                entity_id=entity_id,
                display=display,
                changes=diff(before, after) if (before or after) else None,
                payload=payload,
                station_id=station_id,
            )
        )


def audit_row(
    actor: Actor,
    ctx: AuditContext,
    status: str,
    *,
    entity_type: str | None = None,
    action: str | None = None,
    entity_id: Any = None,
    display: str | None = None,
    changes: list[dict[str, Any]] | None = None,
    payload: dict[str, Any] | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    station_id: int | None = None,
) -> AuditEvent:
    return AuditEvent(
        occurred_at=utcnow(),
        entity_type=entity_type or ctx.entity_type,
        action=action or ctx.action,
        entity_id=None if entity_id is None else str(entity_id),
        entity_display=display,
        actor_id=actor.user_id,
        actor_name=actor.name,
        actor_role=actor.role_label or None,
        actor_type=actor.actor_type,
        status=status,
        error_code=error_code,
        error_message=error_message,
        diff=changes,
        payload=payload,
        request_id=ctx.request_id,
        ip=ctx.ip,
        user_agent=ctx.user_agent,
        trace_id=ctx.trace_id,
        idempotency_key=ctx.idempotency_key,
        station_id=station_id,
    )


async def record_refusal(
    sessionmaker: async_sessionmaker[AsyncSession], actor: Actor, ctx: AuditContext, code: str, message: str
) -> None:
    """FAIL audit row in its own transaction (the refused change itself was rolled back)."""
    try:
        async with sessionmaker() as session, session.begin():
            session.add(
                audit_row(actor, ctx, "FAIL", payload=ctx.payload, error_code=code, error_message=message)
            )
    except Exception:  # the refusal is still answered; losing its audit row must not mask it
        log.exception("could not write FAIL audit row for %s %s", ctx.action, code)
