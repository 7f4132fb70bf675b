"""What the SPI/AOI and device-data receivers share (domain.md §4.4, §4.5, §1 idempotency).

A receipt is stored once per `eventId`: the unique index decides, so two deliveries of one event racing
each other (edge resend, two central workers) give one record and one duplicate answer. Context (run, unit,
station, step) is read from the run's frozen route version, never from the live routing.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    DeviceDataRecord,
    ExecutableRouteVersion,
    InspectionResultRecord,
    IntegrationMessage,
    Run,
    Station,
    Unit,
)
from central.domain import route
from central.domain.errors import NotFound, Rejected
from central.services.uow import UnitOfWork

PERMS = ("system:integration",)
SYSTEM = "DEVICE"

Receipt = InspectionResultRecord | DeviceDataRecord
R = TypeVar("R", InspectionResultRecord, DeviceDataRecord)


def require_operator(source: str, operator_id: str | None) -> None:
    if source == "MANUAL" and not operator_id:
        raise Rejected("OPERATOR_REQUIRED", "A MANUAL entry needs the operatorId of who keyed it in")


async def by_event_id(uow: UnitOfWork, model: type[R], event_id: str) -> R | None:
    row: R | None = await uow.session.scalar(select(model).where(model.event_id == event_id))
    return row


async def insert_once(uow: UnitOfWork, row: Receipt) -> bool:
    """Adds the receipt in a savepoint; False when a concurrent receipt of its eventId got there first."""
    s = uow.session
    try:
        # Losing the race undoes only this savepoint, not the caller's transaction.
        async with s.begin_nested():
            s.add(row)
            await s.flush()
    except IntegrityError:
        if await by_event_id(uow, type(row), row.event_id) is None:
            raise  # another constraint failed: not a duplicate
        return False
    return True


def log_message(
    uow: UnitOfWork,
    *,
    entity_type: str,
    dedupe_prefix: str,
    business_key: str | None,
    event_id: str,
    body: BaseModel,
    status: str,
    meta: dict[str, Any],
) -> None:
    """The integration-log row of one receipt (SUCCESS or DUPLICATE), kept for diagnosis."""
    uow.session.add(
        IntegrationMessage(
            direction="IN",
            system=SYSTEM,
            entity_type=entity_type,
            business_key=business_key,
            dedupe_key=f"{dedupe_prefix}:{event_id}",
            status=status,
            payload=body.model_dump(mode="json", by_alias=True, exclude_none=True),
            meta=meta,
        )
    )


async def find_run(uow: UnitOfWork, run_no: str) -> Run:
    run = await uow.session.scalar(select(Run).where(Run.run_no == run_no))
    if run is None:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    return run


async def find_unit(uow: UnitOfWork, sn: str, run: Run) -> Unit:
    unit = await uow.session.scalar(select(Unit).where(Unit.sn == sn))
    if unit is None:
        raise NotFound("UNIT_NOT_FOUND", f"Unit {sn} not found")
    if unit.run_id != run.id:
        raise Rejected("UNIT_RUN_MISMATCH", f"Unit {sn} does not belong to run {run.run_no}")
    return unit


async def find_station(uow: UnitOfWork, code: str) -> Station:
    station = await uow.session.scalar(select(Station).where(Station.code == code))
    if station is None:
        raise NotFound("STATION_NOT_FOUND", f"Station {code} not found")
    return station


async def snapshot_step(uow: UnitOfWork, run: Run, step_no: int) -> route.Step:
    """The step of the run's frozen route version (a run without one has no steps at all)."""
    version = (
        await uow.session.get(ExecutableRouteVersion, run.route_version_id) if run.route_version_id else None
    )
    step = route.step(version.snapshot_json if version else None, step_no)
    if step is None:
        raise Rejected("STEP_MISMATCH", f"Step {step_no} is not a step of run {run.run_no}'s route version")
    return step
