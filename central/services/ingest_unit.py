"""AUTO / TEST ingest (domain.md §4.3 step 6): one unit passes one step in one event."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from central.db.models import Defect, Station, Track, Unit
from central.domain import route
from central.domain.errors import NotFound, Rejected
from central.domain.states import UNIT
from central.services import closeout, exec_guards
from central.services.data_collection import missing_required, specs_for_step
from central.services.execution import advance, close_rework_tasks, start_run, write_values
from central.services.ingest_common import (
    ACTION,
    INGEST_PERMS,
    Event,
    IngestValue,
    Matched,
    check_methods,
    emit_track_events,
    match_specs,
    renormalize,
    to_values,
)
from central.services.uow import UnitOfWork

# Ours: states §4.3 does not name for AUTO/TEST get the codes track-in uses (the unit cannot take the step).
_UNIT_STATE_CODES = {
    "DONE": "UNIT_ALREADY_DONE",
    "OUT_FAILED": "UNIT_OUT_FAILED",
    "IN_STATION": "UNIT_ALREADY_IN_STATION",
    "SCRAPPED": "UNIT_SCRAPPED",
    "ON_HOLD": "UNIT_ON_HOLD",
}
FAIL_DEFECT_CODE = "STATION_FAIL"


@dataclass
class Move:
    """One AUTO/TEST event past its guards: the move, its track (added, not flushed yet) and values."""

    ev: Event
    station: Station
    unit: Unit
    track: Track
    values: list[IngestValue]
    matched: Matched
    result: str


async def apply(uow: UnitOfWork, ev: Event) -> None:
    move = await prepare(uow, ev)
    await uow.session.flush()  # the track's id
    await finish(uow, move)
    await uow.session.flush()
    if move.unit.status == "DONE":
        await closeout.after_units_changed(uow, ev.run)


async def prepare(uow: UnitOfWork, ev: Event) -> Move:
    """Guards of §4.3 step 6 and the track. A batch (ingest_many) prepares all its events, flushes their
    tracks in one statement, then finishes them; a single event does the same with one."""
    s = uow.session
    norm, run = ev.norm, ev.run
    assert norm.sn is not None and norm.station_code is not None and norm.result is not None
    station = await exec_guards.station(uow, norm.station_code, INGEST_PERMS)
    unit = await _unit(uow, ev, norm.sn)
    step = _step(ev, unit, station)
    renormalize(ev, step)
    norm = ev.norm
    specs, bound = await specs_for_step(uow, step)
    matched = match_specs(norm.measurements, specs)
    _run_gate(ev, step)
    check_methods(matched)
    values = to_values(matched)
    result = norm.result
    assert result is not None
    if bound and result == "PASS" and (missing := missing_required(specs, values)):
        raise Rejected(
            "REQUIRED_DATA_MISSING",
            f"Required data missing: {', '.join(missing)}",
            details={"specNames": missing},
        )

    at = ev.occurred_at
    await start_run(uow, run, at)
    track = Track(
        unit_id=unit.id,
        step_no=unit.current_step_no,
        station_id=station.id,
        source=ev.event_type,
        in_at=at,
        out_at=at,
        result=result,
        meta={"ingestEventId": ev.row.id},
    )
    s.add(track)
    return Move(ev, station, unit, track, values, matched, result)


async def finish(uow: UnitOfWork, move: Move) -> None:
    """The rest of the move once its track has an id: values, the unit's step, the event row, outbox, audit.
    Close-out is the caller's (once per batch)."""
    s = uow.session
    ev, station, unit, track, result = move.ev, move.station, move.unit, move.track, move.result
    run, norm, at = ev.run, ev.norm, ev.occurred_at
    write_values(uow, move.values, track_id=track.id, source=ev.event_type, at=at, by=None)
    before = {"unitStatus": unit.status, "stepNo": unit.current_step_no}
    if result == "PASS":
        advance(unit, ev.version.snapshot_json, ingest=True)
        if _may_have_rework(uow, unit):
            await close_rework_tasks(uow, unit, track.step_no, at)
    else:
        # Ours (domain.md §4.3 "ours may add"): a FAIL from equipment records a defect like a FAIL track-out,
        # so the unit reaches the disposition queue the same way.
        UNIT.apply(unit, "ingest_fail")
        s.add(
            Defect(
                unit_id=unit.id,
                track_id=track.id,
                code=FAIL_DEFECT_CODE,
                qty=1,
                status="RECORDED",
                recorded_by=f"ingest:{ev.body.source_system}",
                meta={"ingestEventId": ev.row.id, "testResultId": norm.test_result_id},
            )
        )
    row = ev.row
    row.occurred_at = at
    row.run_id, row.unit_id, row.station_id, row.line_id = run.id, unit.id, station.id, run.line_id
    row.sn, row.result, row.test_result_id = unit.sn, result, norm.test_result_id
    row.normalized = norm.as_json()
    row.meta = _meta(ev, move.matched.summary(len(norm.measurements)), track.id)
    emit_track_events(uow, ev, track, unit.sn, station.code)
    uow.audit(
        row.id,
        f"{row.source_system}:{row.dedupe_key}",
        entity_type="INTEGRATION",
        action=ACTION,
        station_id=station.id,
        before=before,
        after={
            "eventType": ev.event_type,
            "runNo": run.run_no,
            "sn": unit.sn,
            "result": result,
            "trackId": track.id,
            "unitStatus": unit.status,
            "stepNo": unit.current_step_no,
        },
    )


def _may_have_rework(uow: UnitOfWork, unit: Unit) -> bool:
    # A batch loaded the units with open rework tasks at once; a single event asks the database.
    if uow.memo is None or ("rework", unit.id) not in uow.memo:
        return True
    return bool(uow.memo[("rework", unit.id)])


async def _unit(uow: UnitOfWork, ev: Event, sn: str) -> Unit:
    # Locked: two different events for one unit serialise (PostgreSQL); the second sees the first's move.
    # A batch loaded (and locked) its units at once.
    memo = uow.memo
    if memo is not None and ("unit", sn) in memo:
        unit = memo[("unit", sn)]
    else:
        unit = await uow.session.scalar(select(Unit).where(Unit.sn == sn).with_for_update())
    if unit is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    if unit.run_id != ev.run.id:
        raise Rejected("UNIT_RUN_MISMATCH", f"Unit {sn} does not belong to run {ev.run.run_no}")
    if unit.status in _UNIT_STATE_CODES:
        raise Rejected(_UNIT_STATE_CODES[unit.status], f"Unit {sn} is {unit.status}")
    return unit


def _step(ev: Event, unit: Unit, station: Station) -> route.Step:
    """The unit's current step, which must be of the event's type and fit the station."""
    step = route.step(ev.version.snapshot_json, unit.current_step_no)
    if (
        step is None
        or step.get("stationType") != ev.event_type
        or not route.station_fits(
            step, station_id=station.id, station_type=station.station_type, group_id=station.group_id
        )
    ):
        raise Rejected(
            "STATION_MISMATCH",
            f"Unit {unit.sn} is at step {unit.current_step_no}, which is not a {ev.event_type} step "
            f"station {station.code} can run",
            details={"units": {unit.sn: unit.current_step_no}},
        )
    return step


def _run_gate(ev: Event, step: route.Step) -> None:
    run = ev.run
    if step.get("requiresAuthorization"):
        if run.status not in ("AUTHORIZED", "IN_PROGRESS"):
            raise Rejected(
                "RUN_NOT_AUTHORIZED",
                f"Step {step['stepNo']} needs an authorized run; {run.run_no} is {run.status}",
            )
        return
    if run.status == "PREP":
        raise Rejected("RUN_IN_PREP", f"Run {run.run_no} is still in preparation")
    if run.status in ("COMPLETED", "CLOSED_REWORK", "SCRAPPED"):
        raise Rejected("RUN_CLOSED", f"Run {run.run_no} is {run.status}")


def _meta(ev: Event, summary: dict[str, object], track_id: int) -> dict[str, object]:
    meta: dict[str, object] = {
        "trackSource": ev.event_type,
        "trackId": track_id,
        "measurementSummary": summary,
    }
    if ev.body.meta:
        meta["clientMeta"] = ev.body.meta
    return meta
