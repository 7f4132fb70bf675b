"""OQC sampling rules (domain.md §7.3) over HTTP: CRUD with its refusals, and how the rules select and size
the sample of the automatic OQC (specificity, priority, PERCENTAGE rounding, FIXED capped, 0 % still one)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from central.db.engine import Database
from central.db.models import AuditEvent, Line, Routing
from tests.client import Api
from tests.flows import PL, Q
from tests.integration.test_oqc import add_rule, demo, expect, finish_last, run_of

__all__ = ["demo"]

RULES = "/oqc/sampling-rules"


async def ids(database: Database) -> tuple[int, int]:
    async with database.reader() as s:
        line = await s.scalar(select(Line.id).where(Line.code == "LINE-A"))
        routing = await s.scalar(select(Routing.id).where(Routing.code == "PCBA-STD-V1"))
        return int(line), int(routing)


# ---- CRUD ----------------------------------------------------------------------------------------------


async def test_create_by_codes_and_by_ids(demo: Api, database: Database) -> None:
    line_id, routing_id = await ids(database)
    r = await demo.post(
        RULES,
        Q,
        json={
            "productCode": "P-1001",
            "lineCode": "LINE-A",
            "routingCode": "PCBA-STD-V1",
            "samplingType": "PERCENTAGE",
            "sampleValue": 10,
            "priority": 7,
        },
    )
    assert r.status == 201, r.body
    assert {k: r.data[k] for k in ("productCode", "lineId", "lineCode", "routingId", "routingCode")} == {
        "productCode": "P-1001",
        "lineId": line_id,
        "lineCode": "LINE-A",
        "routingId": routing_id,
        "routingCode": "PCBA-STD-V1",
    }
    assert (r.data["samplingType"], r.data["sampleValue"], r.data["priority"], r.data["isActive"]) == (
        "PERCENTAGE",
        10,
        7,
        True,
    )
    assert r.data["specificity"] == 3
    by_id = await demo.post(
        RULES, Q, json={"lineId": line_id, "routingId": routing_id, "samplingType": "FIXED", "sampleValue": 2}
    )
    assert (
        by_id.status == 201
        and by_id.data["lineCode"] == "LINE-A"
        and by_id.data["routingCode"] == "PCBA-STD-V1"
    )
    assert (
        by_id.data["productCode"] is None and by_id.data["priority"] == 0 and by_id.data["specificity"] == 2
    )
    wildcard = await demo.post(RULES, Q, json={"samplingType": "FIXED", "sampleValue": 1, "isActive": False})
    assert wildcard.status == 201 and wildcard.data["specificity"] == 0 and wildcard.data["isActive"] is False
    async with database.reader() as s:
        actions = list(
            await s.scalars(select(AuditEvent.action).where(AuditEvent.entity_id == str(r.data["id"])))
        )
    assert "SAMPLING_RULE_CREATE" in actions


async def test_create_refusals(demo: Api) -> None:
    base = {"samplingType": "FIXED", "sampleValue": 1}
    expect(await demo.post(RULES, Q, json={**base, "lineCode": "LINE-NOPE"}), 404, "LINE_NOT_FOUND")
    expect(await demo.post(RULES, Q, json={**base, "lineId": 999999}), 404, "LINE_NOT_FOUND")
    expect(await demo.post(RULES, Q, json={**base, "routingCode": "NOPE"}), 404, "ROUTING_NOT_FOUND")
    expect(await demo.post(RULES, Q, json={**base, "routingId": 999999}), 404, "ROUTING_NOT_FOUND")
    for sampling_type, value in (("PERCENTAGE", 100.5), ("PERCENTAGE", -1), ("FIXED", 0), ("FIXED", 0.5)):
        r = await demo.post(RULES, Q, json={"samplingType": sampling_type, "sampleValue": value})
        expect(r, 400, "INVALID_SAMPLE_VALUE")
    for ok in (("PERCENTAGE", 0), ("PERCENTAGE", 100), ("FIXED", 1)):
        assert (await demo.post(RULES, Q, json={"samplingType": ok[0], "sampleValue": ok[1]})).status == 201
    both = {**base, "lineCode": "LINE-A", "lineId": 1}
    expect(await demo.post(RULES, Q, json=both), 422, "VALIDATION_FAILED")
    expect(
        await demo.post(RULES, Q, json={"samplingType": "AQL", "sampleValue": 1}), 422, "VALIDATION_FAILED"
    )
    expect(await demo.post(RULES, PL, json=base), 403, "FORBIDDEN")
    expect(await demo.get(RULES, PL), 403, "FORBIDDEN")


async def test_list_get_patch_and_delete(demo: Api) -> None:
    rule_id = await add_rule(demo, productCode="P-1001", lineCode="LINE-A", priority=100)
    page = await demo.get(RULES, Q)
    assert page.status == 200 and page.data["total"] == 3  # with the seeded DIP and P-2001 rules
    assert page.data["items"][0]["id"] == rule_id  # newest first
    mine = await demo.get(RULES, Q, params={"productCode": "P-1001"})
    assert mine.data["total"] == 2
    only = await demo.get(RULES, Q, params={"lineCode": "LINE-A"})
    assert [i["id"] for i in only.data["items"]] == [rule_id]
    dip = await demo.get(RULES, Q, params={"routingCode": "PCBA-DIP-V1"})
    assert dip.data["total"] == 1 and dip.data["items"][0]["lineCode"] == "LINE-DIP-A"
    assert dip.data["items"][0]["specificity"] == 3
    got = await demo.get(f"{RULES}/{rule_id}", Q)
    assert got.status == 200 and got.data["priority"] == 100

    p = await demo.patch(f"{RULES}/{rule_id}", Q, json={"lineCode": None, "priority": 5, "sampleValue": 3})
    assert p.status == 200, p.body
    assert (p.data["lineId"], p.data["lineCode"], p.data["priority"], p.data["sampleValue"]) == (
        None,
        None,
        5,
        3,
    )
    assert p.data["productCode"] == "P-1001" and p.data["specificity"] == 1
    to_pct = await demo.patch(f"{RULES}/{rule_id}", Q, json={"samplingType": "PERCENTAGE", "sampleValue": 0})
    assert to_pct.status == 200 and (to_pct.data["samplingType"], to_pct.data["sampleValue"]) == (
        "PERCENTAGE",
        0,
    )
    expect(
        await demo.patch(f"{RULES}/{rule_id}", Q, json={"samplingType": "FIXED"}), 400, "INVALID_SAMPLE_VALUE"
    )
    expect(await demo.patch(f"{RULES}/{rule_id}", Q, json={"sampleValue": 101}), 400, "INVALID_SAMPLE_VALUE")
    expect(await demo.patch(f"{RULES}/{rule_id}", Q, json={"routingCode": "NOPE"}), 404, "ROUTING_NOT_FOUND")
    expect(await demo.patch(f"{RULES}/{rule_id}", Q, json={"lineId": 999999}), 404, "LINE_NOT_FOUND")
    assert (await demo.get(f"{RULES}/{rule_id}", Q)).data[
        "samplingType"
    ] == "PERCENTAGE"  # refusals wrote nothing

    d = await demo.delete(f"{RULES}/{rule_id}", Q)
    assert d.status == 200 and d.data["isActive"] is False and d.data["id"] == rule_id
    assert (await demo.delete(f"{RULES}/{rule_id}", Q)).status == 200  # deactivating again: no-op
    assert (await demo.get(RULES, Q, params={"isActive": "false"})).data["total"] == 1
    assert (await demo.get(RULES, Q, params={"isActive": "true"})).data["total"] == 2
    back = await demo.patch(f"{RULES}/{rule_id}", Q, json={"isActive": True})
    assert back.data["isActive"] is True


async def test_unknown_rule(demo: Api) -> None:
    for call in (
        demo.get(f"{RULES}/999999", Q),
        demo.patch(f"{RULES}/999999", Q, json={"priority": 1}),
        demo.delete(f"{RULES}/999999", Q),
        demo.get(f"{RULES}/abc", Q),
    ):
        expect(await call, 404, "SAMPLING_RULE_NOT_FOUND")


# ---- selection and sample size through the automatic OQC -----------------------------------------------


async def oqc_of(demo: Api, run_no: str) -> dict[str, Any]:
    r = await demo.get(f"/oqc/run/{run_no}", Q)
    assert r.status == 200, r.body
    return dict(r.data)


async def test_specificity_beats_priority(demo: Api, database: Database) -> None:
    await add_rule(demo, productCode="P-1001", samplingType="PERCENTAGE", sampleValue=100, priority=100)
    specific = await add_rule(demo, productCode="P-1001", lineCode="LINE-A", sampleValue=1, priority=0)
    flow = await finish_last(demo, database, qty=3)
    oqc = await oqc_of(demo, flow["runNo"])
    assert oqc["samplingRuleId"] == specific and oqc["sampleQty"] == 1


async def test_priority_then_newest_among_equals(demo: Api, database: Database) -> None:
    high = await add_rule(demo, productCode="P-1001", sampleValue=2, priority=9)
    await add_rule(demo, productCode="P-1001", sampleValue=1, priority=1)
    flow = await finish_last(demo, database, qty=3)
    assert (await oqc_of(demo, flow["runNo"]))["samplingRuleId"] == high
    newest = await add_rule(demo, lineCode="LINE-A", sampleValue=1, priority=9)
    flow = await finish_last(demo, database, qty=3)
    assert (await oqc_of(demo, flow["runNo"]))["samplingRuleId"] == newest


async def test_deactivated_and_foreign_rules_do_not_apply(demo: Api, database: Database) -> None:
    rule_id = await add_rule(demo, productCode="P-1001")
    await add_rule(demo, productCode="P-OTHER")
    assert (await demo.delete(f"{RULES}/{rule_id}", Q)).status == 200
    flow = await finish_last(demo, database, qty=2)  # the seeded DIP rule does not match LINE-A either
    run = await run_of(demo, flow["runNo"])
    assert run["status"] == "COMPLETED" and run["endedAt"]
    expect(await demo.get(f"/oqc/run/{flow['runNo']}", Q), 404, "OQC_NOT_FOUND")


async def test_sample_sizes(demo: Api, database: Database) -> None:
    cases = [  # (type, value, units) → sample
        ("PERCENTAGE", 34, 3, 2),  # 1.02 rounds up
        ("PERCENTAGE", 0, 3, 1),  # 0 % still samples one
        ("PERCENTAGE", 5, 3, 1),  # minimum 1
        ("PERCENTAGE", 100, 3, 3),
        ("FIXED", 5, 3, 3),  # capped at DONE
        ("FIXED", 1.5, 3, 2),
    ]
    rule_id = await add_rule(demo, productCode="P-1001")
    for sampling_type, value, units, sample in cases:
        r = await demo.patch(
            f"{RULES}/{rule_id}", Q, json={"samplingType": sampling_type, "sampleValue": value}
        )
        assert r.status == 200, r.body
        flow = await finish_last(demo, database, qty=units)
        oqc = await oqc_of(demo, flow["runNo"])
        assert (oqc["sampleQty"], len(oqc["sampledSns"])) == (sample, sample), (sampling_type, value)
        assert (oqc["samplingType"], oqc["samplingValue"]) == (sampling_type, value)
