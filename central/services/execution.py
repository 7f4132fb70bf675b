"""Track-in and track-out (domain.md §4.1, §4.2): guards in order, then one transaction of writes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from central.db.models import (
    DataValue,
    Defect,
    Disposition,
    InspectionResultRecord,
    MesEvent,
    Operation,
    ReworkTask,
    Run,
    Track,
    Unit,
    WorkOrder,
)
from central.domain import route
from central.domain.clock import iso, utcnow
from central.domain.errors import Rejected
from central.domain.states import DEFECT, REWORK_TASK, RUN, UNIT
from central.schemas.execution import TrackIn, TrackOut
from central.services import closeout, exec_guards
from central.services.data_collection import Value, missing_required, parse_values, specs_for_step
from central.services.uow import UnitOfWork

TRACK_IN_PERMS = ("exec:track_in",)
TRACK_OUT_PERMS = ("exec:track_out",)


async def _gate(
    uow: UnitOfWork, station_code: str, run_no: str, perms: tuple[str, ...], *, tpm: bool
) -> exec_guards.Context:
    """Guards 1–4 shared by track-in and track-out: station, scope, TPM, run, line, run status / FAI trial."""
    station = await exec_guards.station(uow, station_code, perms)
    if tpm:
        await exec_guards.tpm(uow, station)
    run, version = await exec_guards.run_for_station(uow, run_no, station)
    trial = await exec_guards.run_status(uow, run)
    return exec_guards.Context(station=station, run=run, version=version, trial=trial)


async def start_run(uow: UnitOfWork, run: Run, at: datetime) -> None:
    """AUTHORIZED → IN_PROGRESS on the first move; a conditional update so concurrent first moves agree."""
    if run.status != "AUTHORIZED":
        return
    target = RUN.target(run.status, "start")
    res = await uow.session.execute(
        update(Run)
        .where(Run.id == run.id, Run.status == "AUTHORIZED")
        .values(status=target, started_at=at)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount:
        uow.audit(
            run.id,
            run.run_no,
            entity_type="RUN",
            action="RUN_START",
            before={"status": "AUTHORIZED"},
            after={"status": target, "startedAt": iso(at)},
        )
    await uow.session.refresh(run, ["status", "started_at"])


async def _operation_code(uow: UnitOfWork, step: route.Step) -> str | None:
    return await uow.session.scalar(select(Operation.code).where(Operation.id == step.get("operationId")))


def _emit(uow: UnitOfWork, kind: str, track: Track, run: Run, unit: Unit, payload: dict[str, Any]) -> None:
    """Outbox event for consumers such as time rules (domain.md §2 MesEvent), written in this transaction."""
    now = utcnow()
    uow.session.add(
        MesEvent(
            event_type=kind,
            status="PENDING",
            occurred_at=now,
            idempotency_key=f"mes-event:{kind}:{track.id}",
            entity_type="TRACK",
            entity_id=str(track.id),
            run_id=run.id,
            retention_until=now + timedelta(days=30),
            payload={"trackId": track.id, "runNo": run.run_no, "sn": unit.sn, **payload},
        )
    )


async def track_in(uow: UnitOfWork, station_code: str, body: TrackIn) -> dict[str, Any]:
    s = uow.session
    ctx = await _gate(uow, station_code, body.run_no, TRACK_IN_PERMS, tpm=True)
    run = ctx.run
    wo = await s.get(WorkOrder, run.wo_id)
    assert wo is not None
    if wo.wo_no != body.wo_no:
        raise Rejected("RUN_WORK_ORDER_MISMATCH", f"Run {run.run_no} belongs to work order {wo.wo_no}")
    if wo.routing_id is None:
        raise Rejected("WORK_ORDER_NO_ROUTING", f"Work order {wo.wo_no} has no routing")
    unit = await exec_guards.unit(uow, body.sn, run, lock=True)
    exec_guards.unit_can_enter(unit)
    step = exec_guards.current_step(unit, ctx.version)
    await exec_guards.trial_limits(uow, ctx, unit, step, entering=True)
    exec_guards.station_fits(ctx.station, step)
    now = utcnow()
    await start_run(uow, run, now)
    if unit.run_id is None:
        unit.run_id = run.id
    open_track = await s.scalar(
        select(func.count(Track.id)).where(
            Track.unit_id == unit.id, Track.step_no == unit.current_step_no, Track.out_at.is_(None)
        )
    )
    if open_track:
        raise Rejected(
            "ACTIVE_TRACK_EXISTS", f"Unit {unit.sn} already has an open track at step {unit.current_step_no}"
        )
    meta = {"executionMode": "FAI_TRIAL", "faiId": ctx.trial.id} if ctx.trial else {}
    track = Track(
        unit_id=unit.id,
        step_no=unit.current_step_no,
        station_id=ctx.station.id,
        source="MANUAL",
        in_at=now,
        operator_id=_operator(uow),
        meta=meta,
    )
    s.add(track)
    before = unit.status
    UNIT.apply(unit, "track_in")
    await s.flush()
    op = await _operation_code(uow, step)
    _emit(
        uow,
        "TRACK_IN",
        track,
        run,
        unit,
        {"stationCode": ctx.station.code, "stepNo": track.step_no, "operationCode": op},
    )
    uow.audit(
        track.id,
        unit.sn,
        entity_type="TRACK",
        action="TRACK_IN",
        station_id=ctx.station.id,
        before={"unitStatus": before},
        after={"unitStatus": unit.status, "stepNo": track.step_no, "stationCode": ctx.station.code},
    )
    return {"status": unit.status, "track_id": track.id, "step_no": track.step_no}


def _operator(uow: UnitOfWork, given: str | None = None) -> str | None:
    return given or (str(uow.actor.user_id) if uow.actor.user_id is not None else None)


async def track_out(uow: UnitOfWork, station_code: str, body: TrackOut) -> dict[str, Any]:
    s = uow.session
    ctx = await _gate(uow, station_code, body.run_no, TRACK_OUT_PERMS, tpm=False)
    run = ctx.run
    unit = await exec_guards.unit(uow, body.sn, run, lock=True)
    track = await s.scalar(
        select(Track)
        .where(
            Track.unit_id == unit.id,
            Track.step_no == unit.current_step_no,
            Track.station_id == ctx.station.id,
            Track.out_at.is_(None),
        )
        .order_by(Track.id.desc())
        .limit(1)
    )
    if track is None or unit.status != "IN_STATION":
        raise Rejected("TRACK_NOT_FOUND", f"Unit {unit.sn} has no open track at {ctx.station.code}")
    result, override = body.result, False
    spi_fail = await s.scalar(
        select(func.count(InspectionResultRecord.id)).where(
            InspectionResultRecord.track_id == track.id, InspectionResultRecord.result == "FAIL"
        )
    )
    if spi_fail and result == "PASS":
        result, override = "FAIL", True
    step = exec_guards.current_step(unit, ctx.version)
    await exec_guards.trial_limits(uow, ctx, unit, step, entering=False)
    exec_guards.station_fits(ctx.station, step)
    specs, bound = await specs_for_step(uow, step)
    values = parse_values([d.model_dump() for d in body.data], specs)
    if bound and result == "PASS" and (missing := missing_required(specs, values)):
        raise Rejected(
            "REQUIRED_DATA_MISSING",
            f"Required data missing: {', '.join(missing)}",
            details={"specNames": missing},
        )
    now = utcnow()
    closed = await s.execute(
        update(Track)
        .where(Track.id == track.id, Track.out_at.is_(None))
        .values(out_at=now, result=result, operator_id=_operator(uow, body.operator_id))
        .execution_options(synchronize_session=False)
    )
    if not closed.rowcount:  # a concurrent track-out won the race
        raise Rejected("TRACK_NOT_FOUND", f"Unit {unit.sn} has no open track at {ctx.station.code}")
    await s.refresh(track)
    write_values(uow, values, track_id=track.id, source="MANUAL", at=now, by=_operator(uow, body.operator_id))
    before = {"unitStatus": unit.status, "stepNo": unit.current_step_no}
    out: dict[str, Any] = {"track_id": track.id, "step_no": track.step_no}
    if result == "PASS":
        nxt = advance(unit, ctx.version.snapshot_json, ingest=False)
        out["next_step_no"] = nxt
        await close_rework_tasks(uow, unit, track.step_no, now)
    else:
        UNIT.apply(unit, "fail")
        defect = Defect(
            unit_id=unit.id,
            track_id=track.id,
            code=body.defect_code or "STATION_FAIL",
            location=body.defect_location,
            qty=1,
            status="RECORDED",
            recorded_by=_operator(uow, body.operator_id),
            meta={"remark": body.defect_remark} if body.defect_remark else {},
        )
        s.add(defect)
        await s.flush()
        out["defect_id"] = defect.id
    await s.flush()
    op = await _operation_code(uow, step)
    _emit(
        uow,
        "TRACK_OUT",
        track,
        run,
        unit,
        {
            "stationCode": ctx.station.code,
            "stepNo": track.step_no,
            "operationCode": op,
            "result": result,
            "routeVersionId": run.route_version_id,
        },
    )
    uow.audit(
        track.id,
        unit.sn,
        entity_type="TRACK",
        action="TRACK_OUT",
        station_id=ctx.station.id,
        before=before,
        after={"unitStatus": unit.status, "stepNo": unit.current_step_no, "result": result},
    )
    if unit.status == "DONE":
        await closeout.after_units_changed(uow, run)
    out["status"] = unit.status
    if override:
        out["inspection_override"] = True
    return out


def advance(unit: Unit, snapshot: dict[str, Any], *, ingest: bool) -> int | None:
    """PASS: to the next stepNo in sorted order (QUEUED), or DONE after the last step. → the next stepNo."""
    nxt = route.next_step_no(snapshot, unit.current_step_no)
    prefix = "ingest_" if ingest else ""
    if nxt is None:
        UNIT.apply(unit, f"{prefix}pass_last")
    else:
        UNIT.apply(unit, f"{prefix}pass_next")
        unit.current_step_no = nxt
    return nxt


def write_values(
    uow: UnitOfWork,
    values: list[Value],
    *,
    track_id: int | None = None,
    carrier_track_id: int | None = None,
    source: str,
    at: datetime,
    by: str | None,
) -> None:
    uow.session.add_all(
        [
            DataValue(
                spec_id=v.spec.id,
                track_id=track_id,
                carrier_track_id=carrier_track_id,
                value_number=v.number,
                value_text=v.text,
                value_boolean=v.boolean,
                value_json=v.json,
                judge=v.judge,
                alarmed=False,
                source=source,
                collected_at=at,
                collected_by=by,
            )
            for v in values
        ]
    )


async def close_rework_tasks(uow: UnitOfWork, unit: Unit, step_no: int, at: datetime) -> None:
    """A PASS at or after a rework task's failure step completes it and closes its defect (domain.md §3)."""
    s = uow.session
    tasks = (
        await s.scalars(
            select(ReworkTask).where(
                ReworkTask.unit_id == unit.id, ReworkTask.status == "OPEN", ReworkTask.from_step_no <= step_no
            )
        )
    ).all()
    for task in tasks:
        REWORK_TASK.apply(task, "complete")
        task.done_at, task.done_by = at, "system:auto"
        defect = await s.scalar(
            select(Defect)
            .join(Disposition, Disposition.defect_id == Defect.id)
            .where(Disposition.id == task.disposition_id)
        )
        if defect is not None and defect.status == "DISPOSITIONED":
            DEFECT.apply(defect, "close")
