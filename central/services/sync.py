"""ERP/TPM pull sync (domain.md §9 "Pull"): one page per call — plan from the cursor, fetch, dedupe, apply.

No database transaction is held while the upstream is read: the cursor is read in a short session of its
own, and the unit of work's session is first used after the fetch. A failed fetch is logged as a FAILED
IntegrationMessage in its own transaction (it survives the refusal's rollback) and answered 502.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from central.db.models import IntegrationMessage, IntegrationSyncCursor
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, Upstream
from central.integration.sources import Page, SourceAdapter, SourceError, is_configured
from central.schemas import sync as sch
from central.services import sync_apply, sync_routes, sync_tpm
from central.services.sync_apply import Counts
from central.services.uow import UnitOfWork

Apply = Callable[[UnitOfWork, Sequence[tuple[dict[str, Any], Any]]], Awaitable[Counts]]
# Cursor meta keys owned by the sync; anything else there (the scheduler's "cron" block) is kept.
SYNC_KEYS = ("nextStartRow", "since", "maxUpdatedAt")


@dataclass(frozen=True)
class Job:
    system: str  # ERP | TPM
    entity_type: str  # IntegrationMessage/cursor entity: ROUTING, WORK_ORDER, …
    path: str  # the upstream entity name: routes, work-orders, …
    action: str  # audit action
    item: type[sch.UpstreamItem]
    apply: Apply
    key: Callable[[dict[str, Any]], Any]
    page_size: int = 200
    reapply: bool = False  # work orders: an identical page is applied again (status sync)
    replay_since: bool = False  # TPM: an explicit `since` already pulled answers that pull again

    @property
    def name(self) -> str:
        return f"{self.system}:{self.entity_type}"


def _k(*path: str) -> Callable[[dict[str, Any]], Any]:
    def get(raw: dict[str, Any]) -> Any:
        parts = []
        for p in path:
            value: Any = raw
            for part in p.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            parts.append(str(value))
        return ":".join(parts)

    return get


# fmt: off
ERP_WORK_CENTERS = Job("ERP", "WORK_CENTER", "work-centers", "ERP_WORK_CENTER_SYNC", sch.ErpWorkCenter,
                       sync_apply.apply_work_centers, _k("workCenterCode"))
ERP_MATERIALS = Job("ERP", "MATERIAL", "materials", "ERP_MATERIAL_SYNC", sch.ErpMaterial,
                    sync_apply.apply_materials, _k("materialCode"))
ERP_BOMS = Job("ERP", "BOM", "boms", "ERP_BOM_SYNC", sch.ErpBomItem,
               sync_apply.apply_boms, _k("parentCode", "childCode"), page_size=50)
ERP_ROUTES = Job("ERP", "ROUTING", "routes", "ERP_ROUTE_SYNC", sch.ErpRoute,
                 sync_routes.apply_routes, _k("header.routeNo"))
ERP_WORK_ORDERS = Job("ERP", "WORK_ORDER", "work-orders", "ERP_WORK_ORDER_SYNC", sch.ErpWorkOrder,
                      sync_apply.apply_work_orders, _k("woNo"), reapply=True)
TPM_EQUIPMENT = Job("TPM", "EQUIPMENT", "equipment", "TPM_EQUIPMENT_SYNC", sch.TpmEquipmentItem,
                    sync_tpm.apply_equipment, _k("equipmentCode"), replay_since=True)
TPM_MAINTENANCE_TASKS = Job("TPM", "MAINTENANCE_TASK", "maintenance-tasks", "TPM_MAINTENANCE_TASK_SYNC",
                            sch.TpmMaintenanceTaskItem, sync_tpm.apply_maintenance_tasks, _k("taskNo"),
                            replay_since=True)
TPM_STATUS_LOGS = Job("TPM", "STATUS_LOG", "status-logs", "TPM_STATUS_LOG_SYNC", sch.TpmStatusLogItem,
                      sync_tpm.apply_status_logs, _k("equipmentCode", "startedAt"), replay_since=True)
# Scheduler order: routings before work orders (routing resolution), equipment before its tasks.
JOBS = (ERP_WORK_CENTERS, ERP_MATERIALS, ERP_BOMS, ERP_ROUTES, ERP_WORK_ORDERS,
        TPM_EQUIPMENT, TPM_MAINTENANCE_TASKS, TPM_STATUS_LOGS)
# fmt: on


@dataclass(frozen=True)
class Plan:
    since: datetime | None
    start_row: int
    limit: int
    carried_max: datetime | None  # newest updatedAt of the earlier pages of this paged pull
    seen_state: tuple[Any, ...]  # the cursor as read; apply refuses if another sync moved it
    replay: IntegrationMessage | None = None  # TPM: the earlier SUCCESS pull of this explicit `since`


def business_key(job: Job, since: datetime | None, start_row: int) -> str:
    return f"{job.name}:since:{iso(since) or 'NONE'}:start:{start_row}"


def _dt(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _state(cursor: IntegrationSyncCursor | None) -> tuple[Any, ...]:
    """What a pull depends on; a missing row equals a fresh one (the scheduler may create it meanwhile)."""
    if cursor is None:
        return (None, None, None)
    meta = cursor.meta or {}
    return (iso(cursor.last_sync_at), meta.get("nextStartRow"), meta.get("since"))


def _cursor_stmt(job: Job) -> Any:
    return select(IntegrationSyncCursor).where(
        IntegrationSyncCursor.system == job.system, IntegrationSyncCursor.entity_type == job.entity_type
    )


async def _plan(
    s: AsyncSession, job: Job, since: datetime | None, start_row: int | None, limit: int | None
) -> Plan:
    """since = query > meta.since (while paging) > lastSyncAt; startRow = query > meta.nextStartRow > 0."""
    cursor = await s.scalar(_cursor_stmt(job))
    meta = (cursor.meta or {}) if cursor is not None else {}
    paging = "nextStartRow" in meta
    paged_since = _dt(meta.get("since"))
    # A `since` other than the one being paged starts a new window at row 0.
    continuing = paging and (since is None or since == paged_since)
    if since is None:
        since = paged_since if paging else (cursor.last_sync_at if cursor is not None else None)
    if start_row is None:
        start_row = int(meta["nextStartRow"]) if continuing else 0
    carried = _dt(meta.get("maxUpdatedAt")) if continuing and start_row > 0 else None
    return Plan(since, start_row, limit or job.page_size, carried, _state(cursor))


async def _replay_of(s: AsyncSession, job: Job, since: datetime) -> IntegrationMessage | None:
    return await s.scalar(
        select(IntegrationMessage)
        .where(
            IntegrationMessage.direction == "IN",
            IntegrationMessage.system == job.system,
            IntegrationMessage.entity_type == job.entity_type,
            IntegrationMessage.status == "SUCCESS",
            IntegrationMessage.business_key == business_key(job, since, 0),
        )
        .order_by(IntegrationMessage.id.desc())
        .limit(1)
    )


async def pull(
    uow: UnitOfWork,
    job: Job,
    source: SourceAdapter,
    *,
    since: datetime | None = None,
    start_row: int | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Pulls one page of `job` and applies it; returns the envelope and what was done with it."""
    async with uow.sessionmaker() as s:  # short read; the unit of work's own transaction is still unused
        plan = await _plan(s, job, since, start_row, limit)
        if job.replay_since and since is not None and plan.start_row == 0:
            plan = replace(plan, replay=await _replay_of(s, job, since))
    if plan.replay is not None:
        return await _replay(uow, job, plan)
    try:
        page = await source.fetch(job.path, plan.since, plan.start_row, plan.limit)
        _check_progress(job, plan, page)
    except SourceError as exc:
        message_id = await _record_failure(uow, job, plan, exc)
        details = {"reason": exc.reason, "httpStatus": exc.http_status, "messageId": message_id}
        raise Upstream(exc.code, exc.message, details=details) from None
    try:
        return await _apply_page(uow, job, plan, page)
    except IntegrityError:
        raise Conflict("SYNC_IN_PROGRESS", f"Another {job.name} sync wrote the same rows; retry") from None


def _check_progress(job: Job, plan: Plan, page: Page) -> None:
    if page.has_more and _next_row(plan, page) <= plan.start_row:
        raise SourceError(
            "UPSTREAM_FAILED",
            "BAD_PAYLOAD",
            f"{job.system} said hasMore but the page does not advance past row {plan.start_row}",
            url=page.url,
        )


def _next_row(plan: Plan, page: Page) -> int:
    return page.next_start_row if page.next_start_row is not None else plan.start_row + len(page.items)


def _request(plan: Plan) -> dict[str, Any]:
    return {"since": iso(plan.since), "startRow": plan.start_row, "limit": plan.limit}


async def _record_failure(uow: UnitOfWork, job: Job, plan: Plan, exc: SourceError) -> int:
    """The FAILED message commits on its own: the refusal rolls the unit of work back."""
    async with uow.sessionmaker() as s, s.begin():
        msg = IntegrationMessage(
            direction="IN",
            system=job.system,
            entity_type=job.entity_type,
            business_key=business_key(job, plan.since, plan.start_row),
            status="FAILED",
            payload={
                "request": {**_request(plan), "url": exc.url},
                "error": {"code": exc.code, "reason": exc.reason, "httpStatus": exc.http_status},
            },
            error=exc.message,
            meta={"actor": uow.actor.name},
        )
        s.add(msg)
        await s.flush()
        return msg.id


def _parse(job: Job, page: Page) -> tuple[list[tuple[dict[str, Any], Any]], list[dict[str, Any]]]:
    valid: list[tuple[dict[str, Any], Any]] = []
    rejected: list[dict[str, Any]] = []
    for raw in page.items:
        try:
            valid.append((raw, job.item.model_validate(raw)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            rejected.append(
                {"key": job.key(raw), "code": "ITEM_INVALID", "message": f"{where}: {first['msg']}"}
            )
    return valid, rejected


def envelope(
    job: Job, items: list[dict[str, Any]], next_sync_at: datetime | None, has_more: bool
) -> dict[str, Any]:
    return {
        "sourceSystem": job.system,
        "entityType": job.entity_type,
        "cursor": {"nextSyncAt": iso(next_sync_at), "hasMore": has_more},
        "items": items,
    }


def dedupe_key(job: Job, env: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(env, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{job.system}:{job.entity_type}:{digest}"


async def _apply_page(uow: UnitOfWork, job: Job, plan: Plan, page: Page) -> dict[str, Any]:
    s = uow.session
    cursor = await s.scalar(_cursor_stmt(job).with_for_update())
    if _state(cursor) != plan.seen_state:
        raise Conflict("SYNC_IN_PROGRESS", f"Another {job.name} sync moved the cursor meanwhile; retry")
    valid, rejected = _parse(job, page)
    page_max = max((t for _, it in valid if (t := it.changed_at()) is not None), default=None)
    env = envelope(job, page.items, page_max or plan.since, page.has_more)
    key = dedupe_key(job, env)
    seen = await s.scalar(
        select(IntegrationMessage.id)
        .where(
            IntegrationMessage.system == job.system,
            IntegrationMessage.entity_type == job.entity_type,
            IntegrationMessage.dedupe_key == key,
            IntegrationMessage.status == "SUCCESS",
        )
        .limit(1)
    )
    duplicate = seen is not None and not job.reapply
    counts = Counts(rejected=rejected)
    if valid and not duplicate:
        done = await job.apply(uow, valid)
        counts = Counts(done.created, done.updated, done.unchanged, rejected + done.rejected)
    summary = {
        "received": len(page.items),
        "created": counts.created,
        "updated": counts.updated,
        "unchanged": len(valid) if duplicate else counts.unchanged,
        "rejected": counts.rejected,
    }
    _move_cursor(uow, job, cursor, plan, page, page_max)
    meta = {"request": _request(plan), "summary": summary, "actor": uow.actor.name}
    if duplicate:
        msg = await _log_duplicate(uow, job, plan, key, seen, meta)
    else:
        msg = IntegrationMessage(
            direction="IN",
            system=job.system,
            entity_type=job.entity_type,
            business_key=business_key(job, plan.since, plan.start_row),
            dedupe_key=key,
            status="SUCCESS",
            payload=env,
            meta={**meta, "reapplied": seen is not None},
        )
        s.add(msg)
    await s.flush()
    status = "DUPLICATE" if duplicate else "SUCCESS"
    if uow.ctx.is_write or counts.created or counts.updated or counts.rejected:
        uow.audit(
            msg.id,
            msg.business_key,
            entity_type="INTEGRATION",
            action=job.action,
            payload={"status": status, "dedupeKey": key, **meta},
        )
    return {
        "source_system": job.system,
        "entity_type": job.entity_type,
        "cursor": {
            "next_sync_at": page_max or plan.since,
            "has_more": page.has_more,
            "next_start_row": _next_row(plan, page) if page.has_more else None,
        },
        "items": page.items,
        "message_id": msg.id,
        "status": status,
        "dedupe_key": key,
        "summary": summary,
    }


def _move_cursor(
    uow: UnitOfWork,
    job: Job,
    cursor: IntegrationSyncCursor | None,
    plan: Plan,
    page: Page,
    page_max: datetime | None,
) -> None:
    """hasMore → remember {nextStartRow, since}; else lastSyncAt = newest updatedAt (never earlier)."""
    if cursor is None:
        cursor = IntegrationSyncCursor(system=job.system, entity_type=job.entity_type, meta={})
        uow.session.add(cursor)
    newest = max((t for t in (plan.carried_max, page_max) if t is not None), default=None)
    kept = {k: v for k, v in (cursor.meta or {}).items() if k not in SYNC_KEYS}
    if page.has_more:
        cursor.meta = {
            **kept,
            "nextStartRow": _next_row(plan, page),
            "since": iso(plan.since),
            "maxUpdatedAt": iso(newest),
        }
        return
    cursor.meta = kept
    if newest is not None and (cursor.last_sync_at is None or newest > cursor.last_sync_at):
        cursor.last_sync_at = newest


async def _log_duplicate(
    uow: UnitOfWork, job: Job, plan: Plan, key: str, of: int | None, meta: dict[str, Any]
) -> IntegrationMessage:
    """A DUPLICATE row; a run of identical pulls (a quiet scheduler) bumps one row's counter instead."""
    s = uow.session
    last = await s.scalar(
        select(IntegrationMessage)
        .where(
            IntegrationMessage.direction == "IN",
            IntegrationMessage.system == job.system,
            IntegrationMessage.entity_type == job.entity_type,
        )
        .order_by(IntegrationMessage.id.desc())
        .limit(1)
        .with_for_update()
    )
    if last is not None and last.status == "DUPLICATE" and last.dedupe_key == key:
        repeats = int((last.meta or {}).get("repeats", 1)) + 1
        last.meta = {**(last.meta or {}), "repeats": repeats, "lastSeenAt": iso(utcnow())}
        return last
    msg = IntegrationMessage(
        direction="IN",
        system=job.system,
        entity_type=job.entity_type,
        business_key=business_key(job, plan.since, plan.start_row),
        dedupe_key=key,
        status="DUPLICATE",
        payload=None,  # the SUCCESS message it repeats holds the payload
        meta={**meta, "duplicateOf": of, "repeats": 1},
    )
    uow.session.add(msg)
    return msg


async def _replay(uow: UnitOfWork, job: Job, plan: Plan) -> dict[str, Any]:
    """TPM: a `since` already pulled successfully answers that pull again — no fetch, nothing applied."""
    s = uow.session
    first = plan.replay
    assert first is not None  # pull() only replays with a message
    env = first.payload or {}
    items = list(env.get("items") or [])
    meta = {
        "request": _request(plan),
        "summary": {"received": len(items), "created": 0, "updated": 0, "unchanged": 0, "rejected": []},
        "actor": uow.actor.name,
        "replayOf": first.id,
    }
    msg = await _log_duplicate(uow, job, plan, first.dedupe_key or "", first.id, meta)
    await s.flush()
    if uow.ctx.is_write:
        payload = {"status": "DUPLICATE", "dedupeKey": first.dedupe_key, **meta}
        uow.audit(msg.id, msg.business_key, entity_type="INTEGRATION", action=job.action, payload=payload)
    cursor = env.get("cursor") or {}
    return {
        "source_system": job.system,
        "entity_type": job.entity_type,
        "cursor": {"next_sync_at": _dt(cursor.get("nextSyncAt")), "has_more": bool(cursor.get("hasMore"))},
        "items": items,
        "message_id": msg.id,
        "status": "DUPLICATE",
        "dedupe_key": first.dedupe_key,
        "summary": meta["summary"],
    }


# ---- status ---------------------------------------------------------------------------------------------


async def status(uow: UnitOfWork) -> dict[str, Any]:
    """Every pull job: its cursor, the scheduler's last run of it and the latest integration message."""
    s = uow.session
    cursors = {(c.system, c.entity_type): c for c in await s.scalars(select(IntegrationSyncCursor))}
    jobs = []
    for job in JOBS:
        cursor = cursors.get((job.system, job.entity_type))
        last = await s.scalar(
            select(IntegrationMessage)
            .where(
                IntegrationMessage.direction == "IN",
                IntegrationMessage.system == job.system,
                IntegrationMessage.entity_type == job.entity_type,
            )
            .order_by(IntegrationMessage.id.desc())
            .limit(1)
        )
        meta = dict(cursor.meta or {}) if cursor is not None else {}
        cron = meta.pop("cron", None)
        jobs.append(
            {
                "source_system": job.system,
                "entity_type": job.entity_type,
                "configured": is_configured(uow.settings, job.system),
                "cursor": None
                if cursor is None
                else {
                    "last_sync_at": cursor.last_sync_at,
                    "last_seq": cursor.last_seq,
                    "meta": meta,
                    "updated_at": cursor.updated_at,
                },
                "last_cron": cron,
                "last_message": last,
            }
        )
    interval = uow.settings.sync_interval_seconds if uow.settings is not None else 0
    return {"scheduler": {"enabled": interval > 0, "interval_seconds": interval}, "jobs": jobs}
