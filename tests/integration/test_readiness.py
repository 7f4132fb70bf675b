"""Readiness (domain.md §5): each evaluator PASSED and FAILED, waivers, latest/history, exceptions, config."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import (
    BomItem,
    FeederSlot,
    LineStencil,
    Run,
    RunSlotExpectation,
    SolderPasteStatusRecord,
    Station,
    StencilStatusRecord,
    TpmEquipment,
    TpmMaintenanceTask,
)
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import EN, PL, Q, released_run, seed

M_OP = "operator@example.com"


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def check(api: Api, run_no: str, kind: str = "check") -> dict[str, Any]:
    r = await api.post(f"/runs/{run_no}/readiness/{kind}", Q)
    assert r.status == 200, r.body
    return r.data


def items(data: dict[str, Any], item_type: str) -> list[dict[str, Any]]:
    return [i for i in data["items"] if i["itemType"] == item_type]


async def load_all(database: Database, run_no: str) -> None:
    """Expectations LOADED for every slot of the run's line (loading has its own tests)."""
    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        for slot in (await s.scalars(select(FeederSlot).where(FeederSlot.line_id == run.line_id))).all():
            s.add(
                RunSlotExpectation(
                    run_id=run.id,
                    slot_id=slot.id,
                    expected_material_code="MAT-001",
                    alternates=[],
                    status="LOADED",
                    loaded_material_code="MAT-001",
                )
            )


async def test_run_creation_records_a_precheck_with_the_s2_items(demo: Api) -> None:
    flow = await released_run(demo)
    pre = (await demo.get(f"/runs/{flow['runNo']}/readiness/latest", Q, params={"type": "PRECHECK"})).data
    assert pre["type"] == "PRECHECK" and pre["checkedBy"] is None
    kinds = sorted((i["itemType"], i["itemKey"]) for i in pre["items"])
    assert [k for k, _ in kinds].count("EQUIPMENT") == 5 and [k for k, _ in kinds].count("MATERIAL") == 3
    assert ("ROUTE", "PCBA-STD-V1") in kinds and ("STENCIL", "STENCIL-001") in kinds
    assert ("SOLDER_PASTE", "SP-LOT-001") in kinds
    # Slots exist but no load table yet: LOADING fails on SLOT_TABLE.
    loading = items(pre, "LOADING")
    assert loading == [
        {**loading[0], "itemKey": "SLOT_TABLE", "status": "FAILED", "failReason": "SLOT_TABLE_MISSING"}
    ]
    assert pre["status"] == "FAILED" and pre["summary"] == {
        "total": 12,
        "passed": 11,
        "failed": 1,
        "waived": 0,
    }
    expect(
        await demo.get(f"/runs/{flow['runNo']}/readiness/latest", Q, params={"type": "FORMAL"}),
        404,
        "NO_CHECK_FOUND",
    )


async def test_s2_formal_check_passes_with_twelve_items_once_loaded(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    await load_all(database, flow["runNo"])
    data = await check(demo, flow["runNo"])
    assert data["type"] == "FORMAL" and data["status"] == "PASSED" and data["checkedBy"]
    assert data["summary"] == {"total": 12, "passed": 12, "failed": 0, "waived": 0}
    assert items(data, "LOADING")[0]["itemKey"] == "SLOT-01"


async def test_s6_dip_line_evaluates_only_its_enabled_types(demo: Api) -> None:
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    data = await check(demo, flow["runNo"])
    assert data["status"] == "PASSED"
    assert sorted({i["itemType"] for i in data["items"]}) == ["EQUIPMENT", "MATERIAL", "ROUTE"]
    assert data["summary"]["total"] == 8


async def test_equipment_fails_on_status_missing_row_or_open_repair(demo: Api, database: Database) -> None:
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    async with database.writer() as s, s.begin():
        await s.execute(
            update(TpmEquipment).where(TpmEquipment.equipment_code == "ST-DIP-INS-01").values(status="down")
        )
        eq = await s.scalar(select(TpmEquipment).where(TpmEquipment.equipment_code == "ST-DIP-WAVE-01"))
        await s.delete(eq)
        s.add(
            TpmMaintenanceTask(
                task_no="T-1", equipment_code="ST-DIP-POST-01", type="REPAIR", status="PENDING", meta={}
            )
        )
        s.add(
            TpmMaintenanceTask(
                task_no="T-2", equipment_code="ST-DIP-TEST-01", type="PM", status="PENDING", meta={}
            )
        )
    data = await check(demo, flow["runNo"])
    by_key = {i["itemKey"]: i for i in items(data, "EQUIPMENT")}
    assert by_key["ST-DIP-INS-01"]["failReason"] == "TPM_STATUS_down"
    assert by_key["ST-DIP-WAVE-01"]["failReason"] == "TPM_EQUIPMENT_MISSING"
    assert by_key["ST-DIP-POST-01"]["failReason"] == "MAINTENANCE_OPEN"
    assert by_key["ST-DIP-TEST-01"]["status"] == "PASSED"  # a planned PM task does not block
    assert data["status"] == "FAILED"


async def test_material_fails_without_bom_or_with_unknown_child(demo: Api, database: Database) -> None:
    no_bom = await released_run(demo, product="P-NO-BOM", routing="PCBA-DIP-V1", line="LINE-DIP-A")
    data = await check(demo, no_bom["runNo"])
    assert items(data, "MATERIAL") == [
        {**items(data, "MATERIAL")[0], "itemKey": "P-NO-BOM", "status": "FAILED", "failReason": "BOM_MISSING"}
    ]
    async with database.writer() as s, s.begin():
        s.add(BomItem(parent_code="P-1001", child_code="MAT-GHOST", qty=1, meta={}))
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    ghost = [i for i in items(await check(demo, flow["runNo"]), "MATERIAL") if i["itemKey"] == "MAT-GHOST"]
    assert ghost[0]["status"] == "FAILED" and ghost[0]["failReason"] == "MATERIAL_NOT_FOUND"


async def test_route_fails_when_a_step_has_no_station_left(demo: Api, database: Database) -> None:
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    assert items(await check(demo, flow["runNo"]), "ROUTE")[0]["status"] == "PASSED"
    async with database.writer() as s, s.begin():
        # All DIP steps share one group, so only a line with no active station leaves a step uncovered.
        await s.execute(update(Station).where(Station.code.like("ST-DIP-%")).values(is_active=False))
    route = items(await check(demo, flow["runNo"]), "ROUTE")[0]
    assert route["status"] == "FAILED" and route["failReason"] == "STATION_MISSING_FOR_STEP"


async def test_stencil_and_paste_use_the_newest_status_by_event_time(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    now = utcnow()
    async with database.writer() as s, s.begin():
        # Arrives last but happened first: it must not win over the seeded READY record.
        s.add(
            StencilStatusRecord(
                event_id="old",
                event_time=now - timedelta(days=3),
                stencil_id="STENCIL-001",
                status="MAINTENANCE",
                source="AUTO",
                received_at=now,
                meta={},
            )
        )
        s.add(
            SolderPasteStatusRecord(
                event_id="p-exp",
                event_time=now,
                lot_id="SP-LOT-001",
                status="EXPIRED",
                source="AUTO",
                received_at=now,
                meta={},
            )
        )
    data = await check(demo, flow["runNo"])
    assert items(data, "STENCIL")[0]["status"] == "PASSED"
    paste = items(data, "SOLDER_PASTE")[0]
    assert paste["status"] == "FAILED" and paste["failReason"] == "SOLDER_PASTE_EXPIRED"
    async with database.writer() as s, s.begin():
        await s.execute(update(LineStencil).values(is_current=False))
    stencil = items(await check(demo, flow["runNo"]), "STENCIL")[0]
    assert (stencil["itemKey"], stencil["failReason"]) == ("NONE", "NO_CURRENT_STENCIL")


async def test_loading_items_follow_the_expectations(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == flow["runNo"]))
        slot = await s.scalar(select(FeederSlot).where(FeederSlot.slot_code == "SLOT-01"))
        s.add(
            RunSlotExpectation(
                run_id=run.id,
                slot_id=slot.id,
                expected_material_code="MAT-001",
                alternates=[],
                status="MISMATCH",
            )
        )
    item = items(await check(demo, flow["runNo"]), "LOADING")[0]
    assert (item["itemKey"], item["status"], item["failReason"]) == ("SLOT-01", "FAILED", "SLOT_MISMATCH")
    async with database.writer() as s, s.begin():
        await s.execute(update(RunSlotExpectation).values(status="LOADED", loaded_material_code="MAT-001"))
    assert items(await check(demo, flow["runNo"]), "LOADING")[0]["status"] == "PASSED"


async def test_waive_rules_and_the_check_flips_to_passed(demo: Api) -> None:
    flow = await released_run(demo)
    other = await released_run(demo)
    data = await check(demo, flow["runNo"])
    failed = items(data, "LOADING")[0]
    passed = items(data, "ROUTE")[0]
    url = f"/runs/{flow['runNo']}/readiness/items"
    expect(await demo.post(f"{url}/{failed['id']}/waive", Q, json={"reason": ""}), 422, "VALIDATION_FAILED")
    expect(await demo.post(f"{url}/{passed['id']}/waive", Q, json={"reason": "x"}), 400, "ITEM_NOT_FAILED")
    expect(await demo.post(f"{url}/999999/waive", Q, json={"reason": "x"}), 404, "ITEM_NOT_FOUND")
    expect(
        await demo.post(
            f"/runs/{other['runNo']}/readiness/items/{failed['id']}/waive", Q, json={"reason": "x"}
        ),
        400,
        "RUN_MISMATCH",
    )
    expect(await demo.post(f"{url}/{failed['id']}/waive", PL, json={"reason": "x"}), 403, "FORBIDDEN")
    w = await demo.post(f"{url}/{failed['id']}/waive", Q, json={"reason": "feeder verified by hand"})
    assert w.data["status"] == "WAIVED" and w.data["waiveReason"] == "feeder verified by hand"
    assert w.data["checkStatus"] == "PASSED" and w.data["waivedBy"]
    latest = (await demo.get(f"/runs/{flow['runNo']}/readiness/latest", Q, params={"type": "FORMAL"})).data
    assert latest["status"] == "PASSED" and latest["summary"]["waived"] == 1
    # The authorization gate reads the waived check: the run moves on to the FAI gate.
    expect(
        await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"}),
        400,
        "FAI_NOT_PASSED",
    )
    # A new check starts fresh: waivers do not carry over.
    assert (await check(demo, flow["runNo"]))["status"] == "FAILED"


async def test_stale_failed_formal_check_is_not_re_evaluated_by_authorize(
    demo: Api, database: Database
) -> None:
    flow = await released_run(demo)
    assert (await check(demo, flow["runNo"]))["status"] == "FAILED"
    await load_all(database, flow["runNo"])
    expect(
        await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"}),
        400,
        "READINESS_CHECK_FAILED",
    )
    assert (await check(demo, flow["runNo"]))["status"] == "PASSED"
    expect(
        await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"}),
        400,
        "FAI_NOT_PASSED",
    )


async def test_history_alias_and_precheck_endpoint(demo: Api) -> None:
    flow = await released_run(demo)
    pre = await check(demo, flow["runNo"], "precheck")
    alias = await demo.post(f"/runs/{flow['runNo']}/prep-checks", Q)
    assert pre["type"] == "PRECHECK" and alias.data["type"] == "FORMAL"
    hist = (await demo.get(f"/runs/{flow['runNo']}/readiness/history", Q)).data
    assert [h["type"] for h in hist] == ["FORMAL", "PRECHECK", "PRECHECK"]  # newest first, creation's first
    expect(await demo.get("/runs/RUN-NOPE/readiness/history", Q), 404, "RUN_NOT_FOUND")
    expect(await demo.post(f"/runs/{flow['runNo']}/readiness/check", PL), 403, "FORBIDDEN")


async def test_exceptions_board(demo: Api, database: Database) -> None:
    bad = await released_run(demo)
    good = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    await check(demo, good["runNo"])
    board = (await demo.get("/readiness/exceptions", Q)).data
    runs = {i["runNo"]: i for i in board["items"]}
    assert bad["runNo"] in runs and good["runNo"] not in runs
    row = runs[bad["runNo"]]
    assert row["lineCode"] == "LINE-A" and row["failedCount"] == 1 and row["checkStatus"] == "FAILED"
    assert board["limit"] == 20 and board["page"] == 1
    assert (await demo.get("/readiness/exceptions", Q, params={"lineId": "LINE-DIP-A"})).data["total"] == 0
    every = (await demo.get("/readiness/exceptions", Q, params={"status": "ALL"})).data
    assert {bad["runNo"], good["runNo"]} <= {i["runNo"] for i in every["items"]}
    async with database.writer() as s, s.begin():
        await s.execute(update(Run).where(Run.run_no == bad["runNo"]).values(status="AUTHORIZED"))
    assert bad["runNo"] not in {
        i["runNo"] for i in (await demo.get("/readiness/exceptions", Q)).data["items"]
    }


async def test_line_readiness_config(demo: Api) -> None:
    got = (await demo.get("/lines/LINE-A/readiness-config", EN)).data
    assert got["enabled"] == ["EQUIPMENT", "MATERIAL", "ROUTE", "STENCIL", "SOLDER_PASTE", "LOADING"]
    expect(
        await demo.put("/lines/LINE-A/readiness-config", EN, json={"enabled": ["ROUTE", "PREP_BAKE"]}),
        422,
        "VALIDATION_FAILED",
    )
    expect(
        await demo.put("/lines/LINE-A/readiness-config", PL, json={"enabled": ["ROUTE"]}), 403, "FORBIDDEN"
    )
    expect(
        await demo.put("/lines/LINE-NOPE/readiness-config", EN, json={"enabled": ["ROUTE"]}),
        404,
        "LINE_NOT_FOUND",
    )
    put = await demo.put("/lines/LINE-A/readiness-config", EN, json={"enabled": ["ROUTE", "EQUIPMENT"]})
    assert put.data["enabled"] == ["EQUIPMENT", "ROUTE"] and put.data["configured"] is True
    flow = await released_run(demo)
    data = await check(demo, flow["runNo"])
    assert data["status"] == "PASSED" and {i["itemType"] for i in data["items"]} == {"EQUIPMENT", "ROUTE"}
    assert (await demo.get("/lines/LINE-A/readiness-config", Q)).status == 200
    _ = M_OP


async def test_tpm_status_change_reruns_the_precheck_of_prep_runs(demo: Api) -> None:
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    url = f"/runs/{flow['runNo']}/readiness/latest"
    assert (await demo.get(url, Q, params={"type": "PRECHECK"})).data["status"] == "PASSED"
    r = await demo.patch("/tpm/equipment/ST-DIP-WAVE-01", "admin@example.com", json={"status": "breakdown"})
    assert r.status == 200, r.body
    pre = (await demo.get(url, Q, params={"type": "PRECHECK"})).data
    assert pre["status"] == "FAILED"
    assert [i["itemKey"] for i in pre["items"] if i["status"] == "FAILED"] == ["ST-DIP-WAVE-01"]


async def test_maintenance_task_completion_reruns_the_precheck(demo: Api) -> None:
    flow = await released_run(demo, routing="PCBA-DIP-V1", line="LINE-DIP-A")
    url = f"/runs/{flow['runNo']}/readiness/latest"
    admin = "admin@example.com"
    r = await demo.post(
        "/tpm/maintenance-tasks",
        admin,
        json={
            "taskNo": "MT-R1",
            "equipmentCode": "ST-DIP-TEST-01",
            "type": "REPAIR",
            "status": "IN_PROGRESS",
        },
    )
    assert r.status == 200, r.body
    assert (await demo.patch("/tpm/maintenance-tasks/MT-R1", admin, json={"status": "PENDING"})).status == 200
    assert (await demo.get(url, Q, params={"type": "PRECHECK"})).data["status"] == "FAILED"
    assert (
        await demo.patch("/tpm/maintenance-tasks/MT-R1", admin, json={"status": "COMPLETED"})
    ).status == 200
    assert (await demo.get(url, Q, params={"type": "PRECHECK"})).data["status"] == "PASSED"
