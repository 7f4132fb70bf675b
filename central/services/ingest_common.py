"""What AUTO/TEST and BATCH ingest share: the event context, spec matching and values, outbox events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from central.db.models import DataCollectionSpec, ExecutableRouteVersion, IngestEvent, MesEvent, Run, Track
from central.domain import ingest_mapping as im
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import Rejected
from central.schemas.ingest import IngestEventIn
from central.services.data_collection import Value
from central.services.uow import UnitOfWork

INGEST_PERMS = ("system:integration",)
ACTION = "INGEST_EVENT_CREATE"
EVENT_RETENTION = timedelta(days=30)
# Machine clocks drift; a time further ahead than this is a broken clock, not a late replay.
FUTURE_TOLERANCE = timedelta(minutes=10)


@dataclass
class Event:
    """An ingest event after guards 1–5: its claimed row, run, frozen version, mapping and normalised form."""

    body: IngestEventIn
    row: IngestEvent
    run: Run
    version: ExecutableRouteVersion
    mapping: im.Mapping
    norm: im.Normalized
    occurred_at: datetime
    mapping_step_no: int  # the step whose mapping was used (the first step of the event's type)
    canonical: bool  # the typed endpoints: the payload is canonical, the mapping's paths do not apply

    @property
    def event_type(self) -> str:
        return self.body.event_type


def renormalize(ev: Event, step: route.Step) -> None:
    """Guards 1–5 read the event with the mapping of the first step of its type; the step the event turns out
    to be for may carry its own mapping (measurement paths, dataSpecMap). Its reading must name the same
    unit(s), station and carrier."""
    raw = step.get("ingestMapping")
    if not raw or int(step["stepNo"]) == ev.mapping_step_no:
        return
    mapping = im.Mapping.parse(raw)
    if ev.canonical:
        mapping = mapping.canonical()
    if mapping.event_type is not None and mapping.event_type != ev.event_type:
        raise Rejected("INGEST_MAPPING_MISSING", f"Step {step['stepNo']} maps {mapping.event_type} events")
    norm = im.normalize(ev.body.payload, mapping)
    im.require(norm, ev.event_type)
    before = ev.norm
    same = (norm.sn, norm.sn_list, norm.station_code, norm.carrier_code) == (
        before.sn,
        before.sn_list,
        before.station_code,
        before.carrier_code,
    )
    if not same:
        raise Rejected(
            im.PAYLOAD_INVALID,
            f"The ingestMapping of step {step['stepNo']} reads another unit, station or carrier than the "
            f"mapping of the first {ev.event_type} step",
        )
    ev.mapping, ev.norm = mapping, norm
    if norm.occurred_at is not None:
        ev.occurred_at = not_future(norm.occurred_at)


def not_future(at: datetime) -> datetime:
    if at > utcnow() + FUTURE_TOLERANCE:
        raise Rejected(
            im.PAYLOAD_INVALID, f"occurredAt {iso(at)} is more than {FUTURE_TOLERANCE} ahead of the server"
        )
    return at


@dataclass(frozen=True)
class IngestValue(Value):
    """A value from equipment: the equipment's own judge wins over the spec's limits."""

    reported_judge: str | None = None

    @property
    def judge(self) -> str | None:
        return self.reported_judge or super().judge


@dataclass
class Matched:
    pairs: list[tuple[im.Measurement, DataCollectionSpec]]
    unmatched: list[str]

    def summary(self, total: int) -> dict[str, Any]:
        return {
            "count": total,
            "matched": len(self.pairs),
            "unmatched": self.unmatched,
            "specNames": sorted({sp.name for _, sp in self.pairs}),
        }


def match_specs(measurements: list[im.Measurement], specs: list[DataCollectionSpec]) -> Matched:
    """Measurements → the step's specs by name (after dataSpecMap). A measurement that dataSpecMap sends to a
    spec the step lacks is DATA_SPEC_NOT_FOUND; other unknown names are readings nobody collects (kept in
    the event's payload and listed in its measurementSummary)."""
    by_name = {sp.name: sp for sp in specs}
    pairs: list[tuple[im.Measurement, DataCollectionSpec]] = []
    unmatched: list[str] = []
    for m in measurements:
        sp = by_name.get(m.spec_name)
        if sp is not None:
            pairs.append((m, sp))
        elif m.mapped:
            raise Rejected(
                "DATA_SPEC_NOT_FOUND",
                f"dataSpecMap sends measurement {m.name!r} to spec {m.spec_name!r}, which this step lacks",
            )
        else:
            unmatched.append(m.name)
    return Matched(pairs, unmatched)


def check_methods(matched: Matched) -> None:
    manual = sorted({sp.name for _, sp in matched.pairs if sp.method != "AUTO"})
    if manual:
        raise Rejected(
            "DATA_SPEC_METHOD_MISMATCH",
            f"Spec(s) {', '.join(manual)} are keyed in by hand (method MANUAL), not fed by equipment",
            details={"specNames": manual},
        )


def to_values(matched: Matched) -> list[IngestValue]:
    out: list[IngestValue] = []
    for m, sp in matched.pairs:
        try:
            value = im.coerce(sp.data_type, m.value)
        except (ValueError, TypeError) as exc:
            raise Rejected(
                "DATA_VALUE_INVALID",
                f"Measurement {m.name!r} = {m.value!r} is not a valid {sp.data_type} for spec {sp.name}",
            ) from exc
        field = {"NUMBER": "number", "TEXT": "text", "BOOLEAN": "boolean"}.get(sp.data_type, "json")
        out.append(IngestValue(spec=sp, reported_judge=m.judge, **{field: value}))
    return out


def emit_track_events(uow: UnitOfWork, ev: Event, track: Track, sn: str, station_code: str) -> None:
    """One ingest event is a track-in and a track-out at once: both outbox events, at the machine's time, so
    consumers such as time rules see equipment moves like manual ones."""
    now = ev.occurred_at
    for kind in ("TRACK_IN", "TRACK_OUT"):
        payload: dict[str, Any] = {
            "trackId": track.id,
            "runNo": ev.run.run_no,
            "sn": sn,
            "stationCode": station_code,
            "stepNo": track.step_no,
            "source": track.source,
            "ingestEventId": ev.row.id,
        }
        if kind == "TRACK_OUT":
            payload |= {"result": track.result, "routeVersionId": ev.run.route_version_id}
        uow.session.add(
            MesEvent(
                event_type=kind,
                status="PENDING",
                occurred_at=now,
                idempotency_key=f"mes-event:{kind}:{track.id}",
                entity_type="TRACK",
                entity_id=str(track.id),
                run_id=ev.run.id,
                retention_until=max(now, ev.row.received_at) + EVENT_RETENTION,
                payload=payload,
            )
        )
