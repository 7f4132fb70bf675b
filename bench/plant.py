"""A real central for a benchmark: migrated database, demo plant, the app on a local port, and the AUTO
ingest events of LINE-ING (demo-plant.md: ST-AUTO-01, one-step ROUTE-AUTO-V1, spec TEMP-AUTO)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bench.common import serve
from central.config import Settings
from central.db.engine import Database

EDGE_ID = "edge-line-b"  # registered by the demo seed; ingest is not line-scoped, so it may feed LINE-ING
_wo = itertools.count(1)


@dataclass
class Central:
    base_url: str
    db: Database
    settings: Settings
    app: web.Application

    async def ingest_run(self, units: int, prefix: str | None = None) -> tuple[str, list[str]]:
        """An authorized one-step AUTO run on LINE-ING with `units` units (generated over REST)."""
        from central.demo_line import prepare_run

        return await prepare_run(
            f"{self.base_url}/api",
            units,
            product="P-ING-AUTO",
            routing="ROUTE-AUTO-V1",
            line="LINE-ING",
            sn_prefix=prefix or f"B{next(_wo):02d}-",
        )


@asynccontextmanager
async def central(db_url: str, *, seed: bool = True, **settings: Any) -> AsyncIterator[Central]:
    """Central on `db_url` (migrated, demo plant seeded), serving on 127.0.0.1; `settings` override
    (e.g. mqtt_url). Background workers stay off unless asked: they are not what is measured.
    `seed=False`: the database is already seeded (bench/gen.py), the seed would refuse it."""
    from central.api.app import create_app
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.services.demo_seed import seed_demo
    from central.services.uow import UnitOfWork

    st = Settings(
        database_url=db_url,
        migrate_on_start=False,
        allow_demo_seed=True,
        log_level="WARNING",
        **{"run_workers": False, **settings},
    )
    db = create_database(db_url, pool_size=st.database_pool_size)
    await upgrade(db.engine)
    if seed:
        async with UnitOfWork(db.writer) as uow:
            await seed_demo(uow, st)
    app = create_app(st, database=db)
    runner, base = await serve(app)
    try:
        yield Central(base, db, st, app)
    finally:
        await runner.cleanup()
        await db.dispose()


def auto_event(seq: int, sn: str, *, value: float = 245.0, at: datetime | None = None) -> dict[str, Any]:
    """One INGEST AUTO edge event for ST-AUTO-01 in the wire shape of shared/events.EdgeEvent."""
    occurred = (at or datetime.now(UTC)).isoformat()
    return {
        "eventId": f"bench-{sn}",
        "seq": seq,
        "kind": "INGEST",
        "occurredAt": occurred,
        "stationCode": "ST-AUTO-01",
        "payload": {
            "eventType": "AUTO",
            "payload": {
                "stationCode": "ST-AUTO-01",
                "sn": sn,
                "result": "PASS",
                "measurements": [{"name": "TEMP-AUTO", "value": value, "unit": "C", "judge": "PASS"}],
            },
        },
    }
