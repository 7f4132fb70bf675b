"""The pull scheduler: each sync once per tick across processes, leases, page loops, start and stop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from central.config import Settings
from central.db.engine import Database, create_database
from central.integration.mock_server import at
from central.integration.scheduler import claim, finish, lease_for, run_scheduler, run_tick, tick_start
from central.services import sync
from tests.client import Api
from tests.integration.test_sync_erp import Upstream, app_for, messages, pointed_at, start_upstream

T = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a tick boundary for every interval dividing an hour
PATHS = [f"/{job.system.lower()}/{job.path}" for job in sync.JOBS]
ENG = "eng@example.com"


@pytest.fixture
async def up(aiohttp_server: Any) -> Upstream:
    return await start_upstream(aiohttp_server)


def every(settings: Settings, up: Upstream, seconds: int = 60, **extra: Any) -> Settings:
    return pointed_at(settings, up, sync_interval_seconds=seconds, **extra)


async def jobs_status(aiohttp_client: Any, settings: Settings, database: Database, make_user: Any) -> Any:
    await make_user(ENG, "engineer")
    api: Api = await app_for(aiohttp_client, settings, database)
    return {j["entityType"]: j for j in (await api.get("/integration/status", ENG)).data["jobs"]}


async def test_two_schedulers_on_one_database_run_each_sync_once_per_tick(
    up: Upstream, settings: Settings, database: Database
) -> None:
    s = every(settings, up)
    other = create_database(s.database_url, pool_size=5)  # a second central process
    try:
        a, b = await asyncio.gather(
            run_tick(database, s, now=T + timedelta(seconds=5), owner="a"),
            run_tick(other, s, now=T + timedelta(seconds=7), owner="b"),
        )
    finally:
        await other.dispose()
    assert set(a) == set(b) == {job.name for job in sync.JOBS}
    for name in a:
        assert sorted([a[name], b[name]]) == ["NOT_CLAIMED", "SUCCESS"], (name, a[name], b[name])
    assert {p: up.state.calls(p) for p in PATHS} == dict.fromkeys(PATHS, 1)

    same_tick = await run_tick(database, s, now=T + timedelta(seconds=59), owner="c")
    assert set(same_tick.values()) == {"NOT_CLAIMED"}
    assert {p: up.state.calls(p) for p in PATHS} == dict.fromkeys(PATHS, 1)

    next_tick = await run_tick(database, s, now=T + timedelta(seconds=60), owner="c")
    assert set(next_tick.values()) <= {"SUCCESS", "DUPLICATE"}
    assert {p: up.state.calls(p) for p in PATHS} == dict.fromkeys(PATHS, 2)


async def test_a_live_lease_keeps_later_ticks_off_until_it_ends_or_expires(
    up: Upstream, settings: Settings, database: Database
) -> None:
    s = every(settings, up)
    job, lease = sync.ERP_MATERIALS, lease_for(s)
    assert await claim(database, job, T, T, lease, "a")
    assert not await claim(database, job, T, T, lease, "b")  # this tick is taken
    nxt = T + timedelta(seconds=60)
    assert not await claim(database, job, nxt, nxt, lease, "b")  # a is still running
    later = T + lease + timedelta(seconds=1)
    assert await claim(database, job, tick_start(later, 60), later, lease, "b")  # a died: its lease ran out
    await finish(database, job, "a", {"status": "SUCCESS"})  # a's late finish leaves b's claim alone
    after = T + lease + timedelta(seconds=61)
    assert not await claim(database, job, tick_start(after, 60), after, lease, "c")
    await finish(database, job, "b", {"status": "SUCCESS"})
    assert await claim(database, job, tick_start(after, 60), after, lease, "c")


async def test_a_tick_follows_has_more_and_isolates_failures(
    up: Upstream, settings: Settings, database: Database, aiohttp_client: Any, make_user: Any
) -> None:
    extra = [
        {"parentCode": "P-BIG", "childCode": f"C-{i:03d}", "qty": 1, "updatedAt": at(1000 + i)}
        for i in range(120)
    ]
    up.state.put("erp", "boms", *extra)
    up.state.failing_paths = {"/erp/materials"}
    s = every(settings, up, tpm_base_url=None)
    out = await run_tick(database, s, now=T)
    assert out == {
        "ERP:WORK_CENTER": "SUCCESS",
        "ERP:MATERIAL": "FAILED",
        "ERP:BOM": "SUCCESS",
        "ERP:ROUTING": "SUCCESS",
        "ERP:WORK_ORDER": "SUCCESS",
        "TPM:EQUIPMENT": "NOT_CONFIGURED",
        "TPM:MAINTENANCE_TASK": "NOT_CONFIGURED",
        "TPM:STATUS_LOG": "NOT_CONFIGURED",
    }
    boms = [r["query"] for r in up.state.requests if r["path"] == "/erp/boms"]
    assert [(q["startRow"], q["limit"]) for q in boms] == [("0", "50"), ("50", "50"), ("100", "50")]
    assert [m.status for m in await messages(database, "MATERIAL")] == ["FAILED"]

    jobs = await jobs_status(aiohttp_client, s, database, make_user)
    bom = jobs["BOM"]
    assert bom["cursor"]["meta"] == {} and bom["cursor"]["lastSyncAt"] == at(1119)
    cron = bom["lastCron"]
    assert (cron["status"], cron["pages"], cron["items"], cron["leaseUntil"]) == ("SUCCESS", 3, 125, None)
    assert cron["tick"] == "2026-03-02T10:00:00.000Z" and cron["finishedAt"]
    material = jobs["MATERIAL"]["lastCron"]
    assert material["status"] == "FAILED" and material["error"].startswith("UPSTREAM_FAILED")
    assert jobs["MATERIAL"]["lastMessage"]["status"] == "FAILED"
    assert jobs["EQUIPMENT"]["configured"] is False and jobs["EQUIPMENT"]["lastCron"] is None


async def test_run_scheduler_ticks_until_stopped(
    up: Upstream, settings: Settings, database: Database
) -> None:
    stop = asyncio.Event()
    off = asyncio.create_task(run_scheduler(database, every(settings, up, 0), stop))
    await asyncio.wait_for(off, 5)  # interval 0: the scheduler is off and returns at once
    assert up.state.requests == []

    task = asyncio.create_task(run_scheduler(database, every(settings, up, 1), stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while any(up.state.calls(p) < 2 for p in PATHS):  # two ticks of every job
        assert loop.time() < deadline and not task.done(), {p: up.state.calls(p) for p in PATHS}
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert task.exception() is None
