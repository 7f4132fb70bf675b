"""Reusable HTTP steps of the scenarios: work order → run → units → authorize, as the demo users."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import Inspection, ReadinessCheck, Run
from central.domain.clock import utcnow
from tests.client import Api

PL, EN, Q, OP, M, A = (
    f"{u}@example.com" for u in ("planner", "engineer", "quality", "operator", "material", "admin")
)
SMT_STATIONS = ["ST-PRINT-01", "ST-SPI-01", "ST-MOUNT-01", "ST-REFLOW-01", "ST-AOI-01"]
DIP_STATIONS = ["ST-DIP-INS-01", "ST-DIP-WAVE-01", "ST-DIP-POST-01", "ST-DIP-TEST-01"]
_seq = itertools.count(1)


async def seed(database: Database) -> dict[str, Any]:
    from central.config import Settings
    from central.services.demo_seed import seed_demo
    from central.services.uow import UnitOfWork

    async with UnitOfWork(database.writer) as uow:
        return await seed_demo(uow, Settings())


async def released_run(
    api: Api,
    *,
    product: str = "P-1001",
    routing: str = "PCBA-STD-V1",
    line: str = "LINE-A",
    qty: int = 1,
    units: int | None = None,
) -> dict[str, Any]:
    """Receive + release a fresh work order, create a run and generate units (PREP)."""
    wo_no = f"WO-T-{next(_seq):04d}"
    r = await api.post(
        "/integration/work-orders",
        PL,
        json={"woNo": wo_no, "productCode": product, "plannedQty": 100, "routingCode": routing},
    )
    assert r.status == 200, r.body
    r = await api.post(f"/work-orders/{wo_no}/release", PL, json={"lineCode": line})
    assert r.status == 200, r.body
    r = await api.post(f"/work-orders/{wo_no}/runs", PL, json={"lineCode": line, "planQty": qty})
    assert r.status == 200, r.body
    run_no = r.data["runNo"]
    g = await api.post(f"/runs/{run_no}/generate-units", PL, json={"quantity": units or qty})
    assert g.status == 200, g.body
    return {"woNo": wo_no, "runNo": run_no, "sns": [u["sn"] for u in g.data["units"]]}


async def pass_fai(database: Database, run_no: str) -> None:
    """Record a passed, signed FAI directly (the FAI workflow has its own tests)."""
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        s.add(
            Inspection(
                run_id=run_id,
                type="FAI",
                status="PASS",
                sample_qty=1,
                passed_qty=1,
                failed_qty=0,
                started_at=utcnow(),
                decided_at=utcnow(),
                signed_by="quality",
                signed_at=utcnow(),
                data={},
            )
        )


async def pass_readiness(database: Database, run_no: str) -> None:
    """Record a PASSED FORMAL readiness check (readiness has its own tests; LINE-A needs loading)."""
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        s.add(
            ReadinessCheck(
                run_id=run_id, type="FORMAL", status="PASSED", checked_at=utcnow(), checked_by="test", meta={}
            )
        )


async def authorized_run(api: Api, database: Database, **kw: Any) -> dict[str, Any]:
    flow = await released_run(api, **kw)
    await pass_readiness(database, flow["runNo"])
    await pass_fai(database, flow["runNo"])
    r = await api.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body
    return flow


async def move(
    api: Api, station: str, sn: str, flow: dict[str, Any], result: str = "PASS", **extra: Any
) -> Any:
    r = await api.post(
        f"/stations/{station}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    )
    assert r.status == 200, (station, r.body)
    return await api.post(
        f"/stations/{station}/track-out",
        OP,
        json={"sn": sn, "runNo": flow["runNo"], "result": result, "operatorId": "OP-01", **extra},
    )


async def set_run_status(database: Database, run_no: str, status: str) -> None:
    async with database.writer() as s, s.begin():
        await s.execute(update(Run).where(Run.run_no == run_no).values(status=status))
