"""Run close-out (domain.md §3 Run IN_PROGRESS→COMPLETED, §7.3 sampling rules, §7.4 automatic OQC) over HTTP.

There are no OQC endpoints yet: sampling rules are written with the ORM model and OQC inspections are read
back from the database."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from central.db.engine import Database
from central.db.models import Inspection, Line, OqcSamplingRule, Routing, Run, Unit
from central.domain.clock import utcnow
from central.services.closeout import sample_size, select_rule
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import OP, PL, SMT_STATIONS, Q, authorized_run, move, released_run, seed, set_run_status

LAST = SMT_STATIONS[-1]


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def add_rule(
    database: Database,
    *,
    product: str | None = None,
    line: str | None = None,
    routing: str | None = None,
    sampling_type: str = "FIXED",
    value: float = 1,
    priority: int = 0,
    active: bool = True,
    created_at: Any = None,
) -> int:
    async with database.writer() as s, s.begin():
        line_id = await s.scalar(select(Line.id).where(Line.code == line)) if line else None
        routing_id = await s.scalar(select(Routing.id).where(Routing.code == routing)) if routing else None
        rule = OqcSamplingRule(
            product_code=product,
            line_id=line_id,
            routing_id=routing_id,
            sampling_type=sampling_type,
            sample_value=value,
            priority=priority,
            is_active=active,
            meta={},
        )
        if created_at is not None:
            rule.created_at = created_at
        s.add(rule)
        await s.flush()
        return rule.id


async def finish(api: Api, flow: dict[str, Any], sns: list[str]) -> Any:
    """Every given unit through the five SMT stations; returns the last track-out."""
    r = None
    for sn in sns:
        for station in SMT_STATIONS:
            r = await move(api, station, sn, flow)
            assert r.status == 200, r.body
    return r


async def run_row(database: Database, run_no: str) -> Run:
    async with database.reader() as s:
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        assert run is not None
        return run


async def oqcs(database: Database, run_no: str) -> list[Inspection]:
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        return list(
            await s.scalars(
                select(Inspection)
                .where(Inspection.run_id == run_id, Inspection.type == "OQC")
                .order_by(Inspection.id)
            )
        )


async def unit_ids(database: Database, run_no: str, status: str) -> set[int]:
    async with database.reader() as s:
        run_id = await s.scalar(select(Run.id).where(Run.run_no == run_no))
        return set(await s.scalars(select(Unit.id).where(Unit.run_id == run_id, Unit.status == status)))


async def set_units(database: Database, sns: list[str], **values: Any) -> None:
    """Scrapping has no HTTP workflow yet (dispositions come later): write the unit state directly."""
    async with database.writer() as s, s.begin():
        await s.execute(update(Unit).where(Unit.sn.in_(sns)).values(**values))


async def status_of(api: Api, run_no: str) -> dict[str, Any]:
    r = await api.get(f"/runs/{run_no}", PL)
    assert r.status == 200, r.body
    return r.data


async def close(api: Api, run_no: str) -> Any:
    return await api.post(f"/runs/{run_no}/close", PL)


# ---- automatic completion and OQC ----------------------------------------------------------------


async def test_run_completes_when_the_last_unit_is_done_and_no_rule_applies(
    demo: Api, database: Database
) -> None:
    # The demo rule (P-1001 + LINE-DIP-A + PCBA-DIP-V1) and an inactive one do not apply to this LINE-A run.
    await add_rule(database, product="P-1001", sampling_type="FIXED", value=1, active=False)
    flow = await authorized_run(demo, database, qty=2)
    await finish(demo, flow, flow["sns"][:1])
    assert (await status_of(demo, flow["runNo"]))["status"] == "IN_PROGRESS"
    last = await finish(demo, flow, flow["sns"][1:])
    assert last.data["status"] == "DONE"
    d = await status_of(demo, flow["runNo"])
    assert d["status"] == "COMPLETED" and d["endedAt"] and d["unitStats"]["done"] == 2
    assert await oqcs(database, flow["runNo"]) == []
    r = await close(demo, flow["runNo"])
    assert r.status == 200 and r.data["status"] == "COMPLETED" and r.data["endedAt"] == d["endedAt"]


async def test_fixed_rule_creates_a_pending_oqc_and_close_answers_oqc_required(
    demo: Api, database: Database
) -> None:
    rule_id = await add_rule(database, product="P-1001", sampling_type="FIXED", value=2)
    flow = await authorized_run(demo, database, qty=3)
    await finish(demo, flow, flow["sns"])
    d = await status_of(demo, flow["runNo"])
    assert d["status"] == "IN_PROGRESS" and d["endedAt"] is None and d["unitStats"]["done"] == 3
    [oqc] = await oqcs(database, flow["runNo"])
    run = await run_row(database, flow["runNo"])
    assert (oqc.status, oqc.sample_qty, oqc.active_key) == ("PENDING", 2, f"{run.id}:OQC")
    sampled = oqc.data["sampledUnitIds"]
    assert len(sampled) == len(set(sampled)) == 2
    assert set(sampled) <= await unit_ids(database, flow["runNo"], "DONE")
    assert oqc.data["samplingRuleId"] == rule_id
    assert (oqc.data["samplingType"], oqc.data["samplingValue"]) == ("FIXED", 2)

    r = await close(demo, flow["runNo"])
    expect(r, 409, "OQC_REQUIRED")
    assert r.body["error"]["details"] == {"oqcId": oqc.id}
    again = await close(demo, flow["runNo"])
    expect(again, 409, "OQC_REQUIRED")
    assert again.body["error"]["details"] == {"oqcId": oqc.id}  # the same OQC is found, not a new one
    assert [o.id for o in await oqcs(database, flow["runNo"])] == [oqc.id]
    assert (await status_of(demo, flow["runNo"]))["status"] == "IN_PROGRESS"


async def test_close_creates_the_oqc_when_the_units_became_terminal_without_a_trigger(
    demo: Api, database: Database
) -> None:
    """All units terminal without a DONE event having run close-out (e.g. written by an old version): the
    close itself samples, and the OQC it created survives the 409."""
    rule_id = await add_rule(database, product="P-1001", value=1)
    flow = await authorized_run(demo, database, qty=2)
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    await set_units(database, flow["sns"], status="DONE", current_step_no=5)
    assert await oqcs(database, flow["runNo"]) == []
    r = await close(demo, flow["runNo"])
    expect(r, 409, "OQC_REQUIRED")
    [oqc] = await oqcs(database, flow["runNo"])
    assert r.body["error"]["details"] == {"oqcId": oqc.id}
    assert oqc.status == "PENDING" and oqc.sample_qty == 1 and oqc.data["samplingRuleId"] == rule_id
    again = await close(demo, flow["runNo"])
    assert again.body["error"]["details"] == {"oqcId": oqc.id}
    assert len(await oqcs(database, flow["runNo"])) == 1


async def test_percentage_rule_rounds_up(demo: Api, database: Database) -> None:
    await add_rule(database, product="P-1001", sampling_type="PERCENTAGE", value=50)
    flow = await authorized_run(demo, database, qty=3)
    await finish(demo, flow, flow["sns"])
    [oqc] = await oqcs(database, flow["runNo"])
    assert oqc.sample_qty == 2 and len(oqc.data["sampledUnitIds"]) == 2  # ceil(3 × 50 %)
    assert oqc.data["samplingType"] == "PERCENTAGE"


async def test_small_percentage_still_samples_one_unit(demo: Api, database: Database) -> None:
    await add_rule(database, line="LINE-A", sampling_type="PERCENTAGE", value=5)
    flow = await authorized_run(demo, database, qty=3)
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    await set_units(database, flow["sns"][:2], status="DONE", current_step_no=5)
    await finish(demo, flow, flow["sns"][2:])
    [oqc] = await oqcs(database, flow["runNo"])
    assert oqc.sample_qty == 1 and len(oqc.data["sampledUnitIds"]) == 1  # 5 % of 3 → 1


def test_sample_size() -> None:
    assert sample_size("PERCENTAGE", 5, 3) == 1
    assert sample_size("PERCENTAGE", 50, 3) == 2
    assert sample_size("PERCENTAGE", 0, 3) == 1  # 0 % still samples one
    assert sample_size("PERCENTAGE", 100, 3) == 3
    assert sample_size("PERCENTAGE", 34, 3) == 2  # 1.02 → 2
    assert sample_size("PERCENTAGE", 10, 20) == 2
    assert sample_size("PERCENTAGE", 5, 0) == 0
    assert sample_size("FIXED", 2, 3) == 2
    assert sample_size("FIXED", 5, 3) == 3  # never more than DONE
    assert sample_size("FIXED", 1.2, 3) == 2  # rounds up
    assert sample_size("FIXED", 1, 0) == 0


# ---- rule selection ------------------------------------------------------------------------------


async def selected(database: Database, run_no: str) -> int | None:
    async with UnitOfWork(database.writer) as uow:
        run = await uow.session.scalar(select(Run).where(Run.run_no == run_no))
        rule = await select_rule(uow, run)
        return rule.id if rule else None


async def test_the_most_specific_rule_wins_over_a_higher_priority(demo: Api, database: Database) -> None:
    await add_rule(database, value=1, priority=100)  # generic
    await add_rule(database, product="P-1001", value=1, priority=50)
    specific = await add_rule(database, product="P-1001", line="LINE-A", value=1, priority=0)
    # More specific still, but not matching (other routing / other line), or inactive: ignored.
    await add_rule(database, product="P-1001", line="LINE-A", routing="PCBA-DIP-V1", value=1, priority=999)
    await add_rule(
        database, product="P-1001", line="LINE-DIP-A", routing="PCBA-STD-V1", value=1, priority=999
    )
    await add_rule(database, product="P-1001", line="LINE-A", routing="PCBA-STD-V1", value=1, active=False)
    await add_rule(database, product="P-OTHER", line="LINE-A", routing="PCBA-STD-V1", value=1, priority=999)
    flow = await authorized_run(demo, database)
    await finish(demo, flow, flow["sns"])
    [oqc] = await oqcs(database, flow["runNo"])
    assert oqc.data["samplingRuleId"] == specific


async def test_rule_selection_then_priority_then_newest(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    assert await selected(database, flow["runNo"]) is None  # no rule for SMT in the demo
    old = utcnow() - timedelta(days=2)
    low = await add_rule(database, product="P-1001", priority=1, created_at=utcnow())
    assert await selected(database, flow["runNo"]) == low
    high = await add_rule(database, product="P-1001", priority=5, created_at=old)
    assert await selected(database, flow["runNo"]) == high  # priority beats age
    newer = await add_rule(database, routing="PCBA-STD-V1", priority=5, created_at=old + timedelta(days=1))
    assert await selected(database, flow["runNo"]) == newer  # same specificity and priority: newest
    by_line = await add_rule(database, line="LINE-A", priority=5, created_at=old + timedelta(hours=1))
    assert await selected(database, flow["runNo"]) == newer and by_line != newer
    both = await add_rule(database, line="LINE-A", routing="PCBA-STD-V1", priority=-10, created_at=old)
    assert await selected(database, flow["runNo"]) == both  # two criteria beat one, whatever the priority


# ---- close refusals ------------------------------------------------------------------------------


async def test_close_refused_unless_in_progress(demo: Api, database: Database) -> None:
    flow = await released_run(demo)  # PREP, with units
    expect(await close(demo, flow["runNo"]), 400, "RUN_NOT_CLOSABLE")
    await set_run_status(database, flow["runNo"], "AUTHORIZED")
    expect(await close(demo, flow["runNo"]), 400, "RUN_NOT_CLOSABLE")
    await set_run_status(database, flow["runNo"], "ON_HOLD")
    expect(await close(demo, flow["runNo"]), 400, "RUN_NOT_CLOSABLE")
    expect(await close(demo, "RUN-NOPE"), 404, "RUN_NOT_FOUND")
    expect(await demo.post(f"/runs/{flow['runNo']}/close", Q), 403, "FORBIDDEN")


async def test_close_refused_without_units(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    assert (await demo.delete(f"/runs/{flow['runNo']}/units", PL)).data == {"deleted": 1}
    expect(await close(demo, flow["runNo"]), 400, "RUN_NOT_CLOSABLE")  # PREP comes first
    await set_run_status(
        database, flow["runNo"], "IN_PROGRESS"
    )  # an inconsistent run: no HTTP path leads here
    expect(await close(demo, flow["runNo"]), 400, "RUN_HAS_NO_UNITS")


async def test_close_refused_while_units_are_not_terminal(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    await finish(demo, flow, [a])
    r = await demo.post(
        f"/stations/{SMT_STATIONS[0]}/track-in",
        OP,
        json={"sn": b, "woNo": flow["woNo"], "runNo": flow["runNo"]},
    )
    assert r.status == 200, r.body
    expect(await close(demo, flow["runNo"]), 400, "RUN_UNITS_NOT_TERMINAL")  # b IN_STATION, c QUEUED
    for status in ("OUT_FAILED", "ON_HOLD"):
        await set_units(database, [b, c], status=status)
        expect(await close(demo, flow["runNo"]), 400, "RUN_UNITS_NOT_TERMINAL")
    assert (await status_of(demo, flow["runNo"]))["status"] == "IN_PROGRESS"


async def test_closing_a_completed_run_is_a_no_op(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database)
    await finish(demo, flow, flow["sns"])
    done = await status_of(demo, flow["runNo"])
    assert done["status"] == "COMPLETED"
    for _ in range(2):
        r = await close(demo, flow["runNo"])
        assert r.status == 200, r.body
        assert (r.data["status"], r.data["endedAt"]) == ("COMPLETED", done["endedAt"])
    for status in ("CLOSED_REWORK", "SCRAPPED"):
        await set_run_status(database, flow["runNo"], status)
        r = await close(demo, flow["runNo"])
        assert r.status == 200 and r.data["status"] == status


# ---- scrapped units ------------------------------------------------------------------------------


async def test_scrapped_units_are_terminal_and_never_sampled(demo: Api, database: Database) -> None:
    await add_rule(database, product="P-1001", sampling_type="FIXED", value=5)
    flow = await authorized_run(demo, database, qty=3)
    a, b, c = flow["sns"]
    await set_units(database, [a], status="SCRAPPED")
    await finish(demo, flow, [b, c])
    [oqc] = await oqcs(database, flow["runNo"])
    done = await unit_ids(database, flow["runNo"], "DONE")
    assert oqc.sample_qty == 2 and set(oqc.data["sampledUnitIds"]) == done  # min(5, DONE=2)
    assert not set(oqc.data["sampledUnitIds"]) & await unit_ids(database, flow["runNo"], "SCRAPPED")


async def test_a_scrapped_unit_does_not_keep_the_run_open(demo: Api, database: Database) -> None:
    flow = await authorized_run(demo, database, qty=2)
    await set_units(database, flow["sns"][:1], status="SCRAPPED")
    await finish(demo, flow, flow["sns"][1:])
    d = await status_of(demo, flow["runNo"])
    assert d["status"] == "COMPLETED" and d["unitStats"]["scrapped"] == 1 and d["unitStats"]["done"] == 1


async def test_a_run_of_only_scrapped_units_closes_without_oqc(demo: Api, database: Database) -> None:
    await add_rule(database, product="P-1001", sampling_type="PERCENTAGE", value=100)
    flow = await authorized_run(demo, database, qty=2)
    await set_run_status(database, flow["runNo"], "IN_PROGRESS")
    await set_units(database, flow["sns"], status="SCRAPPED")
    r = await close(demo, flow["runNo"])
    assert r.status == 200 and r.data["status"] == "COMPLETED" and r.data["endedAt"], r.body  # sample size 0
    assert await oqcs(database, flow["runNo"]) == []


# ---- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_rule", [False, True])
async def test_concurrent_last_track_outs_close_out_exactly_once(
    demo: Api, database: Database, with_rule: bool
) -> None:
    if with_rule:
        await add_rule(database, product="P-1001", value=1)
    n = 4
    flow = await authorized_run(demo, database, qty=n)
    await set_units(database, flow["sns"], current_step_no=5)
    for sn in flow["sns"]:
        r = await demo.post(
            f"/stations/{LAST}/track-in", OP, json={"sn": sn, "woNo": flow["woNo"], "runNo": flow["runNo"]}
        )
        assert r.status == 200, r.body
    outs = await asyncio.gather(
        *(
            demo.post(
                f"/stations/{LAST}/track-out", OP, json={"sn": sn, "runNo": flow["runNo"], "result": "PASS"}
            )
            for sn in flow["sns"]
        )
    )
    assert [o.status for o in outs] == [200] * n, [o.body for o in outs]
    d = await status_of(demo, flow["runNo"])
    if with_rule:
        assert d["status"] == "IN_PROGRESS" and len(await oqcs(database, flow["runNo"])) == 1
    else:
        assert d["status"] == "COMPLETED" and await oqcs(database, flow["runNo"]) == []
