"""Routings, their steps and execution configs, compiled executable versions and FAI templates."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class Routing(IdMixin, TimestampMixin, Base):
    """A process route. ERP routings (source_system "ERP") have a read-only step set."""

    __tablename__ = "routings"
    __table_args__ = (Index("ix_routings_source_system_source_key", "source_system", "source_key"),)

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    source_system: Mapped[str] = mapped_column(String(32), default="MES")  # MES | ERP
    source_key: Mapped[str | None] = mapped_column(String(200))
    product_code: Mapped[str | None] = mapped_column(String(64), index=True)
    process_type: Mapped[str | None] = mapped_column(String(32))  # SMT | DIP
    version: Mapped[str | None] = mapped_column(String(32))
    fai_template_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("fai_templates.id", ondelete="RESTRICT"), index=True
    )
    effective_from: Mapped[datetime | None]
    effective_to: Mapped[datetime | None]
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    steps: Mapped[list[RoutingStep]] = relationship(
        back_populates="routing",
        order_by="RoutingStep.step_no",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class RoutingStep(IdMixin, TimestampMixin, Base):
    """One step; step numbers are sparse (10/20/30) and the next step is the next larger number."""

    __tablename__ = "routing_steps"
    __table_args__ = (UniqueConstraint("routing_id", "step_no"),)

    routing_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("routings.id", ondelete="CASCADE"))
    step_no: Mapped[int] = mapped_column(Integer)
    # ERP:{routeNo}:{stepNo}:{processCode} for ERP steps; lets step-scope configs survive re-sync.
    source_step_key: Mapped[str | None] = mapped_column(String(255), index=True)
    operation_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("operations.id", ondelete="RESTRICT"), index=True
    )
    station_group_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("station_groups.id", ondelete="RESTRICT"), index=True
    )
    station_type: Mapped[str | None] = mapped_column(String(32))  # MANUAL|AUTO|BATCH|TEST
    is_last: Mapped[bool] = mapped_column(Boolean, default=False)
    requires_fai: Mapped[bool] = mapped_column(Boolean, default=False)
    # ReflowProfile arrives with the SMT preparation phase; no FK until then.
    expected_reflow_profile_id: Mapped[int | None] = mapped_column(fk_id())
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    routing: Mapped[Routing] = relationship(back_populates="steps", lazy="raise")


class RouteExecutionConfig(IdMixin, TimestampMixin, Base):
    """MES-owned execution semantics: route scope (routing_step_id and source_step_key null) or step scope.

    Nullable fields mean "not set here" so the compile merge (step > route > RoutingStep) can fall through.
    """

    __tablename__ = "route_execution_configs"

    routing_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("routings.id", ondelete="CASCADE"), index=True
    )
    # SET NULL: a step deleted by ERP re-sync keeps its config, re-attached through source_step_key.
    routing_step_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("routing_steps.id", ondelete="SET NULL"), index=True
    )
    source_step_key: Mapped[str | None] = mapped_column(String(255), index=True)
    station_type: Mapped[str | None] = mapped_column(String(32))
    station_group_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("station_groups.id", ondelete="RESTRICT"), index=True
    )
    allowed_station_ids: Mapped[list[Any]] = mapped_column(default=list)
    requires_fai: Mapped[bool | None] = mapped_column(Boolean)
    requires_authorization: Mapped[bool | None] = mapped_column(Boolean)
    data_spec_ids: Mapped[list[Any]] = mapped_column(default=list)
    ingest_mapping: Mapped[dict[str, Any] | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ExecutableRouteVersion(IdMixin, TimestampMixin, Base):
    """An immutable compiled snapshot of a routing; runs freeze one of these."""

    __tablename__ = "executable_route_versions"
    __table_args__ = (UniqueConstraint("routing_id", "version_no"),)

    routing_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("routings.id", ondelete="RESTRICT"))
    version_no: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32), index=True)  # READY | INVALID
    signature: Mapped[str] = mapped_column(String(64))  # sha256 hex of the canonical compile input
    snapshot_json: Mapped[dict[str, Any]] = mapped_column(default=dict)
    errors_json: Mapped[list[Any]] = mapped_column(default=list)  # [{stepNo?, code, message}]
    compiled_at: Mapped[datetime]


class FaiTemplate(IdMixin, TimestampMixin, Base):
    __tablename__ = "fai_templates"

    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    product_code: Mapped[str | None] = mapped_column(String(64), index=True)
    process_type: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[str | None] = mapped_column(String(32))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)

    items: Mapped[list[FaiTemplateItem]] = relationship(
        back_populates="template",
        order_by="FaiTemplateItem.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class FaiTemplateItem(IdMixin, TimestampMixin, Base):
    __tablename__ = "fai_template_items"
    __table_args__ = (UniqueConstraint("template_id", "seq"),)

    template_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("fai_templates.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    item_name: Mapped[str] = mapped_column(String(200))
    item_spec: Mapped[str | None] = mapped_column(String(500))
    required: Mapped[bool] = mapped_column(Boolean, default=True)

    template: Mapped[FaiTemplate] = relationship(back_populates="items", lazy="raise")
