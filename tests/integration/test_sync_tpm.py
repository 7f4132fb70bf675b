"""TPM pull sync over real HTTP against the mock TPM server: equipment, tasks, status logs, PRECHECK."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from central.config import Settings
from central.db.engine import Database
from central.db.models import IntegrationMessage, TpmStatusLog
from central.integration.mock_server import at
from tests.flows import EN, OP, Q, authorized_run, seed
from tests.integration.test_sync_erp import Env, app_for, expect, messages, pointed_at, start_upstream

EQUIPMENT, TASKS, LOGS = (
    f"/integration/tpm/{e}/sync" for e in ("equipment", "maintenance-tasks", "status-logs")
)
SMT_RUN, DIP_RUN = "RUN-DEMO-SMT-001", "RUN-DEMO-DIP-001"


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, settings: Settings, database: Database) -> Env:
    up = await start_upstream(aiohttp_server)
    await seed(database)
    return Env(await app_for(aiohttp_client, pointed_at(settings, up), database), up, database)


async def prechecks(env: Env, run_no: str) -> list[dict[str, Any]]:
    history = (await env.api.get(f"/runs/{run_no}/readiness/history", Q)).data
    return [c for c in history if c["type"] == "PRECHECK"]


def equipment_item(env: Env, code: str, **change: Any) -> dict[str, Any]:
    item = next(x for x in env.up.state.items("tpm", "equipment") if x["equipmentCode"] == code)
    return {**item, **change}


async def test_equipment_status_change_reruns_precheck_of_prep_runs(env: Env) -> None:
    api, up = env.api, env.up
    smt_before, dip_before = len(await prechecks(env, SMT_RUN)), len(await prechecks(env, DIP_RUN))
    r = await api.post(EQUIPMENT, EN)
    assert r.status == 200, r.body
    assert r.data["sourceSystem"] == "TPM" and r.data["entityType"] == "EQUIPMENT"
    assert r.data["summary"]["received"] == len(up.state.items("tpm", "equipment"))
    # The demo already holds these machines as "normal": no status changed, so no PRECHECK ran.
    assert len(await prechecks(env, SMT_RUN)) == smt_before

    up.state.put("tpm", "equipment", equipment_item(env, "ST-PRINT-01", status="down", updatedAt=at(500)))
    r = await api.post(EQUIPMENT, EN)
    assert r.data["summary"]["updated"] == 1 and r.data["status"] == "SUCCESS", r.body
    checks = await prechecks(env, SMT_RUN)
    assert len(checks) == smt_before + 1
    failed = [i for i in checks[0]["items"] if i["itemType"] == "EQUIPMENT" and i["status"] == "FAILED"]
    assert [i["itemKey"] for i in failed] == ["ST-PRINT-01"]
    assert len(await prechecks(env, DIP_RUN)) == dip_before  # another line: untouched
    listed = (await api.get("/tpm/equipment", EN, params={"search": "ST-PRINT-01"})).data["items"]
    assert (listed[0]["status"], listed[0]["available"]) == ("down", False)
    audit = (await api.get("/audit-logs", "admin@example.com", params={"entityType": "TPM_EQUIPMENT"})).data
    change = next(a for a in audit["items"] if a["action"] == "TPM_EQUIPMENT_SYNC")
    assert change["entityDisplay"] == "ST-PRINT-01"
    assert {"op": "replace", "path": "/status", "before": "normal", "after": "down"} in change["diff"]

    # Pulling the same data again re-runs nothing.
    await api.post(EQUIPMENT, EN)
    assert len(await prechecks(env, SMT_RUN)) == smt_before + 1


async def test_synced_equipment_and_tasks_gate_track_in(env: Env) -> None:
    api, up = env.api, env.up
    flow = await authorized_run(api, env.db, qty=1)
    sn = flow["sns"][0]
    up.state.put(
        "tpm", "equipment", equipment_item(env, "ST-PRINT-01", status="breakdown", updatedAt=at(600))
    )
    await api.post(EQUIPMENT, EN)
    body = {"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
    expect(await api.post("/stations/ST-PRINT-01/track-in", OP, json=body), 400, "TPM_EQUIPMENT_UNAVAILABLE")

    task = {
        "taskNo": "MT-R-1",
        "equipmentCode": "ST-PRINT-01",
        "type": "REPAIR",
        "status": "IN_PROGRESS",
        "startedAt": at(601),
        "updatedAt": at(601),
    }
    up.state.put("tpm", "maintenance-tasks", task)
    up.state.put("tpm", "equipment", equipment_item(env, "ST-PRINT-01", status="normal", updatedAt=at(602)))
    assert (await api.post(EQUIPMENT, EN)).data["summary"]["updated"] == 1
    assert (await api.post(TASKS, EN)).data["summary"]["created"] == 2  # ours + the demo's PM task
    expect(
        await api.post("/stations/ST-PRINT-01/track-in", OP, json=body), 400, "TPM_MAINTENANCE_IN_PROGRESS"
    )
    up.state.put(
        "tpm",
        "maintenance-tasks",
        {**task, "status": "COMPLETED", "completedAt": at(603), "updatedAt": at(603)},
    )
    assert (await api.post(TASKS, EN)).data["summary"]["updated"] == 1
    assert (await api.post("/stations/ST-PRINT-01/track-in", OP, json=body)).status == 200


async def test_maintenance_task_sync_reruns_precheck(env: Env) -> None:
    api, up = env.api, env.up
    before = len(await prechecks(env, DIP_RUN))
    r = await api.post(TASKS, EN)  # the demo's completed PM task on ST-MOUNT-01 (LINE-A)
    assert r.data["summary"]["created"] == 1, r.body
    assert len(await prechecks(env, DIP_RUN)) == before
    task = {
        "taskNo": "MT-R-9",
        "equipmentCode": "ST-DIP-WAVE-01",
        "type": "REPAIR",
        "status": "in_progress",
        "scheduledDate": at(700),
        "updatedAt": at(700),
    }
    up.state.put("tpm", "maintenance-tasks", task)
    await api.post(TASKS, EN)
    checks = await prechecks(env, DIP_RUN)
    assert len(checks) == before + 1
    wave = [
        i for i in checks[0]["items"] if i["itemType"] == "EQUIPMENT" and i["itemKey"] == "ST-DIP-WAVE-01"
    ]
    assert [i["status"] for i in wave] == ["FAILED"]
    up.state.put(
        "tpm",
        "maintenance-tasks",
        {**task, "status": "completed", "completedAt": at(710), "updatedAt": at(710)},
    )
    await api.post(TASKS, EN)
    checks = await prechecks(env, DIP_RUN)
    assert len(checks) == before + 2
    assert all(i["status"] == "PASSED" for i in checks[0]["items"] if i["itemType"] == "EQUIPMENT")
    tasks = (await api.get("/tpm/maintenance-tasks", EN, params={"equipmentCode": "ST-DIP-WAVE-01"})).data
    assert [(t["taskNo"], t["status"], t["completedAt"]) for t in tasks["items"]] == [
        ("MT-R-9", "completed", at(710))
    ]


async def test_status_logs_are_upserted_by_equipment_and_start(env: Env) -> None:
    api, up = env.api, env.up
    log = {"equipmentCode": "ST-SPI-01", "status": "down", "reason": "jam", "startedAt": at(800)}
    up.state.put("tpm", "status-logs", log)
    r = (await api.post(LOGS, EN)).data
    assert (r["summary"]["created"], r["cursor"]["nextSyncAt"]) == (2, at(800))
    up.state.put("tpm", "status-logs", {**log, "endedAt": at(830)})
    r = (await api.post(LOGS, EN)).data
    assert r["summary"]["updated"] == 1 and r["cursor"]["nextSyncAt"] == at(830)
    async with env.db.reader() as s:
        rows = (await s.scalars(select(TpmStatusLog).where(TpmStatusLog.equipment_code == "ST-SPI-01"))).all()
    assert [(x.status, x.reason, x.ended_at is not None) for x in rows] == [("down", "jam", True)]


async def test_repeated_since_is_answered_from_the_first_pull(env: Env) -> None:
    api, up = env.api, env.up
    first = await api.post(EQUIPMENT, EN, params={"since": at(0)})
    assert first.data["status"] == "SUCCESS"
    calls = up.state.calls("/tpm/equipment")
    up.state.put("tpm", "equipment", equipment_item(env, "ST-AOI-01", status="down", updatedAt=at(900)))
    again = await api.post(EQUIPMENT, EN, params={"since": at(0)})
    assert again.data["status"] == "DUPLICATE" and up.state.calls("/tpm/equipment") == calls  # not fetched
    assert again.data["items"] == first.data["items"] and again.data["dedupeKey"] == first.data["dedupeKey"]
    aoi = (await api.get("/tpm/equipment", EN, params={"search": "ST-AOI-01"})).data["items"][0]
    assert aoi["status"] == "normal"
    # Without an explicit since the cursor drives the pull, which fetches and sees the change.
    r = await api.post(EQUIPMENT, EN)
    assert r.data["status"] == "SUCCESS" and up.state.calls("/tpm/equipment") == calls + 1
    aoi = (await api.get("/tpm/equipment", EN, params={"search": "ST-AOI-01"})).data["items"][0]
    assert aoi["status"] == "down"
    statuses = [m.status for m in await messages(env.db, "EQUIPMENT")]
    assert statuses == ["SUCCESS", "DUPLICATE", "SUCCESS"]
    async with env.db.reader() as s:
        replay = await s.scalar(select(IntegrationMessage).where(IntegrationMessage.status == "DUPLICATE"))
    assert replay is not None and replay.meta["replayOf"] == first.data["messageId"]


async def test_tpm_failures_and_query(
    env: Env, aiohttp_client: Any, settings: Settings, database: Database
) -> None:
    api, up = env.api, env.up
    up.state.fail(2, status=503)
    r = await api.post(TASKS, EN)
    expect(r, 502, "UPSTREAM_FAILED")
    assert r.body["error"]["details"]["httpStatus"] == 503
    expect(await api.post(LOGS, EN), 502, "UPSTREAM_FAILED")
    failed = [(m.system, m.entity_type, m.status) for m in await messages(env.db, "MAINTENANCE_TASK")]
    assert failed == [("TPM", "MAINTENANCE_TASK", "FAILED")]
    expect(await api.post(EQUIPMENT, EN, params={"startRow": 1}), 422, "VALIDATION_FAILED")
    no_tpm = pointed_at(settings, up).model_copy(update={"tpm_base_url": None})
    r = await (await app_for(aiohttp_client, no_tpm, database)).post(EQUIPMENT, EN)
    expect(r, 502, "INTEGRATION_NOT_CONFIGURED")
    assert "MES_TPM_BASE_URL" in r.body["error"]["message"]
