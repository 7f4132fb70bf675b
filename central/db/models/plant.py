"""Plant master data: lines, station groups, stations, operations, work centers and their ERP mappings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class Line(IdMixin, TimestampMixin, Base):
    """A production line. Readiness config: meta["readinessChecks"]["enabled"] (key absent = all types)."""

    __tablename__ = "lines"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    process_type: Mapped[str] = mapped_column(String(32))  # SMT | DIP
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class StationGroup(IdMixin, TimestampMixin, Base):
    __tablename__ = "station_groups"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    line_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True
    )


class Station(IdMixin, TimestampMixin, Base):
    """A workstation; `code` equals the TPM equipmentCode and the edge's equipment id."""

    __tablename__ = "stations"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    line_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True)
    group_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("station_groups.id", ondelete="RESTRICT"), index=True
    )
    station_type: Mapped[str] = mapped_column(String(32), default="MANUAL")  # MANUAL|AUTO|BATCH|TEST
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # Load explicitly (joinedload/selectinload): an implicit lazy load cannot run under asyncio.
    line: Mapped[Line] = relationship(lazy="raise")
    group: Mapped[StationGroup | None] = relationship(lazy="raise")


class Operation(IdMixin, TimestampMixin, Base):
    """A process operation; ERP-origin ones (source_system "ERP") are read-only in the API."""

    __tablename__ = "operations"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    default_type: Mapped[str | None] = mapped_column(String(32))  # station type: MANUAL|AUTO|BATCH|TEST
    is_key_quality: Mapped[bool] = mapped_column(Boolean, default=False)
    source_system: Mapped[str] = mapped_column(String(32), default="MES")  # MES | ERP
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OperationMapping(IdMixin, TimestampMixin, Base):
    """Maps an upstream process key (e.g. ERP process code) to an MES operation."""

    __tablename__ = "operation_mappings"
    __table_args__ = (UniqueConstraint("source_system", "source_process_key"),)

    source_system: Mapped[str] = mapped_column(String(32))
    source_process_key: Mapped[str] = mapped_column(String(128))
    source_process_name: Mapped[str | None] = mapped_column(String(200))
    operation_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("operations.id", ondelete="CASCADE"), index=True
    )
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WorkCenter(IdMixin, TimestampMixin, Base):
    __tablename__ = "work_centers"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    department: Mapped[str | None] = mapped_column(String(120))
    source_system: Mapped[str] = mapped_column(String(32), default="ERP")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class WorkCenterStationGroupMapping(IdMixin, TimestampMixin, Base):
    """sourceSystem + workCenter + department → station group; department "" means "any department"."""

    # Short table and constraint names keep every identifier within PostgreSQL's 63 characters.
    __tablename__ = "work_center_group_mappings"
    __table_args__ = (
        UniqueConstraint(
            "source_system", "work_center_code", "department", name="uq_work_center_group_mappings_key"
        ),
    )

    source_system: Mapped[str] = mapped_column(String(32))
    work_center_code: Mapped[str] = mapped_column(String(64))
    # Not nullable so the unique constraint holds (NULLs never collide in a unique index).
    department: Mapped[str] = mapped_column(String(120), default="")
    station_group_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("station_groups.id", ondelete="CASCADE"), index=True
    )
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
