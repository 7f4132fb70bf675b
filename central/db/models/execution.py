"""Execution records: tracks, carriers, carrier tracks, ingest events, SPI/AOI and device-data receipts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from central.db.base import Base, IdMixin, TimestampMixin, fk_id


class Track(IdMixin, TimestampMixin, Base):
    """A unit's pass through a station at a step; out_at null = still inside.

    meta: {"executionMode": "FAI_TRIAL", "faiId": …} for FAI trial tracks.
    """

    __tablename__ = "tracks"
    # The two composites also serve as the indexes of the unit_id / station_id foreign keys.
    __table_args__ = (
        Index("ix_tracks_unit_id_step_no", "unit_id", "step_no"),
        Index("ix_tracks_station_id_out_at", "station_id", "out_at"),
    )

    unit_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("units.id", ondelete="RESTRICT"))
    step_no: Mapped[int] = mapped_column(Integer)
    station_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("stations.id", ondelete="RESTRICT"))
    source: Mapped[str] = mapped_column(String(32), default="MANUAL")  # MANUAL|AUTO|BATCH|TEST
    in_at: Mapped[datetime] = mapped_column(index=True)
    out_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(String(32))  # PASS | FAIL
    operator_id: Mapped[str | None] = mapped_column(String(120))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Carrier(IdMixin, TimestampMixin, Base):
    """A tray, magazine or oven lot carrier used by BATCH stations (upserted by carrier_no on ingest)."""

    __tablename__ = "carriers"

    carrier_no: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default="IDLE", index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CarrierLoad(IdMixin, TimestampMixin, Base):
    """A unit on a carrier from loaded_at until unloaded_at (null = still loaded)."""

    __tablename__ = "carrier_loads"
    __table_args__ = (Index("ix_carrier_loads_carrier_id_unloaded_at", "carrier_id", "unloaded_at"),)

    carrier_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("carriers.id", ondelete="RESTRICT"))
    unit_id: Mapped[int] = mapped_column(fk_id(), ForeignKey("units.id", ondelete="RESTRICT"), index=True)
    loaded_at: Mapped[datetime]
    unloaded_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CarrierTrack(IdMixin, TimestampMixin, Base):
    """A carrier's pass through a BATCH step; carrier-level DataValues hang off it."""

    __tablename__ = "carrier_tracks"

    carrier_id: Mapped[int] = mapped_column(
        fk_id(), ForeignKey("carriers.id", ondelete="RESTRICT"), index=True
    )
    run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True
    )
    step_no: Mapped[int] = mapped_column(Integer)
    # Null when the step has no station constraint and the event named no station.
    station_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("stations.id", ondelete="RESTRICT"), index=True
    )
    source: Mapped[str] = mapped_column(String(32), default="BATCH")
    in_at: Mapped[datetime]
    out_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(String(32))  # PASS | FAIL
    operator_id: Mapped[str | None] = mapped_column(String(120))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IngestEvent(IdMixin, TimestampMixin, Base):
    """An accepted AUTO/BATCH/TEST equipment event; rejected events are never stored.

    meta: {"trackSource", "batch", "measurementSummary",
    "links": {carrierId, carrierTrackId, unitTracks{sn: trackId}, carrierDataValueCount}}.
    """

    __tablename__ = "ingest_events"
    __table_args__ = (UniqueConstraint("source_system", "dedupe_key"),)

    source_system: Mapped[str] = mapped_column(String(64))
    dedupe_key: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(32))  # AUTO | BATCH | TEST
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    received_at: Mapped[datetime]
    run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True
    )
    unit_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("units.id", ondelete="RESTRICT"), index=True
    )
    station_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("stations.id", ondelete="RESTRICT"), index=True
    )
    line_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("lines.id", ondelete="RESTRICT"), index=True
    )
    carrier_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("carriers.id", ondelete="RESTRICT"), index=True
    )
    sn: Mapped[str | None] = mapped_column(String(128), index=True)
    sn_list: Mapped[list[Any] | None]
    result: Mapped[str | None] = mapped_column(String(32))  # PASS | FAIL
    test_result_id: Mapped[str | None] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    normalized: Mapped[dict[str, Any] | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class InspectionResultRecord(IdMixin, TimestampMixin, Base):
    """An SPI/AOI result pushed by equipment or keyed in; a FAIL forces its track's track-out to FAIL."""

    __tablename__ = "inspection_result_records"

    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_time: Mapped[datetime] = mapped_column(index=True)  # the list's time window
    run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True
    )
    run_no: Mapped[str] = mapped_column(String(128), index=True)
    station_code: Mapped[str] = mapped_column(String(64))
    unit_sn: Mapped[str] = mapped_column(String(128), index=True)
    step_no: Mapped[int] = mapped_column(Integer)
    inspection_type: Mapped[str] = mapped_column(String(32))  # SPI | AOI
    result: Mapped[str] = mapped_column(String(32), index=True)  # PASS | FAIL
    defects: Mapped[list[Any]] = mapped_column(default=list)  # [{code, location?, description?, qty?}]
    raw_data: Mapped[dict[str, Any] | None]
    source: Mapped[str] = mapped_column(String(32), default="AUTO")  # AUTO | MANUAL
    equipment_id: Mapped[str | None] = mapped_column(String(64))
    operator_id: Mapped[str | None] = mapped_column(String(120))
    track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("tracks.id", ondelete="RESTRICT"), index=True
    )
    defect_ids: Mapped[list[Any]] = mapped_column(default=list)
    received_at: Mapped[datetime]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DeviceDataRecord(IdMixin, TimestampMixin, Base):
    """A device-data push; `data` is the raw item list, resolved context ids alongside. Never moves units."""

    __tablename__ = "device_data_records"

    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_time: Mapped[datetime] = mapped_column(index=True)
    source: Mapped[str] = mapped_column(String(32), default="AUTO")  # AUTO | MANUAL
    run_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("runs.id", ondelete="RESTRICT"), index=True
    )
    unit_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("units.id", ondelete="RESTRICT"), index=True
    )
    station_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("stations.id", ondelete="RESTRICT"), index=True
    )
    step_no: Mapped[int | None] = mapped_column(Integer)
    track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("tracks.id", ondelete="RESTRICT"), index=True
    )
    carrier_track_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("carrier_tracks.id", ondelete="RESTRICT"), index=True
    )
    operation_id: Mapped[int | None] = mapped_column(
        fk_id(), ForeignKey("operations.id", ondelete="RESTRICT"), index=True
    )
    equipment_id: Mapped[str | None] = mapped_column(String(64))
    operator_id: Mapped[str | None] = mapped_column(String(120))
    data: Mapped[list[Any]] = mapped_column(default=list)
    data_values_created: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
