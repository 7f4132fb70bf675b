"""Equipment events of one edge batch applied set-based: the MQTT consumer's fast lane (quality-bars.md P1).

The same code as one event (`ingest.event`, `ingest_unit.prepare`/`finish`); only the database round trips
are batched. The batch's units (locked, in id order), their runs, route versions and open rework tasks are
loaded with one query each, stations and data specs once per code and step (UnitOfWork.memo), and the claims,
tracks and everything they carry are inserted with one statement per table instead of one per event.

All or nothing, inside the caller's savepoint: a dedupe key already known, an event of another type
(BATCH), or any refusal raises, the caller rolls the savepoint back and applies the events one by one, which
gives each its exact answer. A unit met twice (a board's next station in the same batch) starts a new
segment, so its second move sees the first.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Table, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.db.models import ExecutableRouteVersion, IngestEvent, ReworkTask, Run, Unit
from central.domain.clock import utcnow
from central.schemas.ingest import IngestEventIn
from central.services import closeout, ingest, ingest_unit
from central.services.ingest_common import Event
from central.services.uow import UnitOfWork


class NotEligible(Exception):
    """The batch needs the one-by-one path (the caller rolls back and falls back)."""


async def ingest_many(uow: UnitOfWork, bodies: list[IngestEventIn]) -> list[dict[str, Any]]:
    """Applies every AUTO/TEST event of `bodies`, in order. → one result per body, as `ingest_event` gives.
    Raises NotEligible, a MesError or an IntegrityError when the batch must go one by one."""
    if any(b.event_type == "BATCH" or not isinstance(b.payload, dict) for b in bodies):
        raise NotEligible("not all AUTO/TEST events")
    sources = {b.source_system for b in bodies}
    keys = {b.dedupe_key for b in bodies}
    if len(sources) != 1 or len(keys) != len(bodies):
        raise NotEligible("mixed sources or a key twice")
    s = uow.session
    known = await s.scalar(
        select(func.count())
        .select_from(IngestEvent)
        .where(IngestEvent.source_system == sources.pop(), IngestEvent.dedupe_key.in_(keys))
    )
    if known:
        raise NotEligible("an event was received before")  # its duplicate answer comes from the slow path
    uow.memo = {}
    try:
        await _load(uow, bodies)
        rows = [ingest.claim_row(b, ingest.event_time(b.occurred_at)) for b in bodies]
        s.add_all(rows)
        await flush(s)
        events = [
            await ingest.event(uow, b, row, row.occurred_at, False)
            for b, row in zip(bodies, rows, strict=True)
        ]
        done_runs: dict[int, Run] = {}
        segment: list[Event] = []
        seen: set[str | None] = set()
        for ev in events:
            if ev.norm.sn in seen:
                await _apply_segment(uow, segment, done_runs)
                segment, seen = [], set()
            segment.append(ev)
            seen.add(ev.norm.sn)
        await _apply_segment(uow, segment, done_runs)
        for run in done_runs.values():
            await closeout.after_units_changed(uow, run)
        return [ingest.received(row) for row in rows]
    finally:
        uow.memo = None


async def _load(uow: UnitOfWork, bodies: list[IngestEventIn]) -> None:
    s, memo = uow.session, uow.memo
    assert memo is not None
    sns = {sn.strip() for b in bodies if isinstance(sn := b.payload.get("sn"), str) and sn.strip()}
    if not sns:
        return
    units = (await s.scalars(select(Unit).where(Unit.sn.in_(sns)).order_by(Unit.id).with_for_update())).all()
    for u in units:
        memo[("unit", u.sn)] = u
    runs = (await s.scalars(select(Run).where(Run.id.in_({u.run_id for u in units})))).all()
    versions = {r.route_version_id for r in runs if r.route_version_id}
    by_id = select(ExecutableRouteVersion).where(ExecutableRouteVersion.id.in_(versions))
    for run in runs:
        memo[("run", run.id)] = run
    for version in (await s.scalars(by_id)).all():
        memo[("version", version.id)] = version
    rework = set(
        await s.scalars(
            select(ReworkTask.unit_id).where(
                ReworkTask.unit_id.in_([u.id for u in units]), ReworkTask.status == "OPEN"
            )
        )
    )
    for u in units:
        memo[("rework", u.id)] = u.id in rework


async def _apply_segment(uow: UnitOfWork, events: list[Event], done_runs: dict[int, Run]) -> None:
    if not events:
        return
    moves = [await ingest_unit.prepare(uow, ev) for ev in events]
    await flush(uow.session)  # every track of the segment in one statement
    for move in moves:
        await ingest_unit.finish(uow, move)
        if move.unit.status == "DONE":
            done_runs[move.ev.run.id] = move.ev.run
    await flush(uow.session)


async def flush(s: AsyncSession) -> None:
    """A flush that inserts each table's new rows with one statement on both backends.

    PostgreSQL batches INSERT … RETURNING by itself. SQLite cannot return generated ids in parameter order, so
    SQLAlchemy would insert row by row; numbering the rows here first lets it use one executemany. Safe: the
    writer holds SQLite's write lock for the whole transaction (BEGIN IMMEDIATE), and max(id) + 1 is what
    SQLite itself would give (no AUTOINCREMENT tables)."""
    if s.get_bind().dialect.name == "sqlite":
        new: dict[Table, list[Any]] = defaultdict(list)
        now = utcnow()
        for obj in s.new:  # in the order they were added
            table = inspect(obj).mapper.local_table
            if "id" in table.c and table.c.id.autoincrement and obj.id is None:
                new[table].append(obj)
            # A column with a server default would be fetched back (RETURNING again); the timestamps are the
            # only ones these tables have, and their client default is this same clock.
            for col in ("created_at", "updated_at"):
                if col in table.c and getattr(obj, col, None) is None:
                    setattr(obj, col, now)
        for table, objs in new.items():
            top = await s.scalar(select(func.max(table.c.id))) or 0
            for i, obj in enumerate(objs, 1):
                obj.id = top + i
    await s.flush()
