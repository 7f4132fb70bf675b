"""Integration log, pull-sync cursors and the transactional outbox of MES events (MesEvent)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class IntegrationMessage(IdMixin, TimestampMixin, Base):
    """One inbound/outbound exchange with ERP/TPM/devices, kept for diagnosis (DUPLICATE rows included)."""

    __tablename__ = "integration_messages"

    direction: Mapped[str] = mapped_column(String(8))  # IN | OUT
    system: Mapped[str] = mapped_column(String(32), index=True)  # ERP | TPM | DEVICE | …
    entity_type: Mapped[str] = mapped_column(String(64), index=True)
    business_key: Mapped[str | None] = mapped_column(String(255), index=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(32), default="NEW", index=True)
    payload: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IntegrationSyncCursor(IdMixin, TimestampMixin, Base):
    """Where a pull job resumes. meta: {"nextStartRow", "since"} while a paged pull has more."""

    __tablename__ = "integration_sync_cursors"
    __table_args__ = (UniqueConstraint("system", "entity_type"),)

    system: Mapped[str] = mapped_column(String(32))
    entity_type: Mapped[str] = mapped_column(String(64))
    last_sync_at: Mapped[datetime | None]
    last_seq: Mapped[str | None] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MesEvent(IdMixin, TimestampMixin, Base):
    """Outbox row: written in the business transaction, delivered/processed later by the worker.

    Claim with a compare-and-set PENDING→PROCESSING; FAILED rows retry at next_attempt_at until
    attempts == max_attempts (then next_attempt_at = NULL: dead letter).
    """

    __tablename__ = "mes_events"

    # TRACK_IN | TRACK_OUT | SOLDER_PASTE_USAGE_CREATE | SOLDER_PASTE_USAGE_UNBIND | OUTBOUND_FEEDBACK
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=10)  # outbound feedback: 50
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    # Set on claim so a worker can take back rows left in PROCESSING by a crashed process.
    claimed_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]
    occurred_at: Mapped[datetime]
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)  # mes-event:{TYPE}:{source}
    entity_type: Mapped[str | None] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    retention_until: Mapped[datetime | None] = mapped_column(index=True)  # 30 d; outbound 180 d


class EdgeAgent(IdMixin, TimestampMixin, Base):
    """A registered edge agent: its MQTT identity (topic edgeId) mapped to the machine user whose permissions
    and audit name apply to its events, plus what it last reported (GET /integration/edges)."""

    __tablename__ = "edge_agents"

    edge_id: Mapped[str] = mapped_column(String(64), unique=True)
    line_code: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="UNKNOWN")  # ONLINE | OFFLINE | UNKNOWN
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the last status message, as sent
    last_status_at: Mapped[datetime | None]
    last_batch_id: Mapped[str | None] = mapped_column(String(128))
    last_batch_at: Mapped[datetime | None]
    events_accepted: Mapped[int] = mapped_column(BigInteger, default=0)
    events_duplicate: Mapped[int] = mapped_column(BigInteger, default=0)
    events_rejected: Mapped[int] = mapped_column(BigInteger, default=0)


class EdgeEventReceipt(IdMixin, Base):
    """An edge event central has applied, written in the event's own savepoint: a redelivered eventId finds
    its receipt and is answered DUPLICATE with the first answer (edge.md delivery rule 3). Refused events
    leave no receipt, so a fixed resend is evaluated again."""

    __tablename__ = "edge_event_receipts"
    __table_args__ = (UniqueConstraint("edge_id", "event_id"),)

    edge_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    batch_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime]
    applied_at: Mapped[datetime] = mapped_column(index=True)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
