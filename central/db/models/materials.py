"""Material master data (materials, lots, BOM) and the raw ERP copies kept by the sync jobs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin


class Material(IdMixin, TimestampMixin, Base):
    __tablename__ = "materials"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(64))
    unit: Mapped[str | None] = mapped_column(String(32))
    source_system: Mapped[str] = mapped_column(String(32), default="MES")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MaterialLot(IdMixin, TimestampMixin, Base):
    """A lot/reel; material_code is not a FK because loading scans may upsert lots of unknown materials."""

    __tablename__ = "material_lots"
    __table_args__ = (UniqueConstraint("material_code", "lot_no"),)

    material_code: Mapped[str] = mapped_column(String(64))
    # Indexed alone: a barcode without a material-code part is looked up by lot number.
    lot_no: Mapped[str] = mapped_column(String(128), index=True)
    supplier: Mapped[str | None] = mapped_column(String(200))
    iqc_result: Mapped[str | None] = mapped_column(String(32))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class BomItem(IdMixin, TimestampMixin, Base):
    """One BOM line: child per parent, qty = numerator / denominator."""

    __tablename__ = "bom_items"
    __table_args__ = (UniqueConstraint("parent_code", "child_code"),)

    parent_code: Mapped[str] = mapped_column(String(64))
    child_code: Mapped[str] = mapped_column(String(64), index=True)
    qty: Mapped[float] = mapped_column(Float, default=1.0)
    numerator: Mapped[float] = mapped_column(Float, default=1.0)
    denominator: Mapped[float] = mapped_column(Float, default=1.0)
    unit: Mapped[str | None] = mapped_column(String(32))
    source_system: Mapped[str] = mapped_column(String(32), default="MES")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class _ErpRawMixin:
    """Latest raw ERP payload per business key; payload_hash lets the sync skip identical payloads."""

    business_key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    payload_hash: Mapped[str] = mapped_column(String(64))
    fetched_at: Mapped[datetime]


class ErpRouteHeaderRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = routeNo."""

    __tablename__ = "erp_route_headers_raw"


class ErpRouteLineRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = "{routeNo}:{stepNo}:{processCode}"."""

    __tablename__ = "erp_route_lines_raw"

    route_no: Mapped[str] = mapped_column(String(128), index=True)


class ErpWorkOrderRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = woNo."""

    __tablename__ = "erp_work_orders_raw"


class ErpMaterialRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = material code."""

    __tablename__ = "erp_materials_raw"


class ErpBomRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = "{parentCode}:{childCode}"."""

    __tablename__ = "erp_boms_raw"

    parent_code: Mapped[str] = mapped_column(String(64), index=True)


class ErpWorkCenterRaw(IdMixin, _ErpRawMixin, Base):
    """business_key = work center code."""

    __tablename__ = "erp_work_centers_raw"
