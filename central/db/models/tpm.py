"""Equipment state (TPM copies, local maintenance) and stencil / solder-paste status and line bindings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class TpmEquipment(IdMixin, TimestampMixin, Base):
    """Equipment synced from TPM; equipment_code = Station.code, status "normal" (any case) = available."""

    __tablename__ = "tpm_equipment"

    equipment_code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(64), default="normal")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TpmStatusLog(IdMixin, TimestampMixin, Base):
    __tablename__ = "tpm_status_logs"
    __table_args__ = (UniqueConstraint("equipment_code", "started_at"),)

    equipment_code: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TpmMaintenanceTask(IdMixin, TimestampMixin, Base):
    """A TPM maintenance task; type/status are TPM strings (e.g. REPAIR, IN_PROGRESS or in_progress)."""

    __tablename__ = "tpm_maintenance_tasks"

    task_no: Mapped[str] = mapped_column(String(64), unique=True)
    equipment_code: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(64), index=True)
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MaintenanceRecord(IdMixin, TimestampMixin, Base):
    """Local maintenance of a fixture/stencil/squeegee/equipment; completion re-runs PRECHECK."""

    __tablename__ = "maintenance_records"

    line_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True
    )
    entity_type: Mapped[str] = mapped_column(String(32))  # FIXTURE | STENCIL | SQUEEGEE | EQUIPMENT
    entity_code: Mapped[str] = mapped_column(String(64), index=True)
    maintenance_type: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="PENDING", index=True)
    description: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    performed_by: Mapped[str | None] = mapped_column(String(120))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class StencilStatusRecord(IdMixin, TimestampMixin, Base):
    """A pushed stencil status; the latest by event_time counts. MANUAL records carry operator_id."""

    __tablename__ = "stencil_status_records"
    __table_args__ = (Index("ix_stencil_status_records_stencil_id_event_time", "stencil_id", "event_time"),)

    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_time: Mapped[datetime]
    stencil_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))  # READY | NOT_READY | MAINTENANCE
    tension_value: Mapped[float | None] = mapped_column(Float)
    last_cleaned_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(32), default="AUTO")  # AUTO | MANUAL
    operator_id: Mapped[str | None] = mapped_column(String(120))
    received_at: Mapped[datetime]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SolderPasteStatusRecord(IdMixin, TimestampMixin, Base):
    """A pushed solder-paste lot status; the latest by event_time counts."""

    __tablename__ = "solder_paste_status_records"
    __table_args__ = (Index("ix_solder_paste_status_records_lot_id_event_time", "lot_id", "event_time"),)

    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_time: Mapped[datetime]
    lot_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))  # COMPLIANT | NON_COMPLIANT | EXPIRED
    expires_at: Mapped[datetime | None]
    thawed_at: Mapped[datetime | None]
    stirred_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(32), default="AUTO")  # AUTO | MANUAL
    operator_id: Mapped[str | None] = mapped_column(String(120))
    received_at: Mapped[datetime]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class LineStencil(IdMixin, TimestampMixin, Base):
    """Stencil binding history of a line; at most one row per line is current (partial unique index)."""

    __tablename__ = "line_stencils"
    # Un-current the old binding (flush or UPDATE) before adding the new one.
    __table_args__ = (
        Index(
            "uq_line_stencils_current_line_id",
            "line_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True)
    stencil_id: Mapped[str] = mapped_column(String(64), index=True)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    bound_at: Mapped[datetime]
    bound_by: Mapped[str | None] = mapped_column(String(120))
    unbound_at: Mapped[datetime | None]
    unbound_by: Mapped[str | None] = mapped_column(String(120))


class LineSolderPaste(IdMixin, TimestampMixin, Base):
    """Solder-paste lot binding history of a line; at most one current row per line (partial index)."""

    __tablename__ = "line_solder_pastes"
    __table_args__ = (
        Index(
            "uq_line_solder_pastes_current_line_id",
            "line_id",
            unique=True,
            sqlite_where=text("is_current"),
            postgresql_where=text("is_current"),
        ),
    )

    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True)
    lot_id: Mapped[str] = mapped_column(String(64), index=True)
    is_current: Mapped[bool] = mapped_column(Boolean, default=True)
    bound_at: Mapped[datetime]
    bound_by: Mapped[str | None] = mapped_column(String(120))
    unbound_at: Mapped[datetime | None]
    unbound_by: Mapped[str | None] = mapped_column(String(120))
