"""Data collection: specs bound to operations and the values collected against tracks or carrier tracks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, JsonType, TimestampMixin, fk_id


class DataCollectionSpec(IdMixin, TimestampMixin, Base):
    """What to collect at an operation; `spec` = {min,max,target,lsl,usl,unit}, `alarm` = {..., action}."""

    __tablename__ = "data_collection_specs"
    __table_args__ = (UniqueConstraint("operation_id", "name"),)

    operation_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("operations.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(120))
    item_type: Mapped[str] = mapped_column(String(32), default="KEY")  # KEY | OBSERVATION
    data_type: Mapped[str] = mapped_column(String(32))  # NUMBER | TEXT | BOOLEAN | JSON
    method: Mapped[str] = mapped_column(String(32), default="MANUAL")  # AUTO | MANUAL
    # EVENT | TIME | EACH_UNIT | EACH_CARRIER
    trigger_type: Mapped[str] = mapped_column(String(32), default="EACH_UNIT")
    spec: Mapped[dict[str, Any] | None]
    alarm: Mapped[dict[str, Any] | None]
    is_required: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DataValue(IdMixin, TimestampMixin, Base):
    """One collected value; exactly one value_* field is set, matching the spec's data_type."""

    __tablename__ = "data_values"
    # A value hangs off a unit track or a carrier track, never both.
    __table_args__ = (
        CheckConstraint("track_id IS NULL OR carrier_track_id IS NULL", name="track_or_carrier_track"),
    )

    spec_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("data_collection_specs.id", ondelete="RESTRICT"), index=True
    )
    track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("tracks.id", ondelete="CASCADE"), index=True
    )
    carrier_track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("carrier_tracks.id", ondelete="CASCADE"), index=True
    )
    value_number: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    value_boolean: Mapped[bool | None] = mapped_column(Boolean)
    value_json: Mapped[Any | None] = mapped_column(JsonType, nullable=True)
    judge: Mapped[str | None] = mapped_column(String(32))  # PASS | FAIL (null = not judged)
    alarmed: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(32), default="MANUAL")  # MANUAL|AUTO|BATCH|TEST
    collected_at: Mapped[datetime]
    collected_by: Mapped[str | None] = mapped_column(String(120))
