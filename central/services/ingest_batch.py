"""BATCH ingest (domain.md §4.3 step 7): a carrier of units passes one BATCH step, all or nothing.

Units are read without row locks and moved by one conditional update ("still QUEUED at that step"): if another
transaction moved any of them in between, the count differs and the whole event rolls back (INGEST_CONFLICT).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from central.db.models import Carrier, CarrierLoad, CarrierTrack, Defect, Station, Track, Unit
from central.domain import ingest_mapping as im
from central.domain import route
from central.domain.errors import NotFound, Rejected
from central.domain.states import UNIT
from central.services import closeout, exec_guards
from central.services.data_collection import missing_required, specs_for_step
from central.services.execution import close_rework_tasks, start_run, write_values
from central.services.ingest_common import (
    ACTION,
    INGEST_PERMS,
    Event,
    check_methods,
    emit_track_events,
    match_specs,
    renormalize,
    to_values,
)
from central.services.ingest_unit import FAIL_DEFECT_CODE
from central.services.uow import UnitOfWork

_UNIT_STATE_CODES = {
    "IN_STATION": "UNIT_ALREADY_IN_STATION",
    "DONE": "UNIT_ALREADY_DONE",
    "OUT_FAILED": "UNIT_OUT_FAILED",
    "SCRAPPED": "UNIT_SCRAPPED",
    "ON_HOLD": "UNIT_ON_HOLD",
}


async def apply(uow: UnitOfWork, ev: Event) -> None:
    s = uow.session
    norm, run = ev.norm, ev.run
    if norm.batch_policy != im.ALL_OR_NOTHING:
        raise Rejected(
            "BATCH_POLICY_NOT_SUPPORTED", f"batchPolicy {norm.batch_policy!r}: only ALL_OR_NOTHING is known"
        )
    if run.status not in ("AUTHORIZED", "IN_PROGRESS"):
        raise Rejected("RUN_NOT_AUTHORIZED", f"Run {run.run_no} is {run.status}")
    if norm.result is None:
        raise Rejected(im.PAYLOAD_INVALID, f"Result {norm.result_raw!r} is neither a pass nor a fail value")
    result = norm.result
    assert norm.sn_list and norm.carrier_code
    units = await _units(uow, ev, norm.sn_list)
    step = _step(ev, units)
    station = await _station(uow, norm.station_code, step)
    renormalize(ev, step)
    norm = ev.norm
    specs, bound = await specs_for_step(uow, step)
    matched = match_specs(norm.measurements, specs)
    if bound:
        per_unit = sorted(sp.name for sp in specs if sp.is_required and sp.trigger_type != "EACH_CARRIER")
        if per_unit:
            raise Rejected(
                "DATA_SPEC_TRIGGER_MISMATCH",
                f"Required spec(s) {', '.join(per_unit)} are not collected per carrier (EACH_CARRIER)",
                details={"specNames": per_unit},
            )
    check_methods(matched)
    values = to_values(matched)
    if bound and result == "PASS" and (missing := missing_required(specs, values)):
        raise Rejected(
            "REQUIRED_DATA_MISSING",
            f"Required data missing: {', '.join(missing)}",
            details={"specNames": missing},
        )

    at = ev.occurred_at
    step_no = int(step["stepNo"])
    await start_run(uow, run, at)
    carrier = await _carrier(uow, norm.carrier_code)
    ct = CarrierTrack(
        carrier_id=carrier.id,
        run_id=run.id,
        step_no=step_no,
        station_id=station.id,
        source="BATCH",
        in_at=at,
        out_at=at,
        result=result,
        meta={"ingestEventId": ev.row.id},
    )
    s.add(ct)
    await s.flush()
    await _reconcile_loads(uow, carrier, units, at)
    tracks = [
        Track(
            unit_id=u.id,
            step_no=step_no,
            station_id=station.id,
            source="BATCH",
            in_at=at,
            out_at=at,
            result=result,
            meta={"ingestEventId": ev.row.id, "carrierTrackId": ct.id, "carrierNo": carrier.carrier_no},
        )
        for u in units
    ]
    s.add_all(tracks)
    await s.flush()
    write_values(uow, values, carrier_track_id=ct.id, source="BATCH", at=at, by=None)
    status = await _move_units(uow, ev, units, step_no, result)
    if result == "PASS":
        for u in units:
            await close_rework_tasks(uow, u, step_no, at)
    else:  # Ours, as for AUTO/TEST: every failed unit gets a RECORDED defect
        s.add_all(
            Defect(
                unit_id=t.unit_id,
                track_id=t.id,
                code=FAIL_DEFECT_CODE,
                qty=1,
                status="RECORDED",
                recorded_by=f"ingest:{ev.body.source_system}",
                meta={"ingestEventId": ev.row.id, "carrierNo": carrier.carrier_no},
            )
            for t in tracks
        )
    sn_of = {u.id: u.sn for u in units}
    row = ev.row
    row.occurred_at = at
    row.run_id, row.station_id, row.line_id, row.carrier_id = run.id, station.id, run.line_id, carrier.id
    row.sn_list, row.result = [u.sn for u in units], result
    row.normalized = norm.as_json()
    meta: dict[str, object] = {
        "trackSource": "BATCH",
        # Ids as strings: links are references for clients, not numbers to compute with.
        "links": {
            "carrierId": str(carrier.id),
            "carrierTrackId": str(ct.id),
            "unitTracks": {sn_of[t.unit_id]: str(t.id) for t in tracks},
            "carrierDataValueCount": len(values),
        },
        "batch": {
            "policy": norm.batch_policy,
            "carrierNo": carrier.carrier_no,
            "stepNo": step_no,
            "stationCode": station.code,
            "unitCount": len(units),
            "unitStatus": status,
        },
        "measurementSummary": matched.summary(len(norm.measurements)),
    }
    if ev.body.meta:
        meta["clientMeta"] = ev.body.meta
    row.meta = meta
    await s.flush()
    for t in tracks:
        emit_track_events(uow, ev, t, sn_of[t.unit_id], station.code)
    uow.audit(
        row.id,
        f"{row.source_system}:{row.dedupe_key}",
        entity_type="INTEGRATION",
        action=ACTION,
        station_id=station.id,
        after={
            "eventType": "BATCH",
            "runNo": run.run_no,
            "carrierNo": carrier.carrier_no,
            "snList": row.sn_list,
            "result": result,
            "carrierTrackId": ct.id,
            "unitStatus": status,
        },
    )
    if status == "DONE":
        await closeout.after_units_changed(uow, run)


async def _units(uow: UnitOfWork, ev: Event, sns: list[str]) -> list[Unit]:
    """The listed units in list order: all exist, all in the run, all able to take a step."""
    rows = {
        u.sn: u
        for u in (await uow.session.scalars(select(Unit).where(Unit.sn.in_(sns)).order_by(Unit.id))).all()
    }
    missing = [sn for sn in sns if sn not in rows]
    if missing:
        raise NotFound("UNIT_NOT_FOUND", f"Unit(s) not found: {', '.join(missing)}", details={"sns": missing})
    foreign = [sn for sn in sns if rows[sn].run_id != ev.run.id]
    if foreign:
        raise Rejected(
            "RUN_MISMATCH",
            f"Unit(s) {', '.join(foreign)} do not belong to run {ev.run.run_no}",
            details={"sns": foreign},
        )
    units = [rows[sn] for sn in sns]
    for u in units:
        if u.status in _UNIT_STATE_CODES:
            raise Rejected(_UNIT_STATE_CODES[u.status], f"Unit {u.sn} is {u.status}", details={"sn": u.sn})
    return units


def _step(ev: Event, units: list[Unit]) -> route.Step:
    steps = sorted({u.current_step_no for u in units})
    if len(steps) > 1:
        raise Rejected(
            "STEP_MISMATCH",
            f"The units are at different steps ({', '.join(map(str, steps))}); a batch moves one step",
            details={"stepNos": steps, "units": {u.sn: u.current_step_no for u in units}},
        )
    step = route.step(ev.version.snapshot_json, steps[0])
    if step is None or step.get("stationType") != "BATCH":
        raise Rejected(
            "STEP_MISMATCH",
            f"The units are at step {steps[0]}, which is not a BATCH step",
            details={"units": {u.sn: u.current_step_no for u in units}},
        )
    return step


async def _station(uow: UnitOfWork, code: str | None, step: route.Step) -> Station:
    if code is None:
        # A compiled step always has a group or allowed stations, and every unit track needs its station.
        raise Rejected(
            im.PAYLOAD_INVALID,
            f"stationCode is required: step {step['stepNo']} is bound to a station group or station list",
            details={"missing": ["stationCode"]},
        )
    station = await exec_guards.station(uow, code, INGEST_PERMS)
    exec_guards.station_fits(station, step)
    return station


async def _carrier(uow: UnitOfWork, carrier_no: str) -> Carrier:
    """The carrier by number, created on first use (a concurrent first use loses only its savepoint)."""
    s = uow.session
    carrier = await s.scalar(select(Carrier).where(Carrier.carrier_no == carrier_no))
    if carrier is not None:
        return carrier
    carrier = Carrier(carrier_no=carrier_no, status="IDLE", meta={})
    try:
        async with s.begin_nested():
            s.add(carrier)
            await s.flush()
    except IntegrityError:
        found = await s.scalar(select(Carrier).where(Carrier.carrier_no == carrier_no))
        if found is None:
            raise
        return found
    return carrier


async def _reconcile_loads(uow: UnitOfWork, carrier: Carrier, units: list[Unit], at: datetime) -> None:
    """The carrier now holds exactly the listed units: its other open loads end; a listed unit still open on
    another carrier is taken off it (ours: a board is on one carrier at a time); missing loads start."""
    s = uow.session
    ids = {u.id for u in units}
    open_loads = (
        await s.scalars(
            select(CarrierLoad).where(
                CarrierLoad.unloaded_at.is_(None),
                (CarrierLoad.carrier_id == carrier.id) | CarrierLoad.unit_id.in_(ids),
            )
        )
    ).all()
    kept: set[int] = set()
    for load in open_loads:
        if load.carrier_id == carrier.id and load.unit_id in ids:
            kept.add(load.unit_id)
        else:
            load.unloaded_at = max(at, load.loaded_at)  # a late replay never ends a load before it began
    s.add_all(
        CarrierLoad(carrier_id=carrier.id, unit_id=u.id, loaded_at=at, meta={})
        for u in units
        if u.id not in kept
    )


async def _move_units(uow: UnitOfWork, ev: Event, units: list[Unit], step_no: int, result: str) -> str:
    """Every listed unit, still QUEUED at `step_no`, moves at once; a concurrent change → INGEST_CONFLICT."""
    if result == "PASS":
        nxt = route.next_step_no(ev.version.snapshot_json, step_no)
        action = "ingest_pass_last" if nxt is None else "ingest_pass_next"
    else:
        nxt, action = None, "ingest_fail"
    target = UNIT.target("QUEUED", action)
    values: dict[str, object] = {"status": target}
    if nxt is not None:
        values["current_step_no"] = nxt
    res = await uow.session.execute(
        update(Unit)
        .where(Unit.id.in_([u.id for u in units]), Unit.status == "QUEUED", Unit.current_step_no == step_no)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != len(units):
        raise Rejected(
            "INGEST_CONFLICT",
            f"{len(units) - res.rowcount} of {len(units)} units changed while the batch was applied; "
            "nothing was recorded, resend the event",
        )
    for u in units:  # the rows were updated in SQL: bring the loaded objects up to date
        await uow.session.refresh(u, ["status", "current_step_no"])
    return target
