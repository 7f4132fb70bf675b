"""Planning records: work orders, production runs (incl. rework/MRB fields) and serialized units."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class WorkOrder(IdMixin, TimestampMixin, Base):
    """A work order. meta keys: "dispatch", "routingOverride" (wins over ERP sync), "erp"."""

    __tablename__ = "work_orders"

    wo_no: Mapped[str] = mapped_column(String(64), unique=True)
    product_code: Mapped[str] = mapped_column(String(64), index=True)
    planned_qty: Mapped[float] = mapped_column(Float)
    routing_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("routings.id", ondelete="RESTRICT"), index=True
    )
    status: Mapped[str] = mapped_column(String(32), default="RECEIVED", index=True)
    erp_status: Mapped[str | None] = mapped_column(String(32))  # ERP FStatus "1".."7"
    erp_pick_status: Mapped[str | None] = mapped_column(String(32))
    pick_status: Mapped[str | None] = mapped_column(String(32))  # manual WOs only
    due_date: Mapped[datetime | None]
    source_system: Mapped[str] = mapped_column(String(32), default="MES")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Run(IdMixin, TimestampMixin, Base):
    """A production run of a WO on a line, frozen to one executable route version."""

    __tablename__ = "runs"

    run_no: Mapped[str] = mapped_column(String(128), unique=True)
    wo_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("work_orders.id", ondelete="RESTRICT"), index=True)
    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True)
    route_version_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("executable_route_versions.id", ondelete="RESTRICT"), index=True
    )
    plan_qty: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default="PREP", index=True)
    shift_code: Mapped[str | None] = mapped_column(String(32))
    changeover_no: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    # Rework run → the ON_HOLD run it was created from.
    parent_run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True
    )
    rework_type: Mapped[str | None] = mapped_column(String(32))  # REUSE_PREP | FULL_PREP
    authorization_type: Mapped[str] = mapped_column(String(32), default="NORMAL")  # NORMAL | MRB_OVERRIDE
    # Id of the failed OQC Inspection; no FK, inspections.run_id → runs would make a cycle.
    mrb_decision_id: Mapped[int | None] = mapped_column(fk_id())
    mrb_authorized_by: Mapped[str | None] = mapped_column(String(120))
    mrb_authorized_at: Mapped[datetime | None]
    mrb_fai_waiver: Mapped[bool] = mapped_column(Boolean, default=False)
    mrb_waiver_reason: Mapped[str | None] = mapped_column(Text)
    authorized_by: Mapped[str | None] = mapped_column(String(120))
    authorized_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Unit(IdMixin, TimestampMixin, Base):
    """A serialized board; current_step_no points at a stepNo of the run's frozen snapshot."""

    __tablename__ = "units"
    __table_args__ = (Index("ix_units_run_id_status", "run_id", "status"),)

    sn: Mapped[str] = mapped_column(String(128), unique=True)
    wo_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("work_orders.id", ondelete="RESTRICT"), index=True)
    # Indexed through ix_units_run_id_status (leading column).
    run_id: Mapped[int | None] = mapped_column(fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(32), default="QUEUED", index=True)
    current_step_no: Mapped[int] = mapped_column(Integer, default=1)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
