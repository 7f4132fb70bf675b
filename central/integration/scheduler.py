"""Runs every ERP/TPM pull every `sync_interval_seconds` (0 = off), once per tick across all processes.

Ticks are aligned to the epoch, so every central process sees the same boundaries. Before running a job
for a tick, a process claims it with a compare-and-set on the job's IntegrationSyncCursor row (`meta.cron`,
guarded by `updated_at`): only one process wins a tick, and a lease keeps a long run from overlapping the
next tick's. The same conditional UPDATE works on PostgreSQL and SQLite.

Wiring (the app's cleanup_ctx):
    stop = asyncio.Event(); task = asyncio.create_task(run_scheduler(db, settings, stop)); yield
    stop.set(); await task
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from central.config import Settings
from central.db.engine import Database
from central.db.models import IntegrationSyncCursor
from central.domain.clock import iso, utcnow
from central.domain.errors import MesError
from central.integration.sources import SourceAdapter, is_configured, source_for
from central.services import sync
from central.services.actor import SYSTEM_ACTOR
from central.services.sync import Job
from central.services.uow import AuditContext, UnitOfWork

log = logging.getLogger("central.sync")
MAX_PAGES = 20  # per job and tick; a longer backlog continues at the next tick from the stored cursor


def tick_start(now: datetime, interval: int) -> datetime:
    ts = int(now.timestamp()) // interval * interval
    return datetime.fromtimestamp(ts, UTC)


def _dt(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def lease_for(settings: Settings) -> timedelta:
    """Longest a job may hold its claim: every page timing out, plus slack for applying them."""
    return timedelta(seconds=MAX_PAGES * (settings.sync_timeout_seconds + 30))


def _cursor_stmt(job: Job) -> Any:
    return select(IntegrationSyncCursor).where(
        IntegrationSyncCursor.system == job.system, IntegrationSyncCursor.entity_type == job.entity_type
    )


async def _ensure_cursor(db: Database, job: Job) -> None:
    try:
        async with db.writer() as s, s.begin():
            if await s.scalar(_cursor_stmt(job)) is None:
                s.add(IntegrationSyncCursor(system=job.system, entity_type=job.entity_type, meta={}))
    except IntegrityError:
        pass  # another process created it first: that is all we wanted


async def claim(db: Database, job: Job, tick: datetime, now: datetime, lease: timedelta, owner: str) -> bool:
    """True if this process may run `job` for `tick` (nobody ran it for this tick, no live lease)."""
    await _ensure_cursor(db, job)
    for _ in range(5):
        async with db.writer() as s, s.begin():
            row = await s.scalar(_cursor_stmt(job))
            assert row is not None
            cron = (row.meta or {}).get("cron") or {}
            last_tick = _dt(cron.get("tick"))
            if last_tick is not None and last_tick >= tick:
                return False
            lease_until = _dt(cron.get("leaseUntil"))
            if lease_until is not None and lease_until > now:
                return False  # still running elsewhere (a run longer than the interval)
            cron = {
                "tick": iso(tick),
                "claimedAt": iso(now),
                "leaseUntil": iso(now + lease),
                "owner": owner,
                "status": "RUNNING",
                "finishedAt": None,
                "error": None,
                "pages": 0,
            }
            won = await s.execute(
                update(IntegrationSyncCursor)
                .where(IntegrationSyncCursor.id == row.id, IntegrationSyncCursor.updated_at == row.updated_at)
                .values(meta={**(row.meta or {}), "cron": cron}, updated_at=utcnow())
            )
            if won.rowcount == 1:  # type: ignore[attr-defined]
                return True
        # Someone changed the row between our read and write: read it again and re-decide.
    return False


async def finish(db: Database, job: Job, owner: str, result: dict[str, Any]) -> None:
    """Ends our claim (clears the lease) unless another process has since taken the job over."""
    async with db.writer() as s, s.begin():
        row = await s.scalar(_cursor_stmt(job).with_for_update())
        cron = ((row.meta or {}).get("cron") or {}) if row is not None else {}
        if row is None or cron.get("owner") != owner:
            return
        row.meta = {**row.meta, "cron": {**cron, **result, "leaseUntil": None, "finishedAt": iso(utcnow())}}


async def run_job(db: Database, settings: Settings, job: Job, source: SourceAdapter) -> dict[str, Any]:
    """Pulls pages until the upstream has no more (at most MAX_PAGES); returns the cron result."""
    ctx = AuditContext(entity_type="INTEGRATION", action=f"CRON_{job.action}")
    pages, items, seen, error = 0, 0, set(), None
    while pages < MAX_PAGES:
        try:
            async with UnitOfWork(db.writer, SYSTEM_ACTOR, ctx, settings) as uow:
                out = await sync.pull(uow, job, source)
        except MesError as exc:  # upstream down (FAILED message written) or a concurrent manual sync
            seen.add("FAILED" if exc.status == 502 else "SKIPPED")
            error = f"{exc.code}: {exc.message}"
            break
        pages += 1
        items += len(out["items"])
        seen.add(out["status"])
        if not out["cursor"]["has_more"]:
            break
    status = next(s for s in ("FAILED", "SKIPPED", "SUCCESS", "DUPLICATE") if s in seen)
    return {"status": status, "error": error, "pages": pages, "items": items}


async def run_tick(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    owner: str | None = None,
    sources: Mapping[str, SourceAdapter] | None = None,
) -> dict[str, str]:
    """One tick: every configured job this process wins the claim for. Returns {job name: outcome}."""
    interval = settings.sync_interval_seconds
    if interval <= 0:
        return {}
    now = now or utcnow()
    owner = owner or default_owner()
    tick = tick_start(now, interval)
    outcomes: dict[str, str] = {}
    for job in sync.JOBS:
        if not is_configured(settings, job.system):
            outcomes[job.name] = "NOT_CONFIGURED"
            continue
        if not await claim(db, job, tick, now, lease_for(settings), owner):
            outcomes[job.name] = "NOT_CLAIMED"
            continue
        source = (sources or {}).get(job.system) or source_for(settings, job.system)
        try:
            result = await run_job(db, settings, job, source)
        except Exception as exc:  # a bug in one job must not stop the others or the scheduler
            log.exception("scheduled %s sync crashed", job.name)
            result = {"status": "FAILED", "error": f"{type(exc).__name__}: {exc}"}
        await finish(db, job, owner, result)
        outcomes[job.name] = result["status"]
    return outcomes


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def run_scheduler(
    db: Database,
    settings: Settings,
    stop: asyncio.Event,
    *,
    sources: Mapping[str, SourceAdapter] | None = None,
) -> None:
    """Runs ticks until `stop` is set; returns at once when the interval is 0 (scheduler off)."""
    interval = settings.sync_interval_seconds
    if interval <= 0:
        return
    owner = default_owner()
    down: set[str] = set()
    log.info("ERP/TPM pull scheduler started: every %ss (%s)", interval, owner)
    async with aiohttp.ClientSession() as http:
        shared = {
            system: (sources or {}).get(system) or source_for(settings, system, session=http)
            for system in ("ERP", "TPM")
        }
        while not stop.is_set():
            try:
                outcomes = await run_tick(db, settings, owner=owner, sources=shared)
            except Exception:  # e.g. the database is unreachable: try again next tick
                log.exception("scheduler tick failed")
                outcomes = {}
            _log_changes(outcomes, down)
            wait = (tick_start(utcnow(), interval) + timedelta(seconds=interval) - utcnow()).total_seconds()
            try:
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.01))
            except TimeoutError:
                pass
    log.info("ERP/TPM pull scheduler stopped")


def _log_changes(outcomes: dict[str, str], down: set[str]) -> None:
    """Logs a job once when it starts failing and once when it recovers, not at every tick."""
    for name, outcome in outcomes.items():
        if outcome == "FAILED" and name not in down:
            down.add(name)
            log.warning("scheduled %s sync is failing", name)
        elif outcome in ("SUCCESS", "DUPLICATE") and name in down:
            down.discard(name)
            log.info("scheduled %s sync recovered", name)
