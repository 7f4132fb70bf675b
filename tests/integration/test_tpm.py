"""TPM equipment and maintenance tasks over HTTP: create, update, filters, permissions, audit."""

from __future__ import annotations

from typing import Any

from tests.client import Api

ENG = "eng@example.com"  # system:integration
ADMIN = "adm@example.com"  # system:config
OP = "op@example.com"  # readiness:view (reads only)
TRACE = "tr@example.com"  # no TPM permission


async def setup(api: Api, make_user: Any) -> None:
    """Users, LINE-A with ST-PRINT-01 and ST-SPI-01 (operator bound to the printer) and their equipment."""
    for email, role in ((ENG, "engineer"), (ADMIN, "admin"), (TRACE, "trace")):
        await make_user(email, role)
    await api.post(
        "/lines", ENG, json={"code": "LINE-A", "name": "SMT Production Line A", "processType": "SMT"}
    )
    station = await api.post(
        "/stations", ENG, json={"code": "ST-PRINT-01", "name": "Printer", "lineCode": "LINE-A"}
    )
    await api.post("/stations", ENG, json={"code": "ST-SPI-01", "name": "SPI 01", "lineCode": "LINE-A"})
    await make_user(OP, "operator", station_ids=[station.data["id"]])
    for code in ("ST-PRINT-01", "ST-SPI-01"):
        assert (await api.post("/tpm/equipment", ENG, json={"equipmentCode": code})).status == 200


async def audit_rows(api: Api, **params: Any) -> list[dict[str, Any]]:
    return (await api.get("/audit-logs", ADMIN, params={"pageSize": 100, **params})).data["items"]


def codes(r: Any, key: str) -> list[str]:
    return [i[key] for i in r.data["items"]]


async def test_equipment_create_update_list(api: Api, make_user: Any) -> None:
    await setup(api, make_user)
    r = await api.post(
        "/tpm/equipment", ADMIN, json={"equipmentCode": "ST-REFLOW-01", "name": "Reflow Oven 01"}
    )
    assert r.status == 200
    assert r.data["status"] == "normal" and r.data["available"] is True and r.data["name"] == "Reflow Oven 01"
    dup = await api.post("/tpm/equipment", ENG, json={"equipmentCode": "ST-PRINT-01"})
    assert dup.status == 409 and dup.code == "TPM_EQUIPMENT_CODE_EXISTS"
    assert (await api.post("/tpm/equipment", ENG, json={"equipmentCode": "bad code"})).status == 422
    refused = await api.post("/tpm/equipment", OP, json={"equipmentCode": "ST-X"})
    assert refused.status == 403 and "system:integration" in refused.body["error"]["message"]

    r = await api.patch("/tpm/equipment/ST-SPI-01", ENG, json={"status": "REPAIRING"})
    assert r.status == 200 and r.data["status"] == "REPAIRING" and r.data["available"] is False
    r = await api.patch("/tpm/equipment/ST-SPI-01", ADMIN, json={"status": "Normal", "name": "SPI 01"})
    assert r.data["available"] is True and r.data["name"] == "SPI 01"
    await api.patch("/tpm/equipment/ST-REFLOW-01", ENG, json={"status": "down"})
    missing = await api.patch("/tpm/equipment/ST-NOPE", ENG, json={"status": "down"})
    assert missing.status == 404 and missing.code == "TPM_EQUIPMENT_NOT_FOUND"
    assert (await api.patch("/tpm/equipment/ST-SPI-01", OP, json={"status": "down"})).status == 403

    listed = await api.get("/tpm/equipment", OP, params={"sort": "equipmentCode.asc"})  # readiness:view reads
    assert listed.status == 200 and codes(listed, "equipmentCode") == [
        "ST-PRINT-01",
        "ST-REFLOW-01",
        "ST-SPI-01",
    ]
    normal = await api.get("/tpm/equipment", ENG, params={"status": "NORMAL", "sort": "equipmentCode.asc"})
    assert codes(normal, "equipmentCode") == ["ST-PRINT-01", "ST-SPI-01"]  # status filter ignores case
    assert codes(await api.get("/tpm/equipment", ADMIN, params={"search": "reflow"}), "equipmentCode") == [
        "ST-REFLOW-01"
    ]
    assert (await api.get("/tpm/equipment", TRACE)).status == 403

    rows = await audit_rows(api, entityType="TPM_EQUIPMENT")
    assert sum(1 for x in rows if x["action"] == "TPM_EQUIPMENT_CREATE" and x["status"] == "SUCCESS") == 3
    change = [x for x in rows if x["action"] == "TPM_EQUIPMENT_UPDATE" and x["status"] == "SUCCESS"][-1]
    assert change["entityDisplay"] == "ST-SPI-01"
    assert {"op": "replace", "path": "/status", "before": "normal", "after": "REPAIRING"} in change["diff"]
    assert any(x["status"] == "FAIL" and x["errorCode"] == "TPM_EQUIPMENT_NOT_FOUND" for x in rows)


async def test_maintenance_tasks(api: Api, make_user: Any) -> None:
    await setup(api, make_user)
    body = {"taskNo": "MT-001", "equipmentCode": "ST-PRINT-01", "type": "REPAIR", "status": "IN_PROGRESS"}
    r = await api.post("/tpm/maintenance-tasks", ENG, json=body)
    assert r.status == 200
    assert r.data["status"] == "IN_PROGRESS" and r.data["startedAt"]  # in progress without a start: now
    assert r.data["completedAt"] is None
    started = "2026-01-05T08:00:00.000Z"
    r = await api.post(
        "/tpm/maintenance-tasks",
        ADMIN,
        json={
            "taskNo": "MT-002",
            "equipmentCode": "ST-SPI-01",
            "type": "PM",
            "status": "pending",
            "startedAt": started,
        },
    )
    assert r.status == 200 and r.data["startedAt"] == started
    dup = await api.post("/tpm/maintenance-tasks", ENG, json=body)
    assert dup.status == 409 and dup.code == "TPM_TASK_NO_EXISTS"
    unknown = await api.post(
        "/tpm/maintenance-tasks", ENG, json={**body, "taskNo": "MT-9", "equipmentCode": "ST-NOPE"}
    )
    assert unknown.status == 404 and unknown.code == "TPM_EQUIPMENT_NOT_FOUND"
    assert (
        await api.post("/tpm/maintenance-tasks", ENG, json={**body, "taskNo": "MT-9", "status": ""})
    ).status == 422
    assert (await api.post("/tpm/maintenance-tasks", OP, json={**body, "taskNo": "MT-9"})).status == 403

    by_code = await api.get("/tpm/maintenance-tasks", OP, params={"equipmentCode": "ST-PRINT-01"})
    assert by_code.status == 200 and codes(by_code, "taskNo") == ["MT-001"]
    running = await api.get("/tpm/maintenance-tasks", ENG, params={"status": "in_progress"})
    assert codes(running, "taskNo") == ["MT-001"]  # status filter ignores case
    assert (await api.get("/tpm/maintenance-tasks", ENG)).data["total"] == 2
    assert (await api.get("/tpm/maintenance-tasks", TRACE)).status == 403

    r = await api.patch("/tpm/maintenance-tasks/MT-001", ENG, json={"status": "COMPLETED"})
    assert r.status == 200 and r.data["status"] == "COMPLETED" and r.data["completedAt"]
    done = "2026-01-05T09:30:00.000Z"
    r = await api.patch(
        "/tpm/maintenance-tasks/MT-002",
        ADMIN,
        json={"status": "done", "type": "CALIBRATION", "completedAt": done},
    )
    assert r.data["completedAt"] == done and r.data["type"] == "CALIBRATION"
    early = await api.patch(
        "/tpm/maintenance-tasks/MT-002", ENG, json={"completedAt": "2026-01-05T07:00:00Z"}
    )
    assert early.status == 400 and early.code == "TPM_TASK_TIME_INVALID"
    missing = await api.patch("/tpm/maintenance-tasks/MT-404", ENG, json={"status": "done"})
    assert missing.status == 404 and missing.code == "TPM_MAINTENANCE_TASK_NOT_FOUND"
    assert (await api.patch("/tpm/maintenance-tasks/MT-001", OP, json={"status": "x"})).status == 403

    rows = await audit_rows(api, entityType="TPM_MAINTENANCE_TASK")
    created = [x for x in rows if x["action"] == "TPM_MAINTENANCE_TASK_CREATE" and x["status"] == "SUCCESS"]
    assert [x["entityDisplay"] for x in created] == ["MT-002", "MT-001"]
    update = next(
        x for x in rows if x["action"] == "TPM_MAINTENANCE_TASK_UPDATE" and x["entityDisplay"] == "MT-002"
    )
    assert {"op": "replace", "path": "/completedAt", "before": None, "after": done} in update["diff"]
    assert {"op": "replace", "path": "/status", "before": "pending", "after": "done"} in update["diff"]
    fails = {x["errorCode"] for x in rows if x["status"] == "FAIL"}
    assert {"TPM_TASK_NO_EXISTS", "TPM_EQUIPMENT_NOT_FOUND", "TPM_TASK_TIME_INVALID"} <= fails
