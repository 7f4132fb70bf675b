"""Quality records: defects, dispositions, rework tasks, FAI/FQC/OQC inspections and OQC sampling rules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class Defect(IdMixin, TimestampMixin, Base):
    """A defect on a unit. meta: "remark", and on hold release "releasedBy", "releaseReason", "releasedAt"."""

    __tablename__ = "defects"

    unit_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("tracks.id", ondelete="RESTRICT"), index=True
    )
    code: Mapped[str] = mapped_column(String(64), index=True)
    location: Mapped[str | None] = mapped_column(String(200))
    qty: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(32), default="RECORDED", index=True)
    recorded_by: Mapped[str | None] = mapped_column(String(120))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    disposition: Mapped[Disposition | None] = relationship(
        back_populates="defect", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )


class Disposition(IdMixin, TimestampMixin, Base):
    """The (single) decision on a defect: REWORK | SCRAP | HOLD."""

    __tablename__ = "dispositions"

    defect_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("defects.id", ondelete="CASCADE"), unique=True)
    type: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(120))
    decided_at: Mapped[datetime]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    defect: Mapped[Defect] = relationship(back_populates="disposition", lazy="raise")
    rework_task: Mapped[ReworkTask | None] = relationship(
        back_populates="disposition", cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )


class ReworkTask(IdMixin, TimestampMixin, Base):
    """Rework of a unit back to to_step_no. meta: "repairRecordV1" {reason?, action, result, …}."""

    __tablename__ = "rework_tasks"

    disposition_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("dispositions.id", ondelete="CASCADE"), unique=True
    )
    unit_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    from_step_no: Mapped[int] = mapped_column(Integer)
    to_step_no: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), default="OPEN", index=True)  # OPEN | DONE | CANCELLED
    done_by: Mapped[str | None] = mapped_column(String(120))
    done_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    disposition: Mapped[Disposition] = relationship(back_populates="rework_task", lazy="raise")


class Inspection(IdMixin, TimestampMixin, Base):
    """An FAI / IPQC / FQC / OQC inspection of a run.

    active_key = "{runId}:{type}" while PENDING/INSPECTING (one active per run and type), cleared to NULL on
    completion. data (OQC): sampledUnitIds, samplingRuleId/Type/Value and, after MRB, the MRB block.
    """

    __tablename__ = "inspections"
    __table_args__ = (Index("ix_inspections_run_id_type", "run_id", "type"),)

    run_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"))
    type: Mapped[str] = mapped_column(String(32))  # FAI | IPQC | FQC | OQC
    status: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    sample_qty: Mapped[int] = mapped_column(Integer)
    passed_qty: Mapped[int | None] = mapped_column(Integer)
    failed_qty: Mapped[int | None] = mapped_column(Integer)
    inspector_id: Mapped[str | None] = mapped_column(String(120))
    started_at: Mapped[datetime | None]
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    decided_by: Mapped[str | None] = mapped_column(String(120))
    decided_at: Mapped[datetime | None]
    remark: Mapped[str | None] = mapped_column(Text)
    signed_by: Mapped[str | None] = mapped_column(String(120))
    signed_at: Mapped[datetime | None]
    signature_remark: Mapped[str | None] = mapped_column(Text)

    items: Mapped[list[InspectionItem]] = relationship(
        back_populates="inspection",
        order_by="InspectionItem.id",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class InspectionItem(IdMixin, TimestampMixin, Base):
    __tablename__ = "inspection_items"

    inspection_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("inspections.id", ondelete="CASCADE"), index=True
    )
    unit_sn: Mapped[str | None] = mapped_column(String(128), index=True)
    item_name: Mapped[str] = mapped_column(String(200))
    item_spec: Mapped[str | None] = mapped_column(String(500))
    actual_value: Mapped[str | None] = mapped_column(String(500))
    result: Mapped[str] = mapped_column(String(32), default="NA")  # PASS | FAIL | NA
    defect_code: Mapped[str | None] = mapped_column(String(64))
    remark: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    inspection: Mapped[Inspection] = relationship(back_populates="items", lazy="raise")


class OqcSamplingRule(IdMixin, TimestampMixin, Base):
    """OQC sampling rule; null product/line/routing = wildcard. DELETE deactivates (is_active False)."""

    __tablename__ = "oqc_sampling_rules"

    product_code: Mapped[str | None] = mapped_column(String(64), index=True)
    line_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True
    )
    routing_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("routings.id", ondelete="RESTRICT"), index=True
    )
    sampling_type: Mapped[str] = mapped_column(String(32))  # PERCENTAGE | FIXED
    sample_value: Mapped[float] = mapped_column(Float)  # 0–100 for PERCENTAGE, ≥1 for FIXED
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
