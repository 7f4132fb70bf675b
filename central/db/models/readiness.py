"""Production readiness checks of a run (PRECHECK advisory, FORMAL blocking) and their items."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class ReadinessCheck(IdMixin, TimestampMixin, Base):
    """One evaluation; FAILED iff an item is FAILED. "Latest" = highest (checked_at, id) per run and type."""

    __tablename__ = "readiness_checks"
    __table_args__ = (Index("ix_readiness_checks_run_id_type_checked_at", "run_id", "type", "checked_at"),)

    run_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"))
    type: Mapped[str] = mapped_column(String(32))  # PRECHECK | FORMAL
    status: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)  # PENDING|PASSED|FAILED
    checked_at: Mapped[datetime | None]
    checked_by: Mapped[str | None] = mapped_column(String(120))  # FORMAL only
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    items: Mapped[list[ReadinessCheckItem]] = relationship(
        back_populates="check",
        order_by="ReadinessCheckItem.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class ReadinessCheckItem(IdMixin, TimestampMixin, Base):
    __tablename__ = "readiness_check_items"

    check_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("readiness_checks.id", ondelete="CASCADE"), index=True
    )
    item_type: Mapped[str] = mapped_column(String(32))  # EQUIPMENT|MATERIAL|ROUTE|STENCIL|…|TIME_RULE
    item_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32), index=True)  # PASSED | FAILED | WAIVED
    fail_reason: Mapped[str | None] = mapped_column(Text)
    evidence_json: Mapped[dict[str, Any] | None]
    waived_at: Mapped[datetime | None]
    waived_by: Mapped[str | None] = mapped_column(String(120))
    waive_reason: Mapped[str | None] = mapped_column(Text)

    check: Mapped[ReadinessCheck] = relationship(back_populates="items", lazy="raise")
