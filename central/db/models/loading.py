"""SMT feeder loading: slots, slot↔material mappings, a run's expected load table and loading records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class FeederSlot(IdMixin, TimestampMixin, Base):
    """A feeder slot of a line; locks after 3 consecutive FAIL scans. meta: "unlockHistory" [{by, reason, at,
    previousLockedAt, previousLockedReason}]."""

    __tablename__ = "feeder_slots"
    __table_args__ = (UniqueConstraint("line_id", "slot_code"),)

    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"))
    slot_code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    position: Mapped[int | None] = mapped_column(Integer)
    current_material_lot_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("material_lots.id", ondelete="SET NULL"), index=True
    )
    is_locked: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None]
    locked_reason: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SlotMaterialMapping(IdMixin, TimestampMixin, Base):
    """Material allowed in a slot; null product/routing = generic tier; lower priority = preferred."""

    __tablename__ = "slot_material_mappings"
    __table_args__ = (UniqueConstraint("slot_id", "material_code"),)

    slot_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("feeder_slots.id", ondelete="CASCADE"))
    material_code: Mapped[str] = mapped_column(String(64), index=True)
    product_code: Mapped[str | None] = mapped_column(String(64), index=True)
    routing_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("routings.id", ondelete="RESTRICT"), index=True
    )
    priority: Mapped[int] = mapped_column(Integer, default=1)
    is_alternate: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RunSlotExpectation(IdMixin, TimestampMixin, Base):
    """The load table of a run: which material each slot must carry (replaced wholesale by load-table)."""

    __tablename__ = "run_slot_expectations"
    __table_args__ = (UniqueConstraint("run_id", "slot_id"),)

    run_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("runs.id", ondelete="CASCADE"))
    slot_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("feeder_slots.id", ondelete="RESTRICT"), index=True
    )
    expected_material_code: Mapped[str] = mapped_column(String(64))
    alternates: Mapped[list[Any]] = mapped_column(default=list)  # alternate material codes
    status: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)  # PENDING|LOADED|MISMATCH
    loaded_material_code: Mapped[str | None] = mapped_column(String(64))
    loaded_at: Mapped[datetime | None]
    loaded_by: Mapped[str | None] = mapped_column(String(120))


class LoadingRecord(IdMixin, TimestampMixin, Base):
    """One scan at a slot: LOADED (PASS/WARNING), UNLOADED (FAIL scans), REPLACED. meta: "replaceReason"."""

    __tablename__ = "loading_records"

    run_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True)
    slot_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("feeder_slots.id", ondelete="RESTRICT"), index=True
    )
    material_lot_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("material_lots.id", ondelete="RESTRICT"), index=True
    )
    material_code: Mapped[str] = mapped_column(String(64), index=True)
    expected_code: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), index=True)  # LOADED | UNLOADED | REPLACED
    verify_result: Mapped[str] = mapped_column(String(32))  # PASS | FAIL | WARNING
    fail_reason: Mapped[str | None] = mapped_column(Text)
    loaded_at: Mapped[datetime]
    loaded_by: Mapped[str | None] = mapped_column(String(120))
    package_qty: Mapped[int | None] = mapped_column(Integer)
    reviewed_by: Mapped[str | None] = mapped_column(String(120))
    reviewed_at: Mapped[datetime | None]
    unloaded_at: Mapped[datetime | None]
    unloaded_by: Mapped[str | None] = mapped_column(String(120))
    material_validation: Mapped[str | None] = mapped_column(String(32))  # KNOWN | UNKNOWN
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
