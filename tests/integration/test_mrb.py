"""MRB decisions and rework runs (domain.md §7.5, §3 Run/Unit, §13.15) over HTTP.

A run held by a failed OQC is set up with the ORM (the OQC workflow has its own tests): an authorized run
whose units finished the route, status ON_HOLD and a FAIL OQC inspection."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from central.api.app import create_app
from central.api.handlers import ROUTERS, mrb
from central.config import Settings
from central.db.engine import Database
from central.db.models import AuditEvent, Inspection, ReadinessCheck, Run, Unit
from central.domain.clock import utcnow
from tests.client import Api
from tests.flows import OP, PL, A, Q, authorized_run, pass_readiness, seed

PRINT = "ST-PRINT-01"


@pytest.fixture
async def demo(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    """The app with the MRB router (added here only while it is not yet in ROUTERS), demo plant seeded."""
    extra = [] if mrb.router in ROUTERS else [mrb.router]
    client: TestClient = await aiohttp_client(create_app(settings, database=database, extra_routers=extra))
    await seed(database)
    return Api(client)


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def add_oqc(database: Database, run_no: str, status: str = "FAIL") -> int:
    async with database.writer() as s, s.begin():
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        unit_id = await s.scalar(select(Unit.id).where(Unit.run_id == run_id).order_by(Unit.id).limit(1))
        oqc = Inspection(
            run_id=run_id,
            type="OQC",
            status=status,
            sample_qty=1,
            passed_qty=0 if status == "FAIL" else 1,
            failed_qty=1 if status == "FAIL" else 0,
            decided_by="quality",
            decided_at=utcnow(),
            data={"sampledUnitIds": [unit_id]},
        )
        s.add(oqc)
        await s.flush()
        return oqc.id


async def hold(database: Database, run_no: str, *, oqc: str | None = "FAIL") -> int | None:
    """Run ON_HOLD after its units finished (first DONE at step 5, the others SCRAPPED) + an OQC."""
    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        assert run is not None
        run.status, run.started_at = "ON_HOLD", utcnow()
        units = (await s.scalars(select(Unit).where(Unit.run_id == run.id).order_by(Unit.id))).all()
        for i, u in enumerate(units):
            u.status, u.current_step_no = ("DONE", 5) if i == 0 else ("SCRAPPED", 3)
    return await add_oqc(database, run_no, oqc) if oqc else None


async def held_run(api: Api, database: Database, qty: int = 2) -> dict[str, Any]:
    flow = await authorized_run(api, database, qty=qty)
    flow["oqcId"] = await hold(database, flow["runNo"])
    return flow


async def decide(api: Api, run_no: str, who: str = Q, **body: Any) -> Any:
    return await api.post(f"/runs/{run_no}/mrb-decision", who, json={"reason": "MRB board decision", **body})


async def units_of(database: Database, run_no: str) -> list[tuple[str, str, int]]:
    async with database.reader() as s:
        rows = await s.execute(
            select(Unit.sn, Unit.status, Unit.current_step_no)
            .join(Run, Run.id == Unit.run_id)
            .where(Run.run_no == run_no)
            .order_by(Unit.sn)
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def oqc_data(database: Database, oqc_id: int) -> dict[str, Any]:
    async with database.reader() as s:
        return (await s.get(Inspection, oqc_id)).data  # type: ignore[union-attr]


async def actions(database: Database, entity_display: str) -> list[str]:
    async with database.reader() as s:
        rows = await s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.entity_display == entity_display, AuditEvent.status == "SUCCESS")
            .order_by(AuditEvent.id)
        )
        return list(rows)


async def test_release_completes_the_run_and_records_the_mrb_block(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await decide(demo, flow["runNo"], decision="RELEASE", reason="cosmetic only, customer accepts")
    assert r.status == 200, r.body
    run = r.data["run"]
    assert run["status"] == "COMPLETED" and run["endedAt"] is not None and r.data["reworkRunNo"] is None
    data = await oqc_data(database, flow["oqcId"])
    assert data["sampledUnitIds"]  # the sampling block stays
    assert data["mrbDecision"] == "RELEASE" and data["mrbReason"] == "cosmetic only, customer accepts"
    assert data["mrbDecidedBy"] and data["mrbDecidedAt"].endswith("Z")
    assert data["reworkType"] is None and data["faiWaiver"] is False and data["faiWaiverReason"] is None
    async with database.reader() as s:
        row = await s.scalar(select(Run).where(Run.run_no == flow["runNo"]))
        assert row is not None
        assert row.mrb_decision_id == flow["oqcId"] and row.mrb_authorized_by and row.mrb_authorized_at
    assert await units_of(database, flow["runNo"]) == [
        (flow["sns"][0], "DONE", 5),
        (flow["sns"][1], "SCRAPPED", 3),
    ]
    assert "MRB_RELEASE" in await actions(database, flow["runNo"])


async def test_scrap_scraps_the_run_and_every_unit(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database, qty=3)
    r = await decide(demo, flow["runNo"], decision="SCRAP")
    assert r.status == 200 and r.data["run"]["status"] == "SCRAPPED" and r.data["run"]["endedAt"], r.body
    assert {u[1] for u in await units_of(database, flow["runNo"])} == {"SCRAPPED"}
    assert len(await units_of(database, flow["runNo"])) == 3
    assert (await oqc_data(database, flow["oqcId"]))["mrbDecision"] == "SCRAP"
    assert "MRB_SCRAP" in await actions(database, flow["runNo"])


async def test_rework_reuse_prep_with_waiver_creates_an_authorized_child_that_runs_at_once(
    demo: Api, database: Database
) -> None:
    flow = await held_run(demo, database)
    r = await decide(
        demo,
        flow["runNo"],
        decision="REWORK",
        reworkType="REUSE_PREP",
        faiWaiver=True,
        faiWaiverReason="same setup, FAI passed on the parent",
    )
    assert r.status == 200, r.body
    child_no = f"{flow['runNo']}-RW1"
    assert r.data["reworkRunNo"] == child_no and r.data["run"]["status"] == "CLOSED_REWORK"
    assert r.data["run"]["endedAt"] is not None
    child = (await demo.get(f"/runs/{child_no}", PL)).data
    assert child["status"] == "AUTHORIZED" and child["authorizationType"] == "MRB_OVERRIDE"
    assert child["reworkType"] == "REUSE_PREP" and child["mrbFaiWaiver"] is True
    assert child["parentRunNo"] == flow["runNo"] and child["planQty"] == 2 and child["authorizedBy"]
    # Every parent unit (the scrapped one too) is QUEUED at step 1 of the child.
    assert await units_of(database, child_no) == [(sn, "QUEUED", 1) for sn in flow["sns"]]
    assert await units_of(database, flow["runNo"]) == []
    data = await oqc_data(database, flow["oqcId"])
    assert data["mrbDecision"] == "REWORK" and data["reworkType"] == "REUSE_PREP"
    assert data["faiWaiver"] is True and data["faiWaiverReason"] == "same setup, FAI passed on the parent"
    assert "MRB_REWORK" in await actions(database, flow["runNo"])
    assert "RUN_REWORK_CREATE" in await actions(database, child_no)
    # Tracked at once, and the FAI gate shows the waiver.
    child_flow = {"woNo": flow["woNo"], "runNo": child_no}
    r = await demo.post(f"/stations/{PRINT}/track-in", OP, json={"sn": flow["sns"][0], **child_flow})
    assert r.status == 200, r.body
    gate = await demo.get(f"/fai/run/{child_no}/gate", Q)
    assert gate.status == 200 and gate.data["faiWaived"] is True and gate.data["faiPassed"] is False


async def test_waived_child_reauthorizes_without_fai(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await decide(
        demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP", faiWaiver=True, faiWaiverReason="ok"
    )
    child_no = r.data["reworkRunNo"]
    r = await demo.post(f"/runs/{child_no}/authorize", PL, json={"action": "REVOKE"})
    assert r.status == 200 and r.data["status"] == "PREP", r.body
    await pass_readiness(database, child_no)
    r = await demo.post(f"/runs/{child_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert r.status == 200 and r.data["status"] == "AUTHORIZED", r.body


async def test_reuse_prep_without_waiver_is_authorized_but_reauthorize_needs_fai(
    demo: Api, database: Database
) -> None:
    flow = await held_run(demo, database)
    r = await decide(demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP")
    child_no = r.data["reworkRunNo"]
    child = (await demo.get(f"/runs/{child_no}", PL)).data
    assert child["status"] == "AUTHORIZED" and child["mrbFaiWaiver"] is False
    gate = await demo.get(f"/fai/run/{child_no}/gate", Q)
    assert gate.data["faiWaived"] is False
    r = await demo.post(f"/runs/{child_no}/authorize", PL, json={"action": "REVOKE"})
    assert r.status == 200 and r.data["status"] == "PREP", r.body
    await pass_readiness(database, child_no)
    expect(
        await demo.post(f"/runs/{child_no}/authorize", PL, json={"action": "AUTHORIZE"}),
        400,
        "FAI_NOT_PASSED",
    )


async def test_rework_full_prep_creates_a_prep_child_with_a_precheck(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await decide(demo, flow["runNo"], decision="REWORK", reworkType="FULL_PREP")
    assert r.status == 200, r.body
    child_no = r.data["reworkRunNo"]
    child = (await demo.get(f"/runs/{child_no}", PL)).data
    assert child["status"] == "PREP" and child["authorizationType"] == "MRB_OVERRIDE"
    assert child["reworkType"] == "FULL_PREP" and child["authorizedBy"] is None
    pre = await demo.get(f"/runs/{child_no}/readiness/latest", Q, params={"type": "PRECHECK"})
    assert pre.status == 200 and pre.data["type"] == "PRECHECK", pre.body
    assert await units_of(database, child_no) == [(sn, "QUEUED", 1) for sn in flow["sns"]]
    # PREP: nothing is tracked until the run is prepared (readiness) and authorized again.
    track = {"sn": flow["sns"][0], "woNo": flow["woNo"], "runNo": child_no}
    r = await demo.post(f"/stations/{PRINT}/track-in", OP, json=track)
    expect(r, 400, "READINESS_CHECK_FAILED")


async def test_second_decision_on_a_decided_run_is_a_noop(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    first = await decide(demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP")
    assert first.status == 200, first.body
    again = await decide(demo, flow["runNo"], decision="SCRAP", reason="changed my mind")
    assert again.status == 200, again.body
    assert again.data["reworkRunNo"] == first.data["reworkRunNo"]
    assert again.data["run"]["status"] == "CLOSED_REWORK"
    listed = await demo.get(f"/runs/{flow['runNo']}/rework-runs", PL)
    assert [x["runNo"] for x in listed.data] == [first.data["reworkRunNo"]]
    assert (await oqc_data(database, flow["oqcId"]))["mrbDecision"] == "REWORK"
    # The /rework variant on the decided run answers the same rework run.
    r = await demo.post(
        f"/runs/{flow['runNo']}/rework", Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": flow["oqcId"]}
    )
    assert r.status == 200 and r.data["reworkRunNo"] == first.data["reworkRunNo"], r.body
    released = await held_run(demo, database)
    assert (await decide(demo, released["runNo"], decision="RELEASE")).status == 200
    r = await decide(demo, released["runNo"], decision="RELEASE")
    assert r.status == 200 and r.data["run"]["status"] == "COMPLETED" and r.data["reworkRunNo"] is None


async def test_rework_of_a_rework_run_numbers_by_its_own_parent(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    child_no = (await decide(demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP")).data[
        "reworkRunNo"
    ]
    assert child_no == f"{flow['runNo']}-RW1"
    await hold(database, child_no)
    r = await decide(demo, child_no, decision="REWORK", reworkType="FULL_PREP")
    assert r.status == 200 and r.data["reworkRunNo"] == f"{child_no}-RW1", r.body
    grandchild = (await demo.get(f"/runs/{child_no}-RW1", PL)).data
    assert grandchild["parentRunNo"] == child_no


async def test_refused_unless_on_hold(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    expect(await decide(demo, flow["runNo"], decision="RELEASE"), 400, "RUN_NOT_ON_HOLD")
    expect(await decide(demo, "RUN-NOPE", decision="RELEASE"), 404, "RUN_NOT_FOUND")


async def test_refused_without_a_failed_oqc(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    await hold(database, flow["runNo"], oqc=None)
    expect(await decide(demo, flow["runNo"], decision="SCRAP"), 400, "NO_FAILED_OQC")
    await add_oqc(database, flow["runNo"], "FAIL")
    await add_oqc(database, flow["runNo"], "PASS")  # the latest OQC counts
    expect(await decide(demo, flow["runNo"], decision="SCRAP"), 400, "NO_FAILED_OQC")


async def test_rework_needs_a_rework_type(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    expect(await decide(demo, flow["runNo"], decision="REWORK"), 400, "REWORK_TYPE_REQUIRED")


async def test_fai_waiver_needs_a_reason(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await decide(demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP", faiWaiver=True)
    expect(r, 400, "FAI_WAIVER_REASON_REQUIRED")
    r = await decide(
        demo, flow["runNo"], decision="REWORK", reworkType="REUSE_PREP", faiWaiver=True, faiWaiverReason="  "
    )
    expect(r, 400, "FAI_WAIVER_REASON_REQUIRED")


async def test_fai_waiver_needs_the_fai_permission(demo: Api, database: Database) -> None:
    role = {"code": "mrb-only", "name": "MRB only", "permissions": ["quality:disposition", "run:read"]}
    assert (await demo.post("/roles", A, json=role)).status in (200, 201)
    user = {"email": "mrb@example.com", "name": "mrb", "password": "Test123!", "roles": ["mrb-only"]}
    assert (await demo.post("/users", A, json=user)).status in (200, 201)
    flow = await held_run(demo, database)
    r = await decide(
        demo,
        flow["runNo"],
        "mrb@example.com",
        decision="REWORK",
        reworkType="REUSE_PREP",
        faiWaiver=True,
        faiWaiverReason="same setup",
    )
    expect(r, 403, "FAI_WAIVER_NOT_ALLOWED")
    # Without the waiver the same member may decide.
    r = await decide(demo, flow["runNo"], "mrb@example.com", decision="REWORK", reworkType="REUSE_PREP")
    assert r.status == 200 and r.data["reworkRunNo"], r.body


async def test_fai_waiver_only_with_rework_reuse_prep(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    waiver = {"faiWaiver": True, "faiWaiverReason": "same setup"}
    r = await decide(demo, flow["runNo"], decision="REWORK", reworkType="FULL_PREP", **waiver)
    expect(r, 400, "FAI_WAIVER_NOT_ALLOWED")
    expect(await decide(demo, flow["runNo"], decision="RELEASE", **waiver), 400, "FAI_WAIVER_NOT_ALLOWED")


async def test_reason_shorter_than_four_characters_is_422(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    expect(await decide(demo, flow["runNo"], decision="RELEASE", reason="ok"), 422, "VALIDATION_FAILED")
    r = await demo.post(f"/runs/{flow['runNo']}/mrb-decision", Q, json={"decision": "RELEASE"})
    expect(r, 422, "VALIDATION_FAILED")
    expect(await decide(demo, flow["runNo"], decision="KEEP"), 422, "VALIDATION_FAILED")


async def test_mrb_needs_quality_disposition(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    expect(await decide(demo, flow["runNo"], PL, decision="RELEASE"), 403, "FORBIDDEN")


async def test_rework_endpoint_creates_the_rework_run(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await demo.post(
        f"/runs/{flow['runNo']}/rework",
        Q,
        json={
            "reworkType": "REUSE_PREP",
            "mrbDecisionId": flow["oqcId"],
            "faiWaiver": True,
            "waiverReason": "same setup",
        },
    )
    assert r.status == 200, r.body
    assert r.data == {
        "reworkRunNo": f"{flow['runNo']}-RW1",
        "status": "AUTHORIZED",
        "authorizationType": "MRB_OVERRIDE",
        "mrbFaiWaiver": True,
        "parentRunNo": flow["runNo"],
        "parentRunStatus": "CLOSED_REWORK",
    }
    assert await units_of(database, r.data["reworkRunNo"]) == [(sn, "QUEUED", 1) for sn in flow["sns"]]
    data = await oqc_data(database, flow["oqcId"])
    assert data["mrbDecision"] == "REWORK" and data["faiWaiver"] is True
    async with database.reader() as s:
        n = await s.scalar(
            select(func.count(ReadinessCheck.id))
            .join(Run, Run.id == ReadinessCheck.run_id)
            .where(Run.run_no == r.data["reworkRunNo"], ReadinessCheck.type == "PRECHECK")
        )
    assert n == 1


async def test_rework_endpoint_refusals(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    url = f"/runs/{flow['runNo']}/rework"
    expect(await demo.post(url, Q, json={"reworkType": "FULL_PREP"}), 400, "MRB_DECISION_REQUIRED")
    expect(
        await demo.post(url, Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": 999999}),
        400,
        "INVALID_MRB_DECISION",
    )
    other = await held_run(demo, database)  # a failed OQC of another run
    expect(
        await demo.post(url, Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": other["oqcId"]}),
        400,
        "INVALID_MRB_DECISION",
    )
    passed = await add_oqc(database, flow["runNo"], "PASS")
    expect(
        await demo.post(url, Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": passed}),
        400,
        "INVALID_MRB_DECISION",
    )
    expect(await demo.post(url, Q, json={"mrbDecisionId": flow["oqcId"]}), 400, "REWORK_TYPE_REQUIRED")
    r = await demo.post(
        url, Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": flow["oqcId"], "faiWaiver": True}
    )
    expect(r, 400, "FAI_WAIVER_REASON_REQUIRED")
    r = await demo.post(
        url,
        Q,
        json={
            "reworkType": "FULL_PREP",
            "mrbDecisionId": flow["oqcId"],
            "faiWaiver": True,
            "waiverReason": "x",
        },
    )
    expect(r, 400, "FAI_WAIVER_NOT_ALLOWED")
    ready = await authorized_run(demo, database)
    r = await demo.post(
        f"/runs/{ready['runNo']}/rework", Q, json={"reworkType": "FULL_PREP", "mrbDecisionId": 1}
    )
    expect(r, 400, "RUN_NOT_ON_HOLD")
    async with database.reader() as s:  # nothing was written by the refusals
        assert await s.scalar(select(func.count(Run.id)).where(Run.parent_run_id.is_not(None))) == 0


async def test_list_rework_runs(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    r = await demo.get(f"/runs/{flow['runNo']}/rework-runs", PL)
    assert r.status == 200 and r.data == []
    child_no = (await decide(demo, flow["runNo"], decision="REWORK", reworkType="FULL_PREP")).data[
        "reworkRunNo"
    ]
    for who in (PL, Q):  # run:read or quality:disposition
        r = await demo.get(f"/runs/{flow['runNo']}/rework-runs", who)
        assert r.status == 200 and [x["runNo"] for x in r.data] == [child_no], r.body
        assert r.data[0]["parentRunNo"] == flow["runNo"] and r.data[0]["status"] == "PREP"
    expect(await demo.get("/runs/RUN-NOPE/rework-runs", PL), 404, "RUN_NOT_FOUND")
    expect(await demo.get(f"/runs/{flow['runNo']}/rework-runs", OP), 403, "FORBIDDEN")


async def test_idempotency_key_replays_the_decision(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    body = {"decision": "REWORK", "reworkType": "REUSE_PREP", "reason": "MRB board decision"}
    headers = {"Idempotency-Key": "mrb-1"}
    first = await demo.post(f"/runs/{flow['runNo']}/mrb-decision", Q, json=body, headers=headers)
    assert first.status == 200 and "Idempotency-Replayed" not in first.headers, first.body
    again = await demo.post(f"/runs/{flow['runNo']}/mrb-decision", Q, json=body, headers=headers)
    assert again.status == 200 and again.headers.get("Idempotency-Replayed") == "true"
    assert again.body == first.body
    async with database.reader() as s:
        children = await s.scalar(select(func.count(Run.id)).where(Run.parent_run_id.is_not(None)))
        decisions = await s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.action == "MRB_REWORK"))
    assert (children, decisions) == (1, 1)


async def test_refusals_are_audited(demo: Api, database: Database) -> None:
    flow = await held_run(demo, database)
    expect(await decide(demo, flow["runNo"], decision="REWORK"), 400, "REWORK_TYPE_REQUIRED")
    async with database.reader() as s:
        row = await s.scalar(
            select(AuditEvent).where(
                AuditEvent.status == "FAIL", AuditEvent.error_code == "REWORK_TYPE_REQUIRED"
            )
        )
    assert row is not None and row.action == "MRB_DECISION"
    async with database.reader() as s:  # the run is unchanged
        assert await s.scalar(select(Run.status).where(Run.run_no == flow["runNo"])) == "ON_HOLD"
