"""The guards of track-in/out (domain.md §4.1/§4.2), one function each, in the documented order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from central.db.models import (
    ExecutableRouteVersion,
    Inspection,
    Run,
    Station,
    TpmEquipment,
    TpmMaintenanceTask,
    Track,
    Unit,
)
from central.domain import route
from central.domain.errors import Forbidden, NotFound, Rejected
from central.domain.permissions import DataScope
from central.services import gates
from central.services.runs import trial_units_tracked
from central.services.uow import UnitOfWork


@dataclass
class Context:
    """What the guards established, handed to the writes."""

    station: Station
    run: Run
    version: ExecutableRouteVersion
    trial: Inspection | None = None  # the INSPECTING FAI when this is an FAI-trial move
    unit: Unit | None = None
    step: route.Step | None = None


async def station(uow: UnitOfWork, code: str, perms: tuple[str, ...]) -> Station:
    memo = uow.memo  # a batch of equipment events reads each station once
    if memo is not None and ("station", code) in memo:
        st = memo[("station", code)]
    else:
        st = await uow.session.scalar(select(Station).where(Station.code == code))
        if memo is not None:
            memo[("station", code)] = st
    if st is None:
        raise NotFound("STATION_NOT_FOUND", f"Station {code} not found")
    # Ours (api.md): execution writes honour the caller's data scope; API keys are ALL-scoped.
    scope = uow.actor.scope_for(perms)
    if scope == DataScope.ASSIGNED_STATIONS and st.id not in uow.actor.station_ids:
        raise Forbidden("STATION_NOT_ASSIGNED", f"Station {code} is not assigned to you")
    if scope == DataScope.ASSIGNED_LINES and st.line_id not in uow.actor.line_ids:
        raise Forbidden("LINE_NOT_ASSIGNED", f"The line of station {code} is not assigned to you")
    return st


async def tpm(uow: UnitOfWork, st: Station) -> None:
    equipment = await uow.session.scalar(select(TpmEquipment).where(TpmEquipment.equipment_code == st.code))
    if equipment is None:  # no TPM record for this station: no gate
        return
    if (equipment.status or "").lower() != "normal":
        raise Rejected("TPM_EQUIPMENT_UNAVAILABLE", f"Equipment {st.code} is {equipment.status}")
    busy = await uow.session.scalar(
        select(func.count(TpmMaintenanceTask.id)).where(
            TpmMaintenanceTask.equipment_code == st.code,
            func.lower(TpmMaintenanceTask.status) == "in_progress",
        )
    )
    if busy:
        raise Rejected("TPM_MAINTENANCE_IN_PROGRESS", f"Maintenance is in progress on {st.code}")


async def run_for_station(uow: UnitOfWork, run_no: str, st: Station) -> tuple[Run, ExecutableRouteVersion]:
    run = await uow.session.scalar(select(Run).where(Run.run_no == run_no))
    if run is None:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    version = (
        await uow.session.get(ExecutableRouteVersion, run.route_version_id) if run.route_version_id else None
    )
    if version is None or version.status != "READY":
        raise Rejected("ROUTE_VERSION_NOT_READY", f"Run {run_no} has no READY route version")
    if run.line_id != st.line_id:
        raise Rejected("STATION_LINE_MISMATCH", f"Station {st.code} is not on the line of run {run_no}")
    return run, version


async def run_status(uow: UnitOfWork, run: Run) -> Inspection | None:
    """AUTHORIZED/IN_PROGRESS pass; PREP passes only as an FAI trial (returns that FAI)."""
    if run.status in ("AUTHORIZED", "IN_PROGRESS"):
        return None
    if run.status != "PREP":
        raise Rejected("RUN_NOT_AUTHORIZED", f"Run {run.run_no} is {run.status}")
    await gates.readiness_gate(uow, run)
    fai = await gates.latest_fai(uow, run)
    if fai is not None and fai.status == "INSPECTING" and fai.started_at is not None:
        return fai
    if fai is not None and fai.status == "PASS":
        raise Rejected("RUN_NOT_AUTHORIZED", f"Run {run.run_no} passed FAI but is not authorized yet")
    raise Rejected(
        "FAI_TRIAL_NOT_READY", f"Run {run.run_no} is PREP and no first-article inspection is running"
    )


async def unit(uow: UnitOfWork, sn: str, run: Run, *, lock: bool) -> Unit:
    stmt = select(Unit).where(Unit.sn == sn)
    if lock:  # serialises concurrent moves of one unit on PostgreSQL (SQLite writers are serial already)
        stmt = stmt.with_for_update()
    u = await uow.session.scalar(stmt)
    if u is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    if u.wo_id != run.wo_id:
        raise Rejected("UNIT_WORK_ORDER_MISMATCH", f"Unit {sn} belongs to another work order")
    if u.run_id is not None and u.run_id != run.id:
        raise Rejected("UNIT_RUN_MISMATCH", f"Unit {sn} belongs to another run")
    return u


_UNIT_STATE_CODES = {
    "IN_STATION": "UNIT_ALREADY_IN_STATION",
    "DONE": "UNIT_ALREADY_DONE",
    "OUT_FAILED": "UNIT_OUT_FAILED",
    "SCRAPPED": "UNIT_SCRAPPED",
    "ON_HOLD": "UNIT_ON_HOLD",
}


def unit_can_enter(u: Unit) -> None:
    if u.status in _UNIT_STATE_CODES:
        raise Rejected(_UNIT_STATE_CODES[u.status], f"Unit {u.sn} is {u.status}")


def current_step(u: Unit, version: ExecutableRouteVersion) -> route.Step:
    if not route.steps(version.snapshot_json):
        raise Rejected("ROUTING_EMPTY", "The run's route version has no steps")
    st = route.step(version.snapshot_json, u.current_step_no)
    if st is None:
        raise Rejected("STEP_MISMATCH", f"Unit {u.sn} is at step {u.current_step_no}, which the route lacks")
    return st


async def trial_limits(uow: UnitOfWork, ctx: Context, u: Unit, st: route.Step, *, entering: bool) -> None:
    if ctx.trial is None:
        return
    if int(st["stepNo"]) != route.first_step_no(ctx.version.snapshot_json):
        raise Rejected("FAI_TRIAL_STEP_NOT_ALLOWED", "During the FAI trial only the first step may run")
    if entering:
        tracked = await trial_units_tracked(uow, ctx.run, ctx.trial)
        seen = await _unit_tracked_since(uow, u, ctx.trial)
        if tracked >= ctx.trial.sample_qty and not seen:
            raise Rejected(
                "FAI_TRIAL_LIMIT_REACHED",
                f"The FAI trial already tracked {tracked} of {ctx.trial.sample_qty} sample units",
            )


async def _unit_tracked_since(uow: UnitOfWork, u: Unit, fai: Inspection) -> bool:
    n = await uow.session.scalar(
        select(func.count(Track.id)).where(Track.unit_id == u.id, Track.in_at >= fai.started_at)
    )
    return bool(n)


def station_fits(st_row: Station, step: route.Step) -> None:
    if not route.station_fits(
        step, station_id=st_row.id, station_type=st_row.station_type, group_id=st_row.group_id
    ):
        raise Rejected("STATION_MISMATCH", f"Station {st_row.code} cannot run step {step['stepNo']}")


def step_operation_id(step: route.Step) -> Any:
    return step.get("operationId")
