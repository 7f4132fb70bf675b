"""Integration log, pull-sync cursors and the transactional outbox of MES events (MesEvent)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
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
