"""Data retention: moves closed runs older than a cut-off out of the database into archive files.

A run is archivable when its status is terminal (COMPLETED, CLOSED_REWORK, SCRAPPED), it ended (ended_at,
else updated_at) before the cut-off, and nothing open still hangs off it: no rework run pointing at it,
no unclosed defect or OPEN rework task of a unit that is not scrapped, no PENDING/INSPECTING inspection and
no ERP feedback event still to deliver. Its rows — the run and every row that reaches it through a foreign
key (units, tracks, data values, ingest events, …; `closure`) — go to `<out>/<YYYY>/<runNo>.jsonl.gz`,
then leave the database in one transaction that also writes a RUN_ARCHIVE audit row naming the file and
its sha256. Audit rows of the archived entities are copied into the file but stay in the append-only log.

Crash safety: the file is published (tmp + fsync + link) before the delete. A file already present is used
only when its rows are exactly the rows still in the database (a crash between file and delete); any other
file is refused and never overwritten. docs/RETENTION.md has the operator's view.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, String, Table, and_, cast, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    CarrierLoad,
    CarrierTrack,
    DataValue,
    Defect,
    DeviceDataRecord,
    Disposition,
    EdgeEventReceipt,
    IngestEvent,
    Inspection,
    InspectionItem,
    InspectionResultRecord,
    IntegrationMessage,
    LoadingRecord,
    MesEvent,
    ReadinessCheck,
    ReadinessCheckItem,
    ReworkTask,
    Run,
    RunSlotExpectation,
    Track,
    Unit,
    WorkOrder,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict
from central.domain.states import RUN_TERMINAL
from central.services.archive_file import (
    ArchiveWriter,
    Fingerprint,
    Fingerprints,
    read_archive,
    same_rows,
    sha256_of,
)
from central.services.outbound import EVENT_TYPE as OUTBOUND_EVENT
from central.services.uow import AuditContext, UnitOfWork

AUDIT_TABLE = "audit_events"
# Audit entity types whose entity_id is the id of an archived row (copied into the file, never deleted).
AUDITED: dict[str, Any] = {
    "RUN": Run,
    "UNIT": Unit,
    "TRACK": Track,
    "DEFECT": Defect,
    "DISPOSITION": Disposition,
    "REWORK_TASK": ReworkTask,
    "INSPECTION": Inspection,
    "READINESS_CHECK": ReadinessCheck,
}
CHUNK = 2000  # rows per fetch while exporting
# Refusals that point at a problem with the archive itself rather than at open work.
INTEGRITY_REFUSALS = frozenset({"ARCHIVE_FILE_DIFFERS", "VERIFY_FAILED"})


def closure(run_id: int) -> list[tuple[Table, ColumnElement[bool]]]:
    """Every table holding rows of the run, with the predicate selecting them, children first (delete order).

    Subqueries rather than id lists: a run's data values can be far more than a statement's parameter limit.
    tests/integration/test_archive.py checks that every foreign key into these tables is covered here.
    """
    units = select(Unit.id).where(Unit.run_id == run_id)
    tracks = select(Track.id).where(Track.unit_id.in_(units))
    ctracks = select(CarrierTrack.id).where(CarrierTrack.run_id == run_id)
    defects = select(Defect.id).where(or_(Defect.unit_id.in_(units), Defect.track_id.in_(tracks)))
    dispositions = select(Disposition.id).where(Disposition.defect_id.in_(defects))
    inspections = select(Inspection.id).where(Inspection.run_id == run_id)
    checks = select(ReadinessCheck.id).where(ReadinessCheck.run_id == run_id)
    rows: list[tuple[Any, ColumnElement[bool]]] = [
        (DataValue, or_(DataValue.track_id.in_(tracks), DataValue.carrier_track_id.in_(ctracks))),
        (
            DeviceDataRecord,
            or_(
                DeviceDataRecord.run_id == run_id,
                DeviceDataRecord.unit_id.in_(units),
                DeviceDataRecord.track_id.in_(tracks),
                DeviceDataRecord.carrier_track_id.in_(ctracks),
            ),
        ),
        (
            InspectionResultRecord,
            or_(InspectionResultRecord.run_id == run_id, InspectionResultRecord.track_id.in_(tracks)),
        ),
        (ReworkTask, or_(ReworkTask.unit_id.in_(units), ReworkTask.disposition_id.in_(dispositions))),
        (Disposition, Disposition.defect_id.in_(defects)),
        (Defect, or_(Defect.unit_id.in_(units), Defect.track_id.in_(tracks))),
        (IngestEvent, or_(IngestEvent.run_id == run_id, IngestEvent.unit_id.in_(units))),
        (CarrierLoad, CarrierLoad.unit_id.in_(units)),
        (Track, Track.unit_id.in_(units)),
        (CarrierTrack, CarrierTrack.run_id == run_id),
        (InspectionItem, InspectionItem.inspection_id.in_(inspections)),
        (Inspection, Inspection.run_id == run_id),
        (ReadinessCheckItem, ReadinessCheckItem.check_id.in_(checks)),
        (ReadinessCheck, ReadinessCheck.run_id == run_id),
        (RunSlotExpectation, RunSlotExpectation.run_id == run_id),
        (LoadingRecord, LoadingRecord.run_id == run_id),
        (MesEvent, MesEvent.run_id == run_id),
        (Unit, Unit.run_id == run_id),
        (Run, Run.id == run_id),
    ]
    return [(model.__table__, pred) for model, pred in rows]


def audit_predicate(run_id: int) -> ColumnElement[bool]:
    preds = {table.name: pred for table, pred in closure(run_id)}
    by_type = {t: preds[m.__tablename__] for t, m in AUDITED.items()}
    return or_(
        *(
            and_(
                AuditEvent.entity_type == t,
                AuditEvent.entity_id.in_(select(cast(AUDITED[t].id, String)).where(pred)),
            )
            for t, pred in by_type.items()
        )
    )


# ---- results ---------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    run_no: str
    status: str  # ARCHIVED | WOULD_ARCHIVE | REFUSED
    reason: str | None = None  # refusal code, or RESUMED when an earlier attempt's file was used
    file: str | None = None
    sha256: str | None = None
    bytes: int = 0
    rows: dict[str, int] = field(default_factory=dict)


@dataclass
class ArchiveReport:
    cutoff: datetime
    dry_run: bool
    outcomes: list[RunOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def done(self, status: str) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def rows(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for o in self.done("WOULD_ARCHIVE" if self.dry_run else "ARCHIVED"):
            for t, n in o.rows.items():
                total[t] = total.get(t, 0) + n
        return total

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.outcomes if o.status == "ARCHIVED")

    @property
    def integrity_problem(self) -> bool:
        return any(o.reason in INTEGRITY_REFUSALS for o in self.outcomes)


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ---- reads -----------------------------------------------------------------------------------------------


def _end(run: Any) -> datetime:
    return run.ended_at or run.updated_at


def archive_path(out_dir: Path, run: Any) -> Path:
    # Run numbers come from work order numbers (ERP text): keep the file name to one safe path segment.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run.run_no).lstrip(".") or "_"
    return out_dir / f"{_end(run).year:04d}" / f"{safe}.jsonl.gz"


async def _fingerprints(conn: AsyncConnection, run_id: int) -> Fingerprints:
    out: Fingerprints = {}
    for table, pred in closure(run_id):
        c = table.c.id
        n, total, lo, hi = (
            await conn.execute(select(func.count(c), func.sum(c), func.min(c), func.max(c)).where(pred))
        ).one()
        out[table.name] = Fingerprint(int(n), int(total or 0), lo, hi)
    return out


async def _blocker(conn: AsyncConnection, run_id: int, gone: set[int]) -> str | None:
    """The first reason the run must stay, or None. `gone` = runs already (or, dry run: to be) archived."""
    child = await conn.scalar(
        select(Run.id).where(Run.parent_run_id == run_id, Run.id.not_in(gone or {-1})).limit(1)
    )
    if child is not None:
        return "REWORK_RUN_OPEN"
    units = select(Unit.id).where(Unit.run_id == run_id)
    live_unit = and_(Unit.id == Defect.unit_id, Unit.status != "SCRAPPED")
    checks: list[tuple[str, Select[Any]]] = [
        (
            "OPEN_DEFECTS",
            select(Defect.id)
            .join(Unit, live_unit)
            .where(Defect.unit_id.in_(units), Defect.status != "CLOSED"),
        ),
        (
            "OPEN_REWORK_TASKS",
            select(ReworkTask.id)
            .join(Unit, and_(Unit.id == ReworkTask.unit_id, Unit.status != "SCRAPPED"))
            .where(ReworkTask.unit_id.in_(units), ReworkTask.status == "OPEN"),
        ),
        (
            "OPEN_INSPECTIONS",
            select(Inspection.id).where(
                Inspection.run_id == run_id, Inspection.status.in_(("PENDING", "INSPECTING"))
            ),
        ),
        (
            # TRACK_* events have no consumer that finishes them; only ERP feedback is still owed to someone.
            "OUTBOUND_PENDING",
            select(MesEvent.id).where(
                MesEvent.run_id == run_id,
                MesEvent.event_type == OUTBOUND_EVENT,
                or_(
                    MesEvent.status.in_(("PENDING", "PROCESSING")),
                    and_(MesEvent.status == "FAILED", MesEvent.next_attempt_at.is_not(None)),
                ),
            ),
        ),
    ]
    for code, stmt in checks:
        if await conn.scalar(stmt.limit(1)) is not None:
            return code
    return None


async def _export(conn: AsyncConnection, run: Any, path: Path, header: dict[str, Any]) -> Fingerprints:
    with ArchiveWriter(path, header) as w:
        plan = [(t, select(t).where(p)) for t, p in reversed(closure(run.id))]  # parents first
        plan.append((AuditEvent.__table__, select(AuditEvent.__table__).where(audit_predicate(run.id))))
        for table, stmt in plan:
            # Fetched in chunks: row by row costs a driver round trip (aiosqlite: a thread hop) each.
            result = await conn.stream(stmt.order_by(table.c.id).execution_options(yield_per=CHUNK))
            async for chunk in result.partitions():
                w.rows(table.name, [dict(r._mapping) for r in chunk])
        w.publish()
    return w.written


def _without_audit(fp: Fingerprints) -> Fingerprints:
    return {t: f for t, f in fp.items() if t != AUDIT_TABLE}


# ---- the command -----------------------------------------------------------------------------------------


@dataclass
class _Job:
    db: Database
    out_dir: Path
    cutoff: datetime
    dry_run: bool
    limit: int | None
    report: ArchiveReport
    gone: set[int] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    clock: Callable[[], datetime] = utcnow

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.gone) >= self.limit

    async def process(self, run_id: int) -> None:
        if run_id in self.seen or self.full:
            return
        self.seen.add(run_id)
        # A rework run keeps its parent: archive eligible children first (they were created later).
        async with self.db.engine.connect() as conn:
            children = list(
                await conn.scalars(select(Run.id).where(Run.parent_run_id == run_id).order_by(Run.id))
            )
        for child in children:
            async with self.db.engine.connect() as conn:
                ok = await _is_candidate(conn, child, self.cutoff)
            if ok:
                await self.process(child)
        if self.full:
            return
        self.report.outcomes.append(await self.one(run_id))

    async def one(self, run_id: int) -> RunOutcome:
        async with self.db.engine.connect() as conn:
            if self.db.dialect == "postgresql":
                # One snapshot for the checks, the fingerprints and the export.
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                run = (await conn.execute(select(Run.__table__).where(Run.id == run_id))).one()
                path = archive_path(self.out_dir, run)
                outcome = RunOutcome(run.run_no, "REFUSED", file=str(path))
                blocker = await _blocker(conn, run_id, self.gone)
                if blocker:
                    outcome.reason = blocker
                    return outcome
                db_fp = await _fingerprints(conn, run_id)
                outcome.rows = {t: f.count for t, f in db_fp.items() if f.count}
                if self.dry_run:
                    self.gone.add(run_id)
                    outcome.status = "WOULD_ARCHIVE"
                    if path.exists():
                        outcome.reason = "RESUMED"
                    return outcome
                created = False
                if path.exists():
                    contents = read_archive(path)
                    if not (
                        contents.complete
                        and contents.header.get("runId") == run_id
                        and same_rows(_without_audit(contents.tables), db_fp)
                    ):
                        outcome.reason = "ARCHIVE_FILE_DIFFERS"
                        return outcome
                    outcome.reason = "RESUMED"
                else:
                    wo_no = await conn.scalar(select(WorkOrder.wo_no).where(WorkOrder.id == run.wo_id))
                    header = {
                        "runId": run_id,
                        "runNo": run.run_no,
                        "woNo": wo_no,
                        "status": run.status,
                        "endedAt": iso(run.ended_at),
                        "archivedAt": iso(self.clock()),
                    }
                    written = await _export(conn, run, path, header)
                    created = True
                    contents = read_archive(path)  # read back what reached the disk
                    if not (
                        contents.complete
                        and same_rows(contents.tables, written)
                        and same_rows(_without_audit(contents.tables), db_fp)
                    ):
                        path.unlink(missing_ok=True)
                        outcome.reason = "VERIFY_FAILED"
                        return outcome
        outcome.sha256 = sha256_of(path)
        outcome.bytes = path.stat().st_size
        try:
            await self._delete(run, run_id, path, outcome, db_fp)
        except _Refused as exc:
            if created:  # ours and now stale: drop it so the next attempt exports afresh
                path.unlink(missing_ok=True)
            outcome.reason = exc.code
            return outcome
        self.gone.add(run_id)
        outcome.status = "ARCHIVED"
        return outcome

    async def _delete(self, run: Any, run_id: int, path: Path, outcome: RunOutcome, fp: Fingerprints) -> None:
        ctx = AuditContext(entity_type="RUN", action="RUN_ARCHIVE", is_write=True)
        async with UnitOfWork(self.db.writer, ctx=ctx) as uow:
            s = uow.session
            locked = await s.scalar(select(Run.id).where(Run.id == run_id).with_for_update())
            conn = await s.connection()
            if locked is None or await _blocker(conn, run_id, self.gone):
                raise _Refused("CHANGED_DURING_ARCHIVE")
            if not same_rows(await _fingerprints(conn, run_id), fp):
                raise _Refused("CHANGED_DURING_ARCHIVE")
            for table, pred in closure(run_id):
                deleted = (await s.execute(delete(table).where(pred))).rowcount
                if deleted != fp[table.name].count:
                    raise Conflict(
                        "ARCHIVE_DELETE_MISMATCH",
                        f"{table.name}: deleted {deleted} rows, archived {fp[table.name].count}",
                    )
            uow.audit(
                run_id,
                run.run_no,
                payload={
                    "file": str(path),
                    "sha256": outcome.sha256,
                    "bytes": outcome.bytes,
                    "rows": outcome.rows,
                    # Tombstone: enough to answer "where did run X go" without opening the file.
                    "run": {"runNo": run.run_no, "status": run.status, "endedAt": iso(run.ended_at)},
                    "resumed": outcome.reason == "RESUMED",
                },
            )


async def _is_candidate(conn: AsyncConnection, run_id: int, cutoff: datetime) -> bool:
    row = (
        await conn.execute(select(Run.status, Run.ended_at, Run.updated_at).where(Run.id == run_id))
    ).one_or_none()
    return row is not None and row.status in RUN_TERMINAL and (row.ended_at or row.updated_at) < cutoff


async def archive_runs(
    db: Database,
    *,
    older_than_days: float,
    out_dir: Path,
    dry_run: bool = False,
    limit: int | None = None,
    now: datetime | None = None,
) -> ArchiveReport:
    """Archives (or, dry run, lists) closed runs that ended more than `older_than_days` ago, oldest first."""
    started = time.monotonic()
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    report = ArchiveReport(cutoff=cutoff, dry_run=dry_run)
    job = _Job(db, out_dir, cutoff, dry_run, limit, report)
    ended = func.coalesce(Run.ended_at, Run.updated_at)
    async with db.engine.connect() as conn:
        candidates = list(
            await conn.scalars(
                select(Run.id).where(Run.status.in_(RUN_TERMINAL), ended < cutoff).order_by(ended, Run.id)
            )
        )
    for run_id in candidates:
        if job.full:
            break
        await job.process(run_id)
    report.seconds = time.monotonic() - started
    return report


async def purge_receipts(
    db: Database, *, older_than_days: float, now: datetime | None = None
) -> dict[str, int]:
    """Deletes edge event receipts and finished integration messages older than the cut-off.

    A receipt only answers an edge's redelivery of an event it saw no ack for; past the longest edge outage
    nothing redelivers it (choose DAYS well beyond that). NEW integration messages stay.
    """
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    ctx = AuditContext(entity_type="INTEGRATION", action="RETENTION_PURGE", is_write=True)
    async with UnitOfWork(db.writer, ctx=ctx) as uow:
        s = uow.session
        receipts = (
            await s.execute(delete(EdgeEventReceipt).where(EdgeEventReceipt.applied_at < cutoff))
        ).rowcount
        messages = (
            await s.execute(
                delete(IntegrationMessage).where(
                    IntegrationMessage.created_at < cutoff, IntegrationMessage.status != "NEW"
                )
            )
        ).rowcount
        out = {"edge_event_receipts": receipts, "integration_messages": messages}
        uow.audit(None, None, payload={"cutoff": iso(cutoff), "deleted": out})
    return out
