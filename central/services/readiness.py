"""Readiness checks (domain.md §5): PRECHECK (advisory) and FORMAL (blocking), waivers, exceptions, config."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from central.db.models import Line, ReadinessCheck, ReadinessCheckItem, Run, Station, WorkOrder
from central.domain.clock import iso, utcnow
from central.domain.errors import NotFound, Rejected
from central.schemas.base import parse_row_id
from central.schemas.readiness import ExceptionsQuery, ReadinessConfig, WaiveBody
from central.services import readiness_eval
from central.services.plant import get_line_row
from central.services.uow import UnitOfWork


def check_out(check: ReadinessCheck, items: list[ReadinessCheckItem]) -> dict[str, Any]:
    counts = {st: sum(1 for i in items if i.status == st) for st in ("PASSED", "FAILED", "WAIVED")}
    return {
        "checkId": check.id,
        "type": check.type,
        "status": check.status,
        "checkedAt": iso(check.checked_at),
        "checkedBy": check.checked_by,
        "items": [
            {
                "id": i.id,
                "itemType": i.item_type,
                "itemKey": i.item_key,
                "status": i.status,
                "failReason": i.fail_reason,
                "evidence": i.evidence_json,
                "waivedAt": iso(i.waived_at),
                "waivedBy": i.waived_by,
                "waiveReason": i.waive_reason,
            }
            for i in items
        ],
        "summary": {
            "total": len(items),
            "passed": counts["PASSED"],
            "failed": counts["FAILED"],
            "waived": counts["WAIVED"],
        },
    }


async def _run(uow: UnitOfWork, run_no: str) -> Run:
    run = await uow.session.scalar(select(Run).where(Run.run_no == run_no))
    if run is None:
        raise NotFound("RUN_NOT_FOUND", f"Run {run_no} not found")
    return run


async def evaluate(uow: UnitOfWork, run: Run, check_type: str) -> ReadinessCheck:
    """Runs every enabled evaluator and stores a new check: FAILED iff any item FAILED (same transaction)."""
    s = uow.session
    line = await s.get(Line, run.line_id)
    assert line is not None
    items: list[readiness_eval.Item] = []
    for item_type in readiness_eval.enabled_types(line):
        items += await readiness_eval.EVALUATORS[item_type](uow, run)
    status = "FAILED" if any(not i.passed for i in items) else "PASSED"
    check = ReadinessCheck(
        run_id=run.id,
        type=check_type,
        status=status,
        checked_at=utcnow(),
        checked_by=uow.actor.name if check_type == "FORMAL" else None,
        meta={},
    )
    s.add(check)
    await s.flush()
    s.add_all(
        [
            ReadinessCheckItem(
                check_id=check.id,
                item_type=i.item_type,
                item_key=i.item_key,
                status="PASSED" if i.passed else "FAILED",
                fail_reason=i.fail_reason,
                evidence_json=i.evidence or None,
            )
            for i in items
        ]
    )
    await s.flush()
    uow.audit(
        check.id,
        run.run_no,
        entity_type="READINESS_CHECK",
        action=f"READINESS_{check_type}",
        after={"status": status, "failed": sum(1 for i in items if not i.passed), "total": len(items)},
    )
    return check


async def _items(uow: UnitOfWork, check: ReadinessCheck) -> list[ReadinessCheckItem]:
    return list(
        (
            await uow.session.scalars(
                select(ReadinessCheckItem)
                .where(ReadinessCheckItem.check_id == check.id)
                .order_by(ReadinessCheckItem.id)
            )
        ).all()
    )


async def run_check(uow: UnitOfWork, run_no: str, check_type: str) -> dict[str, Any]:
    run = await _run(uow, run_no)
    check = await evaluate(uow, run, check_type)
    return check_out(check, await _items(uow, check))


async def latest(uow: UnitOfWork, run: Run, check_type: str | None) -> ReadinessCheck | None:
    stmt = select(ReadinessCheck).where(ReadinessCheck.run_id == run.id)
    if check_type:
        stmt = stmt.where(ReadinessCheck.type == check_type)
    return await uow.session.scalar(
        stmt.order_by(ReadinessCheck.checked_at.desc(), ReadinessCheck.id.desc()).limit(1)
    )


async def get_latest(uow: UnitOfWork, run_no: str, check_type: str | None) -> dict[str, Any]:
    check = await latest(uow, await _run(uow, run_no), check_type)
    if check is None:
        raise NotFound(
            "NO_CHECK_FOUND", f"Run {run_no} has no {check_type or ''} readiness check".replace("  ", " ")
        )
    return check_out(check, await _items(uow, check))


async def history(uow: UnitOfWork, run_no: str) -> list[dict[str, Any]]:
    run = await _run(uow, run_no)
    checks = (
        await uow.session.scalars(
            select(ReadinessCheck)
            .where(ReadinessCheck.run_id == run.id)
            .order_by(ReadinessCheck.checked_at.desc(), ReadinessCheck.id.desc())
        )
    ).all()
    return [check_out(c, await _items(uow, c)) for c in checks]


async def formal_allows(uow: UnitOfWork, run: Run) -> bool:
    """The gate of authorization and the FAI trial: the latest FORMAL check (run one only if none exists —
    a stale FAILED check is not re-evaluated) has no FAILED item."""
    check = await latest(uow, run, "FORMAL") or await evaluate(uow, run, "FORMAL")
    return check.status != "FAILED"


async def ensure_formal_passed(uow: UnitOfWork, run: Run) -> bool:
    """FAI creation: a new FORMAL check when the latest one is missing or not PASSED; → whether it passed."""
    check = await latest(uow, run, "FORMAL")
    if check is None or check.status != "PASSED":
        check = await evaluate(uow, run, "FORMAL")
    return check.status == "PASSED"


async def waive(uow: UnitOfWork, run_no: str, item_id: int, body: WaiveBody) -> dict[str, Any]:
    s = uow.session
    run = await _run(uow, run_no)
    item = await s.get(ReadinessCheckItem, item_id)
    if item is None:
        raise NotFound("ITEM_NOT_FOUND", f"Readiness item {item_id} not found")
    check = await s.get(ReadinessCheck, item.check_id)
    if check is None or check.run_id != run.id:
        raise Rejected("RUN_MISMATCH", f"Readiness item {item_id} belongs to another run")
    if item.status != "FAILED":
        raise Rejected(
            "ITEM_NOT_FAILED", f"Readiness item {item_id} is {item.status}; only FAILED items are waived"
        )
    item.status, item.waived_at, item.waived_by, item.waive_reason = (
        "WAIVED",
        utcnow(),
        uow.actor.name,
        body.reason,
    )
    await s.flush()
    before = check.status
    remaining = await s.scalar(
        select(func.count(ReadinessCheckItem.id)).where(
            ReadinessCheckItem.check_id == check.id, ReadinessCheckItem.status == "FAILED"
        )
    )
    if not remaining:
        check.status = "PASSED"
    uow.audit(
        item.id,
        f"{run.run_no}/{item.item_type}/{item.item_key}",
        entity_type="READINESS_CHECK",
        action="READINESS_ITEM_WAIVE",
        before={"itemStatus": "FAILED", "checkStatus": before},
        after={"itemStatus": "WAIVED", "checkStatus": check.status, "reason": body.reason},
    )
    return {
        "itemId": item.id,
        "status": item.status,
        "waivedAt": iso(item.waived_at),
        "waivedBy": item.waived_by,
        "waiveReason": item.waive_reason,
        "checkStatus": check.status,
    }


async def precheck_runs(uow: UnitOfWork, *, line_ids: set[int] | None = None, run: Run | None = None) -> int:
    """PRECHECK of one run or of every PREP run on some lines (after TPM or maintenance changes)."""
    runs = (
        [run]
        if run is not None
        else list(
            (
                await uow.session.scalars(
                    select(Run).where(Run.status == "PREP", Run.line_id.in_(line_ids or set()))
                )
            ).all()
        )
    )
    for r in runs:
        await evaluate(uow, r, "PRECHECK")
    return len(runs)


async def precheck_for_stations(uow: UnitOfWork, station_codes: list[str]) -> int:
    lines = set(await uow.session.scalars(select(Station.line_id).where(Station.code.in_(station_codes))))
    return await precheck_runs(uow, line_ids=lines) if lines else 0


async def exceptions(uow: UnitOfWork, q: ExceptionsQuery) -> dict[str, Any]:
    """The latest check of every PREP run, where it FAILED (the board supervisors work from)."""
    s = uow.session
    newest = (
        select(ReadinessCheck.run_id, func.max(ReadinessCheck.id).label("check_id"))
        .group_by(ReadinessCheck.run_id)
        .subquery()
    )
    stmt = (
        select(Run, ReadinessCheck, WorkOrder.product_code, Line.code, Line.name)
        .join(newest, newest.c.run_id == Run.id)
        .join(ReadinessCheck, ReadinessCheck.id == newest.c.check_id)
        .join(WorkOrder, WorkOrder.id == Run.wo_id)
        .join(Line, Line.id == Run.line_id)
        .where(Run.status == "PREP")
    )
    statuses = [x for x in (q.status or "FAILED").split(",") if x and x != "ALL"]
    if statuses:
        stmt = stmt.where(ReadinessCheck.status.in_(statuses))
    if q.line_id:
        line_id = parse_row_id(q.line_id)
        stmt = stmt.where(Line.id == line_id if line_id is not None else Line.code == q.line_id)
    if q.from_:
        stmt = stmt.where(ReadinessCheck.checked_at >= q.from_)
    if q.to:
        stmt = stmt.where(ReadinessCheck.checked_at <= q.to)
    total = await s.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = (
        await s.execute(
            stmt.order_by(ReadinessCheck.checked_at.desc()).limit(q.limit).offset((q.page - 1) * q.limit)
        )
    ).all()
    items = []
    for run, check, product, line_code, line_name in rows:
        st = [i.status for i in check.items]
        items.append(
            {
                "runNo": run.run_no,
                "runStatus": run.status,
                "productCode": product,
                "lineCode": line_code,
                "lineName": line_name,
                "checkId": check.id,
                "checkType": check.type,
                "checkStatus": check.status,
                "checkedAt": iso(check.checked_at),
                "failedCount": st.count("FAILED"),
                "waivedCount": st.count("WAIVED"),
            }
        )
    return {"items": items, "total": total, "page": q.page, "limit": q.limit}


async def get_config(uow: UnitOfWork, line_key: str) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    cfg = (line.meta or {}).get("readinessChecks")
    return {
        "lineId": line.id,
        "lineCode": line.code,
        "enabled": readiness_eval.enabled_types(line),
        "configured": isinstance(cfg, dict) and "enabled" in cfg,
    }


async def put_config(uow: UnitOfWork, line_key: str, body: ReadinessConfig) -> dict[str, Any]:
    line = await get_line_row(uow, line_key)
    before = readiness_eval.enabled_types(line)
    enabled = [t for t in readiness_eval.ENABLED_NOW if t in body.enabled]
    line.meta = {**(line.meta or {}), "readinessChecks": {"enabled": enabled}}
    await uow.session.flush()
    uow.audit(
        line.id,
        line.code,
        entity_type="LINE",
        action="LINE_READINESS_CONFIG_UPDATE",
        before={"enabled": before},
        after={"enabled": enabled},
    )
    return await get_config(uow, str(line.id))
