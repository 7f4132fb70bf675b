"""SMT feeder loading (domain.md §6, scenarios.md S2 steps 8–10): load table, verify, lock, replace, scope."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import loading as loading_handlers
from central.config import Settings
from central.db.engine import Database
from central.db.models import AuditEvent, FeederSlot, Line, LoadingRecord, MaterialLot, Run
from central.domain.errors import MesError
from central.schemas.loading import VerifyBody
from central.services import loading, loading_scan
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import EN, M, released_run, seed, set_run_status

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """Demo plant + the app with the loading router (added here only while it is not yet in ROUTERS)."""
    extra = [] if loading_handlers.router in ROUTERS else [loading_handlers.router]
    client: TestClient = await aiohttp_client(create_app(settings, database=database, extra_routers=extra))
    await seed(database)
    return Api(client)


def pick(d: dict[str, Any], *keys: str) -> tuple[Any, ...]:
    return tuple(d[k] for k in keys)


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def load_table(api: Api, run_no: str, who: str = M) -> Any:
    return await api.post(f"/runs/{run_no}/loading/load-table", who)


async def verify(api: Api, run_no: str, barcode: str, slot: str = "SLOT-01", who: str = M, **kw: Any) -> Any:
    body = {"runNo": run_no, "slotCode": slot, "materialLotBarcode": barcode, **kw}
    return await api.post("/loading/verify", who, json=body)


async def replace(api: Api, run_no: str, barcode: str, slot: str = "SLOT-01", **kw: Any) -> Any:
    body = {"runNo": run_no, "slotCode": slot, "newMaterialLotBarcode": barcode, **kw}
    return await api.post("/loading/replace", M, json=body)


async def expectations(api: Api, run_no: str) -> dict[str, dict[str, Any]]:
    r = await api.get(f"/runs/{run_no}/loading/expectations", M)
    assert r.status == 200, r.body
    return {e["slotCode"]: e for e in r.data["items"]}


async def slot_row(api: Api, code: str = "SLOT-01", line: str = "LINE-A") -> dict[str, Any]:
    r = await api.get(f"/lines/{line}/feeder-slots", M)
    assert r.status == 200, r.body
    return next(s for s in r.data["items"] if s["slotCode"] == code)


async def add_slot(api: Api, code: str, line: str = "LINE-A", position: int = 2) -> int:
    r = await api.post(f"/lines/{line}/feeder-slots", EN, json={"slotCode": code, "position": position})
    assert r.status == 201, r.body
    return int(r.data["id"])


async def add_mapping(api: Api, slot_id: int, material: str, **kw: Any) -> dict[str, Any]:
    r = await api.post("/slot-mappings", EN, json={"slotId": slot_id, "materialCode": material, **kw})
    assert r.status == 201, r.body
    return dict(r.data)


async def audit_actions(database: Database, action: str, status: str = "SUCCESS") -> list[AuditEvent]:
    async with database.reader() as s:
        stmt = select(AuditEvent).where(AuditEvent.action == action, AuditEvent.status == status)
        return list((await s.scalars(stmt)).all())


# ---- S2 steps 8–10 -------------------------------------------------------------------------------


async def test_s2_steps_8_to_10_fail_then_pass(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    r = await load_table(demo, run_no)
    assert r.status == 200 and r.data["created"] == 1 and isinstance(r.data["runId"], int), r.body
    exp = (await expectations(demo, run_no))["SLOT-01"]
    assert pick(exp, "expectedMaterialCode", "status", "alternates") == ("MAT-001", "PENDING", [])

    # Step 9: a wrong material is an answer, not an error: 200 with FAIL / UNLOADED.
    r = await verify(demo, run_no, "WRONG-MAT|LOT-1700000000", operatorId="OP-01")
    assert r.status == 200, r.body
    d = r.data
    assert pick(d, "verifyResult", "status", "expectationStatus") == ("FAIL", "UNLOADED", "MISMATCH")
    assert d["failReason"] and d["expectedCode"] == "MAT-001" and d["loadedBy"] == "OP-01"
    assert pick(d, "materialKnown", "materialValidation", "failedAttempts") == (False, "UNKNOWN", 1)
    assert (await expectations(demo, run_no))["SLOT-01"]["status"] == "MISMATCH"
    assert (await slot_row(demo))["failedAttempts"] == 1

    # Step 10: the right material loads, resets the counter and creates the lot.
    r = await verify(demo, run_no, "MAT-001|LOT-1700000000", operatorId="OP-01", packageQty=5000)
    assert r.status == 200, r.body
    d = r.data
    assert pick(d, "verifyResult", "status", "expectationStatus") == ("PASS", "LOADED", "LOADED")
    assert pick(d, "materialKnown", "materialName", "materialValidation") == (
        True,
        "Chip Resistor 10K",
        "KNOWN",
    )
    assert pick(d, "materialCode", "lotNo", "packageQty", "isIdempotent") == (
        "MAT-001",
        "LOT-1700000000",
        5000,
        False,
    )
    exp = (await expectations(demo, run_no))["SLOT-01"]
    assert pick(exp, "status", "loadedMaterialCode", "loadedBy") == ("LOADED", "MAT-001", "OP-01")
    slot = await slot_row(demo)
    assert pick(slot, "failedAttempts", "currentMaterialCode", "currentLotNo") == (
        0,
        "MAT-001",
        "LOT-1700000000",
    )
    async with database.reader() as s:
        lots = await s.scalars(select(MaterialLot).where(MaterialLot.lot_no == "LOT-1700000000"))
        # Both scanned lots were upserted (the wrong one too: the reel exists, it is just not for this slot).
        assert sorted(x.material_code for x in lots) == ["MAT-001", "WRONG-MAT"]
    records = (await demo.get(f"/runs/{run_no}/loading", M)).data["items"]
    assert [(x["verifyResult"], x["status"]) for x in records] == [("FAIL", "UNLOADED"), ("PASS", "LOADED")]
    assert len(await audit_actions(database, "LOADING_VERIFY")) == 2
    assert len(await audit_actions(database, "LOADING_TABLE_CREATE")) == 1


async def test_operator_defaults_to_the_signed_in_user(demo: Api) -> None:
    flow = await released_run(demo)
    await load_table(demo, flow["runNo"])
    r = await verify(demo, flow["runNo"], "MAT-001|L-1", reviewedBy="QA-7")
    assert r.status == 200 and r.data["loadedBy"] == "周物料", r.body
    assert r.data["reviewedBy"] == "QA-7" and r.data["reviewedAt"]


# ---- load table ----------------------------------------------------------------------------------


async def test_most_specific_tier_wins_and_alternates_warn(demo: Api) -> None:
    # A generic mapping with a better priority still loses to the seeded product+routing one.
    await add_mapping(demo, 1, "MAT-002", priority=0)
    flow = await released_run(demo)
    assert (await load_table(demo, flow["runNo"])).status == 200
    exp = (await expectations(demo, flow["runNo"]))["SLOT-01"]
    assert pick(exp, "expectedMaterialCode", "alternates") == ("MAT-001", [])

    # An alternate in the winning tier; the table is rebuilt while nothing is loaded yet.
    await add_mapping(demo, 1, "MAT-003", productCode="P-1001", routingCode="PCBA-STD-V1", isAlternate=True)
    r = await load_table(demo, flow["runNo"])
    assert r.status == 200 and r.data["created"] == 1
    exp = (await expectations(demo, flow["runNo"]))["SLOT-01"]
    assert pick(exp, "expectedMaterialCode", "alternates", "status") == ("MAT-001", ["MAT-003"], "PENDING")
    r = await verify(demo, flow["runNo"], "MAT-003|ALT-1")
    assert r.status == 200, r.body
    assert pick(r.data, "verifyResult", "status", "expectationStatus") == ("WARNING", "LOADED", "LOADED")
    assert (await slot_row(demo))["currentMaterialCode"] == "MAT-003"


async def test_product_tier_beats_generic_and_priority_orders_a_tier(demo: Api, database: Database) -> None:
    slot2 = await add_slot(demo, "SLOT-02")
    await add_mapping(demo, slot2, "MAT-001", priority=0)  # generic
    await add_mapping(demo, slot2, "MAT-003", productCode="P-1001", priority=9)
    await add_mapping(demo, slot2, "MAT-002", productCode="P-1001", priority=2)
    slot3 = await add_slot(demo, "SLOT-03", position=3)
    await add_mapping(demo, slot3, "MAT-002", priority=1, isAlternate=True)
    await add_mapping(demo, slot3, "MAT-003", priority=5)
    await add_mapping(demo, slot3, "MAT-001", productCode="P-OTHER")  # other product: not a candidate
    flow = await released_run(demo)
    r = await load_table(demo, flow["runNo"])
    assert r.status == 200 and r.data["created"] == 3, r.body
    exps = await expectations(demo, flow["runNo"])
    assert [e for e in exps] == ["SLOT-01", "SLOT-02", "SLOT-03"]  # ordered by position
    assert pick(exps["SLOT-02"], "expectedMaterialCode", "alternates") == ("MAT-002", ["MAT-003"])
    # The primary is the first non-alternate even when an alternate has a better priority.
    assert pick(exps["SLOT-03"], "expectedMaterialCode", "alternates") == ("MAT-003", ["MAT-002"])
    # Readiness helpers see the same table.
    async with UnitOfWork(database.reader) as uow:
        rows = await loading.expectations_for_run(uow, r.data["runId"])
        assert [x.expected_material_code for x in rows] == ["MAT-001", "MAT-002", "MAT-003"]


async def test_load_table_guards(demo: Api, database: Database) -> None:
    expect(await load_table(demo, "RUN-NOPE"), 404, "RUN_NOT_FOUND")
    flow = await released_run(demo)
    run_no = flow["runNo"]

    # A slot without a fitting mapping: SLOT_MAPPING_MISSING lists it and nothing is written.
    slot2 = await add_slot(demo, "SLOT-02")
    await add_mapping(demo, slot2, "MAT-002", productCode="P-OTHER")
    r = await load_table(demo, run_no)
    expect(r, 400, "SLOT_MAPPING_MISSING")
    assert r.body["error"]["details"] == {"slots": ["SLOT-02"]}
    assert await expectations(demo, run_no) == {}
    await add_mapping(demo, slot2, "MAT-003")
    assert (await load_table(demo, run_no)).data["created"] == 2

    # Once a scan is recorded the table is frozen.
    assert (await verify(demo, run_no, "MAT-001|L-1")).status == 200
    expect(await load_table(demo, run_no), 409, "LOADING_ALREADY_STARTED")

    # Only PREP runs.
    other = await released_run(demo)
    await set_run_status(database, other["runNo"], "AUTHORIZED")
    expect(await load_table(demo, other["runNo"]), 400, "RUN_STATUS_INVALID")

    # A line without slots.
    dip = await released_run(demo, product="P-2001", routing="PCBA-DIP-V1", line="LINE-DIP-A")
    expect(await load_table(demo, dip["runNo"]), 404, "FEEDER_SLOTS_NOT_FOUND")
    async with database.reader() as s:
        dip_line = await s.scalar(select(Line.id).where(Line.code == "LINE-DIP-A"))
    async with UnitOfWork(database.reader) as uow:
        assert await loading.line_has_slots(uow, dip_line) is False
    # One table built; each of the five refusals left a FAIL row with its code.
    assert len(await audit_actions(database, "LOADING_TABLE_CREATE")) == 1
    fails = await audit_actions(database, "LOADING_TABLE_CREATE", "FAIL")
    assert sorted(x.error_code for x in fails) == sorted(
        [
            "RUN_NOT_FOUND",
            "SLOT_MAPPING_MISSING",
            "LOADING_ALREADY_STARTED",
            "RUN_STATUS_INVALID",
            "FEEDER_SLOTS_NOT_FOUND",
        ]
    )


async def test_run_line_not_set(demo: Api, database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """runs.line_id is NOT NULL today; the guard still answers RUN_LINE_NOT_SET for a line-less run."""
    flow = await released_run(demo)

    async def lineless(uow: UnitOfWork, run_no: str, *, lock: bool = False) -> Run:
        return Run(id=1, run_no=run_no, wo_id=1, line_id=None, plan_qty=1, status="PREP")

    monkeypatch.setattr(loading, "get_run", lineless)
    async with UnitOfWork(database.writer) as uow:
        with pytest.raises(MesError) as err:
            await loading.load_table(uow, flow["runNo"])
    assert (err.value.code, err.value.status) == ("RUN_LINE_NOT_SET", 400)


# ---- verify --------------------------------------------------------------------------------------


async def test_verify_guards(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    expect(await verify(demo, "RUN-NOPE", "MAT-001|L"), 404, "RUN_NOT_FOUND")
    expect(await verify(demo, run_no, "MAT-001|L"), 400, "SLOT_EXPECTATION_MISSING")
    await load_table(demo, run_no)
    expect(await verify(demo, run_no, "MAT-001|L", slot="SLOT-99"), 404, "SLOT_NOT_FOUND")
    r = await demo.post(
        "/loading/verify", EN, json={"runNo": run_no, "slotCode": "S", "materialLotBarcode": "X"}
    )
    expect(r, 403, "FORBIDDEN")
    await set_run_status(database, run_no, "AUTHORIZED")
    expect(await verify(demo, run_no, "MAT-001|L"), 400, "RUN_STATUS_INVALID")
    await set_run_status(database, run_no, "PREP")

    # No operatorId and no user behind the call (a system caller) → OPERATOR_REQUIRED.
    async with UnitOfWork(database.writer) as uow:
        with pytest.raises(MesError) as err:
            body = VerifyBody(run_no=run_no, slot_code="SLOT-01", material_lot_barcode="MAT-001|L")
            await loading_scan.verify(uow, body)
    assert (err.value.code, err.value.status) == ("OPERATOR_REQUIRED", 400)


async def test_three_consecutive_fails_lock_the_slot_until_unlocked(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    await load_table(demo, run_no)
    results = [(await verify(demo, run_no, f"MAT-002|F{n}")).data for n in range(3)]
    assert [(d["verifyResult"], d["failedAttempts"], d["slotLocked"]) for d in results] == [
        ("FAIL", 1, False),
        ("FAIL", 2, False),
        ("FAIL", 3, True),
    ]
    slot = await slot_row(demo)
    assert slot["isLocked"] is True and slot["lockedAt"] and slot["lockedReason"]
    expect(await verify(demo, run_no, "MAT-001|GOOD"), 409, "SLOT_LOCKED")
    assert len(await audit_actions(database, "FEEDER_SLOT_LOCK")) == 1

    slot_id = slot["id"]
    expect(await demo.post(f"/feeder-slots/{slot_id}/unlock", M, json={"reason": "x"}), 403, "FORBIDDEN")
    expect(await demo.post(f"/feeder-slots/{slot_id}/unlock", EN, json={}), 400, "REASON_REQUIRED")
    expect(await demo.post("/feeder-slots/99999/unlock", EN, json={"reason": "x"}), 404, "SLOT_NOT_FOUND")
    r = await demo.post(f"/feeder-slots/{slot_id}/unlock", EN, json={"reason": "wrong reel removed"})
    assert r.status == 200, r.body
    assert pick(r.data, "isLocked", "failedAttempts", "lockedAt") == (False, 0, None)
    (entry,) = r.data["meta"]["unlockHistory"]
    assert (entry["by"], entry["reason"]) == ("李工艺", "wrong reel removed") and entry["at"]
    assert entry["previousLockedAt"] == slot["lockedAt"]
    assert entry["previousLockedReason"] == slot["lockedReason"]
    again = await demo.post(f"/feeder-slots/{slot_id}/unlock", EN, json={"reason": "again"})
    assert again.status == 200 and len(again.data["meta"]["unlockHistory"]) == 1  # nothing to clear: no-op

    r = await verify(demo, run_no, "MAT-001|GOOD")
    assert r.status == 200 and r.data["verifyResult"] == "PASS", r.body
    unlocks = await audit_actions(database, "FEEDER_SLOT_UNLOCK")
    assert [bool(x.diff) for x in sorted(unlocks, key=lambda x: x.id)] == [
        True,
        False,
    ]  # the no-op changed nothing


async def test_rescan_is_idempotent_and_another_material_needs_replace(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    await load_table(demo, run_no)
    first = (await verify(demo, run_no, "MAT-001|R-1")).data
    again = await verify(demo, run_no, "MAT-001|R-1")
    assert again.status == 200 and again.data["isIdempotent"] is True, again.body
    assert again.data["id"] == first["id"] and again.data["verifyResult"] == "PASS"
    expect(await verify(demo, run_no, "MAT-002|R-2"), 409, "SLOT_ALREADY_LOADED")
    async with database.reader() as s:
        assert await s.scalar(select(func.count(LoadingRecord.id))) == 1
        assert await s.scalar(select(func.count(MaterialLot.id)).where(MaterialLot.lot_no == "R-2")) == 0


async def test_lot_only_barcodes(demo: Api) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    await load_table(demo, run_no)
    expect(await verify(demo, run_no, "NO-SUCH-LOT"), 404, "MATERIAL_LOT_NOT_FOUND")
    expect(
        await verify(demo, run_no, "|LOT-AT-START"), 404, "MATERIAL_LOT_NOT_FOUND"
    )  # not split at the ends
    for material in ("MAT-001", "MAT-002"):
        r = await demo.post("/material-lots", EN, json={"materialCode": material, "lotNo": "DUP-LOT"})
        assert r.status == 201, r.body
    r = await verify(demo, run_no, "DUP-LOT")
    expect(r, 400, "MATERIAL_LOT_AMBIGUOUS")
    assert r.body["error"]["details"] == {"materialCodes": ["MAT-001", "MAT-002"]}
    r = await verify(demo, run_no, "LOT-2024-001")  # seeded MAT-001 lot, unique
    assert r.status == 200, r.body
    assert pick(r.data, "verifyResult", "materialCode", "lotNo") == ("PASS", "MAT-001", "LOT-2024-001")


def test_barcode_split_priority() -> None:
    split = loading_scan.split_barcode
    assert split("MAT-001|LOT-1") == ("MAT-001", "LOT-1")
    assert split("A:B|C") == ("A:B", "C")  # `|` is tried before `:`
    assert split("A@B#C") == ("A", "B#C")
    assert split("A#B") == ("A", "B")
    assert split("LOT-1|") is None and split("|LOT-1") is None and split("PLAIN") is None
    assert split("|X:Y") == ("|X", "Y")  # a separator at an end is skipped, the next one is used


# ---- replace -------------------------------------------------------------------------------------


async def test_replace(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    run_no = flow["runNo"]
    await load_table(demo, run_no)
    expect(await replace(demo, run_no, "MAT-001|NEW", reason="reel empty"), 400, "SLOT_NOT_LOADED")
    first = (await verify(demo, run_no, "MAT-001|OLD")).data
    expect(await replace(demo, run_no, "MAT-001|NEW"), 400, "REASON_REQUIRED")
    expect(await replace(demo, run_no, "MAT-001|NEW", reason="  "), 400, "REASON_REQUIRED")

    r = await replace(demo, run_no, "MAT-001|NEW", reason="reel empty", operatorId="OP-02")
    assert r.status == 200, r.body
    assert pick(r.data, "verifyResult", "status", "lotNo") == ("PASS", "LOADED", "NEW")
    assert r.data["meta"]["replaceReason"] == "reel empty"
    assert r.data["meta"]["replacedRecordIds"] == [first["id"]]
    records = {x["id"]: x for x in (await demo.get(f"/runs/{run_no}/loading", M)).data["items"]}
    old = records[first["id"]]
    assert (old["status"], old["unloadedBy"]) == ("REPLACED", "OP-02") and old["unloadedAt"]

    # Replacing with a wrong material: the slot is empty again, the expectation MISMATCH, the fail counted.
    r = await replace(demo, run_no, "MAT-002|WRONG", reason="wrong reel")
    assert r.status == 200, r.body
    assert pick(r.data, "verifyResult", "status", "expectationStatus") == ("FAIL", "UNLOADED", "MISMATCH")
    assert r.data["failedAttempts"] == 1
    slot = await slot_row(demo)
    assert slot["currentMaterialLotId"] is None
    exp = (await expectations(demo, run_no))["SLOT-01"]
    assert pick(exp, "status", "loadedMaterialCode") == ("MISMATCH", None)
    statuses = sorted(x["status"] for x in (await demo.get(f"/runs/{run_no}/loading", M)).data["items"])
    assert statuses == ["REPLACED", "REPLACED", "UNLOADED"]
    expect(await replace(demo, run_no, "MAT-001|X", reason="r"), 400, "SLOT_NOT_LOADED")
    # A good scan loads it again.
    r = await verify(demo, run_no, "MAT-001|NEW2")
    assert pick(r.data, "verifyResult", "expectationStatus", "failedAttempts") == ("PASS", "LOADED", 0)
    assert len(await audit_actions(database, "LOADING_REPLACE")) == 2


async def test_replace_refused_on_a_locked_slot_or_a_non_prep_run(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    await load_table(demo, flow["runNo"])
    await verify(demo, flow["runNo"], "MAT-001|OK")
    async with database.writer() as s, s.begin():
        slot = await s.scalar(select(FeederSlot).where(FeederSlot.slot_code == "SLOT-01"))
        assert slot is not None
        slot.is_locked = True
    expect(await replace(demo, flow["runNo"], "MAT-001|N", reason="r"), 409, "SLOT_LOCKED")
    await set_run_status(database, flow["runNo"], "AUTHORIZED")
    expect(await replace(demo, flow["runNo"], "MAT-001|N", reason="r"), 400, "RUN_STATUS_INVALID")
