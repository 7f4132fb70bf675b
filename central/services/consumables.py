"""Stencil / solder-paste status receivers and line bindings (domain.md §9 Push, §2, §1 idempotency, §11).

Status records are append-only; the status that counts is the latest by `eventTime` (ties: the later arrival),
so a late replay of buffered device events never overrides a newer manual entry. A line has at most one
current stencil and one current paste lot; the binding tables keep the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    IntegrationMessage,
    Line,
    LineSolderPaste,
    LineStencil,
    MesEvent,
    SolderPasteStatusRecord,
    StencilStatusRecord,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, Forbidden, Rejected
from central.schemas.consumables import SolderPasteBind, SolderPasteStatusIn, StencilBind, StencilStatusIn
from central.services.plant import flush_or, get_line_row
from central.services.uow import UnitOfWork
from central.services.work_orders import scoped_line_ids

VIEW_PERMS = ("loading:view", "loading:config", "readiness:view")
CONFIG_PERMS = ("loading:config",)
# Device clocks drift; an eventTime further ahead than this would pin "latest" for hours, so it is refused.
FUTURE_TOLERANCE = timedelta(minutes=10)
EVENT_RETENTION = timedelta(days=30)
PASTE_CREATE = "SOLDER_PASTE_USAGE_CREATE"
PASTE_UNBIND = "SOLDER_PASTE_USAGE_UNBIND"

Record = StencilStatusRecord | SolderPasteStatusRecord
Binding = LineStencil | LineSolderPaste


@dataclass(frozen=True)
class Kind:
    """What differs between the stencil and the solder-paste flavour of the same workflow."""

    record: type[StencilStatusRecord] | type[SolderPasteStatusRecord]
    binding: type[LineStencil] | type[LineSolderPaste]
    key: str  # column naming the consumable: stencil_id | lot_id
    system: str  # IntegrationMessage.system
    entity_type: str  # IntegrationMessage.entityType
    dedupe_prefix: str
    receive_action: str
    bind_action: str
    unbind_action: str
    no_current: str
    label: str


STENCIL = Kind(
    StencilStatusRecord,
    LineStencil,
    "stencil_id",
    "STENCIL",
    "STENCIL_STATUS",
    "stencil-status",
    "STENCIL_STATUS_RECEIVE",
    "LINE_STENCIL_BIND",
    "LINE_STENCIL_UNBIND",
    "NO_CURRENT_STENCIL",
    "stencil",
)
PASTE = Kind(
    SolderPasteStatusRecord,
    LineSolderPaste,
    "lot_id",
    "SOLDER_PASTE",
    "SOLDER_PASTE_STATUS",
    "solder-paste-status",
    "SOLDER_PASTE_STATUS_RECEIVE",
    "LINE_SOLDER_PASTE_BIND",
    "LINE_SOLDER_PASTE_UNBIND",
    "NO_CURRENT_SOLDER_PASTE",
    "solder paste lot",
)


# ---- status receivers ------------------------------------------------------------------------------------


async def receive_stencil_status(uow: UnitOfWork, body: StencilStatusIn) -> dict[str, Any]:
    return await _receive(uow, STENCIL, body)


async def receive_paste_status(uow: UnitOfWork, body: SolderPasteStatusIn) -> dict[str, Any]:
    return await _receive(uow, PASTE, body)


def _check(body: StencilStatusIn | SolderPasteStatusIn) -> None:
    if body.source == "MANUAL" and not body.operator_id:
        raise Rejected("OPERATOR_REQUIRED", "A MANUAL status needs the operatorId of who entered it")
    if body.event_time > utcnow() + FUTURE_TOLERANCE:
        raise Rejected(
            "EVENT_TIME_IN_FUTURE",
            f"eventTime {iso(body.event_time)} is more than {FUTURE_TOLERANCE} ahead of the server clock",
        )


async def _by_event_id(uow: UnitOfWork, kind: Kind, event_id: str) -> Record | None:
    row: Record | None = await uow.session.scalar(select(kind.record).where(kind.record.event_id == event_id))
    return row


async def _receive(
    uow: UnitOfWork, kind: Kind, body: StencilStatusIn | SolderPasteStatusIn
) -> dict[str, Any]:
    _check(body)
    s = uow.session
    original = await _by_event_id(uow, kind, body.event_id)
    if original is None:
        row = kind.record(**body.model_dump(), received_at=utcnow(), meta={})
        try:
            async with s.begin_nested():  # a concurrent receipt of the same eventId loses only this savepoint
                s.add(row)
                await s.flush()
        except IntegrityError:
            original = await _by_event_id(uow, kind, body.event_id)
            if original is None:
                raise
        else:
            _log(uow, kind, body, row, "SUCCESS")
            uow.audit(
                row.id,
                getattr(row, kind.key),
                entity_type="INTEGRATION",
                action=kind.receive_action,
                after={"eventId": row.event_id, "status": row.status, "source": row.source},
            )
            return _receipt(kind, row, duplicate=False)
    _log(uow, kind, body, original, "DUPLICATE")
    uow.audit(
        original.id,
        getattr(original, kind.key),
        entity_type="INTEGRATION",
        action=kind.receive_action,
        payload={"eventId": body.event_id, "isDuplicate": True},
    )
    return _receipt(kind, original, duplicate=True)


def _log(
    uow: UnitOfWork, kind: Kind, body: StencilStatusIn | SolderPasteStatusIn, row: Record, status: str
) -> None:
    """The integration log row of this receipt; a replay whose content differs is flagged for diagnosis."""
    meta: dict[str, Any] = {"recordId": row.id, "source": body.source}
    if status == "DUPLICATE":
        meta["payloadDiffers"] = (getattr(row, kind.key), row.status, row.event_time) != (
            getattr(body, kind.key),
            body.status,
            body.event_time,
        )
    uow.session.add(
        IntegrationMessage(
            direction="IN",
            system=kind.system,
            entity_type=kind.entity_type,
            business_key=getattr(body, kind.key),
            dedupe_key=f"{kind.dedupe_prefix}:{body.event_id}",
            status=status,
            payload=body.model_dump(mode="json", by_alias=True),
            meta=meta,
        )
    )


def _receipt(kind: Kind, row: Record, *, duplicate: bool) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        kind.key: getattr(row, kind.key),
        "status": row.status,
        "event_time": row.event_time,
        "source": row.source,
        "received_at": row.received_at,
        "is_duplicate": duplicate,
    }


# ---- what readiness reads ----------------------------------------------------------------------------------


async def _current(uow: UnitOfWork, kind: Kind, line_id: int) -> Binding | None:
    row: Binding | None = await uow.session.scalar(
        select(kind.binding).where(kind.binding.line_id == line_id, kind.binding.is_current.is_(True))
    )
    return row


async def _latest(uow: UnitOfWork, kind: Kind, key: str) -> Record | None:
    col = getattr(kind.record, kind.key)
    row: Record | None = await uow.session.scalar(
        select(kind.record)
        .where(col == key)
        .order_by(kind.record.event_time.desc(), kind.record.id.desc())
        .limit(1)
    )
    return row


def effective_paste_status(record: SolderPasteStatusRecord | None, now: datetime | None = None) -> str | None:
    """The record's status, except that a COMPLIANT lot past its expiresAt counts as EXPIRED."""
    if record is None:
        return None
    if (
        record.status == "COMPLIANT"
        and record.expires_at is not None
        and record.expires_at <= (now or utcnow())
    ):
        return "EXPIRED"
    return record.status


async def current_stencil_status(uow: UnitOfWork, line_id: int) -> tuple[str | None, str | None]:
    """(stencilId, latest status by eventTime) of the line's current stencil; (None, None) when none."""
    binding = await _current(uow, STENCIL, line_id)
    if binding is None:
        return None, None
    stencil_id = str(binding.stencil_id)  # type: ignore[union-attr]
    record = await _latest(uow, STENCIL, stencil_id)
    return stencil_id, None if record is None else record.status


async def current_paste_status(uow: UnitOfWork, line_id: int) -> tuple[str | None, str | None]:
    """(lotId, latest status by eventTime, EXPIRED once past expiresAt) of the line's current paste lot."""
    binding = await _current(uow, PASTE, line_id)
    if binding is None:
        return None, None
    lot_id = str(binding.lot_id)  # type: ignore[union-attr]
    record = await _latest(uow, PASTE, lot_id)
    return lot_id, effective_paste_status(record)  # type: ignore[arg-type]


# ---- line bindings -----------------------------------------------------------------------------------------


async def _line(uow: UnitOfWork, key: str, perms: tuple[str, ...], *, lock: bool = False) -> Line:
    line = await get_line_row(uow, key)
    allowed = await scoped_line_ids(uow, perms)
    if allowed is not None and line.id not in allowed:
        raise Forbidden("LINE_NOT_ASSIGNED", f"Line {line.code} is not assigned to you")
    if lock:  # serialises binds of one line (PostgreSQL; SQLite writers are serial already)
        await uow.session.execute(select(Line.id).where(Line.id == line.id).with_for_update())
    return line


def binding_out(kind: Kind, row: Binding, line: Line) -> dict[str, Any]:
    return {
        "id": row.id,
        "line_id": line.id,
        "line_code": line.code,
        kind.key: getattr(row, kind.key),
        "is_current": row.is_current,
        "bound_at": row.bound_at,
        "bound_by": row.bound_by,
        "unbound_at": row.unbound_at,
        "unbound_by": row.unbound_by,
    }


def _emit(uow: UnitOfWork, event_type: str, row: Binding, line: Line, at: datetime) -> None:
    """Outbox event of a paste lot's use on a line (start/end of the SOLDER_PASTE_24H time rule)."""
    uow.session.add(
        MesEvent(
            event_type=event_type,
            status="PENDING",
            occurred_at=at,
            idempotency_key=f"mes-event:{event_type}:{row.id}",
            entity_type="LINE_SOLDER_PASTE",
            entity_id=str(row.id),
            run_id=None,
            retention_until=at + EVENT_RETENTION,
            payload={
                "bindingId": row.id,
                "lineId": line.id,
                "lineCode": line.code,
                "lotId": getattr(row, "lot_id", None),
                "boundAt": iso(row.bound_at),
                "boundBy": row.bound_by,
                "unboundAt": iso(row.unbound_at),
                "unboundBy": row.unbound_by,
            },
        )
    )


def _close(uow: UnitOfWork, row: Binding, at: datetime) -> None:
    row.is_current = False
    row.unbound_at = at
    row.unbound_by = uow.actor.name


async def bind_stencil(uow: UnitOfWork, line_key: str, body: StencilBind) -> dict[str, Any]:
    return await _bind(uow, STENCIL, line_key, body.stencil_id)


async def bind_paste(uow: UnitOfWork, line_key: str, body: SolderPasteBind) -> dict[str, Any]:
    return await _bind(uow, PASTE, line_key, body.lot_id)


async def unbind_stencil(uow: UnitOfWork, line_key: str) -> dict[str, Any]:
    return await _unbind(uow, STENCIL, line_key)


async def unbind_paste(uow: UnitOfWork, line_key: str) -> dict[str, Any]:
    return await _unbind(uow, PASTE, line_key)


async def _stencil_free(uow: UnitOfWork, stencil_id: str, line: Line) -> None:
    """A stencil is one physical plate: it cannot be current on two lines at once."""
    other = await uow.session.scalar(
        select(Line.code)
        .join(LineStencil, LineStencil.line_id == Line.id)
        .where(LineStencil.stencil_id == stencil_id, LineStencil.is_current.is_(True), Line.id != line.id)
    )
    if other is not None:
        raise Conflict(
            "STENCIL_ALREADY_BOUND",
            f"Stencil {stencil_id} is bound to line {other}; unbind it there first",
            details={"lineCode": other},
        )


async def _bind(uow: UnitOfWork, kind: Kind, line_key: str, value: str) -> dict[str, Any]:
    s = uow.session
    line = await _line(uow, line_key, CONFIG_PERMS, lock=True)
    current = await _current(uow, kind, line.id)
    if current is not None and getattr(current, kind.key) == value:
        return binding_out(kind, current, line)  # binding the current one again is a no-op
    if kind is STENCIL:
        await _stencil_free(uow, value, line)
    now = utcnow()
    before = None if current is None else getattr(current, kind.key)
    if current is not None:
        _close(uow, current, now)
        await s.flush()  # the partial unique index allows one current row per line: un-current first
    row = kind.binding(line_id=line.id, is_current=True, bound_at=now, bound_by=uow.actor.name)
    setattr(row, kind.key, value)
    s.add(row)
    await flush_or(
        uow, "CONSUMABLE_BINDING_CONFLICT", f"The {kind.label} of line {line.code} changed meanwhile"
    )
    if kind is PASTE:
        if current is not None:
            _emit(uow, PASTE_UNBIND, current, line, now)
        _emit(uow, PASTE_CREATE, row, line, now)
    key = "stencilId" if kind is STENCIL else "lotId"
    uow.audit(
        line.id,
        line.code,
        entity_type="LINE",
        action=kind.bind_action,
        before={key: before},
        after={key: value, "bindingId": row.id},
    )
    return binding_out(kind, row, line)


async def _unbind(uow: UnitOfWork, kind: Kind, line_key: str) -> dict[str, Any]:
    line = await _line(uow, line_key, CONFIG_PERMS, lock=True)
    current = await _current(uow, kind, line.id)
    if current is None:
        raise Rejected(kind.no_current, f"Line {line.code} has no current {kind.label}")
    now = utcnow()
    _close(uow, current, now)
    await uow.session.flush()
    if kind is PASTE:
        _emit(uow, PASTE_UNBIND, current, line, now)
    key = "stencilId" if kind is STENCIL else "lotId"
    uow.audit(
        line.id,
        line.code,
        entity_type="LINE",
        action=kind.unbind_action,
        before={key: getattr(current, kind.key), "bindingId": current.id},
        after={key: None},
    )
    return binding_out(kind, current, line)


# ---- read --------------------------------------------------------------------------------------------


async def line_consumables(uow: UnitOfWork, line_key: str) -> dict[str, Any]:
    """The line's current stencil and paste lot, each with its latest status record (by eventTime)."""
    line = await _line(uow, line_key, VIEW_PERMS)
    out: dict[str, Any] = {"line_id": line.id, "line_code": line.code, "stencil": None, "solder_paste": None}
    stencil = await _current(uow, STENCIL, line.id)
    if stencil is not None:
        out["stencil"] = {
            "binding": binding_out(STENCIL, stencil, line),
            "latest_status": await _latest(uow, STENCIL, stencil.stencil_id),  # type: ignore[union-attr]
        }
    paste = await _current(uow, PASTE, line.id)
    if paste is not None:
        record = await _latest(uow, PASTE, paste.lot_id)  # type: ignore[union-attr]
        out["solder_paste"] = {
            "binding": binding_out(PASTE, paste, line),
            "latest_status": record,
            "effective_status": effective_paste_status(record),  # type: ignore[arg-type]
        }
    return out
