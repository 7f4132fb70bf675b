"""Work orders over HTTP (domain.md §3 WorkOrder): receive, list, release guards in order, routing override,
pick status, close, and the state machine walked end to end."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, update

from central.db.engine import Database
from central.db.models import Run, WorkOrder
from tests.client import Api
from tests.flows import (
    EN,
    OP,
    PL,
    SMT_STATIONS,
    A,
    Q,
    authorized_run,
    move,
    pass_fai,
    pass_readiness,
    released_run,
    seed,
    set_run_status,
)


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def receive(api: Api, wo_no: str, who: str = PL, **extra: Any) -> Any:
    body = {"woNo": wo_no, "productCode": "P-1001", "plannedQty": 100, "routingCode": "PCBA-STD-V1", **extra}
    return await api.post(
        "/integration/work-orders", who, json={k: v for k, v in body.items() if v is not None}
    )


async def release(api: Api, wo_no: str, line: str = "LINE-A", **extra: Any) -> Any:
    return await api.post(f"/work-orders/{wo_no}/release", PL, json={"lineCode": line, **extra})


async def wo(api: Api, wo_no: str) -> dict[str, Any]:
    r = await api.get(f"/work-orders/{wo_no}", PL)
    assert r.status == 200, r.body
    return r.data


async def new_routing(api: Api, code: str, *, product: str | None = None, **extra: Any) -> dict[str, Any]:
    """An MES routing created over HTTP by the engineer and NOT compiled."""
    body = {
        "code": code,
        "name": code,
        "processType": "SMT",
        "productCode": product,
        "steps": [
            {
                "stepNo": 10,
                "operationCode": "PRINTING",
                "stationGroupCode": "SMT-LINE-A",
                "stationType": "MANUAL",
            }
        ],
        **extra,
    }
    r = await api.post("/routes", EN, json=body)
    assert r.status == 200, r.body
    return r.data


# ---- receive -------------------------------------------------------------------------------------


async def test_receive_creates_a_received_work_order(demo: Api) -> None:
    r = await receive(demo, "WO-R-1", pickStatus="2", dueDate="2030-01-02T03:04:05Z")
    assert r.status == 200, r.body
    d = r.data
    assert d["woNo"] == "WO-R-1" and d["status"] == "RECEIVED"
    assert d["productCode"] == "P-1001" and d["plannedQty"] == 100
    assert d["routingCode"] == "PCBA-STD-V1" and d["routingId"] is not None
    assert d["pickStatus"] == "2" and d["dueDate"] == "2030-01-02T03:04:05.000Z"
    assert d["runCount"] == 0 and d["sourceSystem"] == "MES" and "dispatch" not in d["meta"]
    assert (await wo(demo, "WO-R-1"))["id"] == d["id"]


async def test_re_receive_keeps_the_status_and_updates_the_quantity(demo: Api) -> None:
    await receive(demo, "WO-R-2")
    assert (await release(demo, "WO-R-2")).data["status"] == "RELEASED"
    again = await receive(demo, "WO-R-2", plannedQty=250)
    assert again.status == 200, again.body
    assert again.data["status"] == "RELEASED" and again.data["plannedQty"] == 250
    assert again.data["meta"]["dispatch"]["lineCode"] == "LINE-A"  # the dispatch survives the upsert
    listed = await demo.get("/work-orders", PL, params={"search": "WO-R-2"})
    assert listed.data["total"] == 1  # an upsert, never a second row


async def test_receive_with_an_unknown_routing_code_is_404(demo: Api) -> None:
    expect(await receive(demo, "WO-R-3", routingCode="NO-SUCH-ROUTE"), 404, "ROUTE_NOT_FOUND")
    expect(await demo.get("/work-orders/WO-R-3", PL), 404, "WORK_ORDER_NOT_FOUND")


async def test_receive_without_code_takes_the_unique_active_routing_of_the_product(demo: Api) -> None:
    # The demo ingest routes are bound to their products: P-ING-AUTO has exactly ROUTE-AUTO-V1.
    r = await receive(demo, "WO-R-4", productCode="P-ING-AUTO", routingCode=None)
    assert r.data["routingCode"] == "ROUTE-AUTO-V1"
    # An inactive routing of the product does not count.
    await new_routing(demo, "P9-OLD", product="P-9", isActive=False)
    await new_routing(demo, "P9-A", product="P-9")
    assert (await receive(demo, "WO-R-5", productCode="P-9", routingCode=None)).data["routingCode"] == "P9-A"
    # Two active routings: ambiguous, no routing is guessed (the planner overrides).
    await new_routing(demo, "P9-B", product="P-9")
    r = await receive(demo, "WO-R-6", productCode="P-9", routingCode=None)
    assert r.status == 200 and r.data["routingCode"] is None and r.data["routingId"] is None
    # No routing at all for the product.
    r = await receive(demo, "WO-R-7", productCode="P-NONE", routingCode=None)
    assert r.status == 200 and r.data["routingId"] is None


async def test_re_receive_without_code_resolves_the_product_routing_of_a_wo_that_has_none(demo: Api) -> None:
    r = await receive(demo, "WO-R-8", productCode="P-8", routingCode=None)
    assert r.data["routingId"] is None
    await new_routing(demo, "P8-A", product="P-8")
    again = await receive(demo, "WO-R-8", productCode="P-8", routingCode=None, plannedQty=5)
    assert again.data["routingCode"] == "P8-A" and again.data["status"] == "RECEIVED"


async def test_routing_override_is_not_overwritten_by_a_later_receive(demo: Api) -> None:
    await receive(demo, "WO-R-9")
    r = await demo.patch("/work-orders/WO-R-9/routing", PL, json={"routingCode": "PCBA-DIP-V1"})
    assert r.status == 200, r.body
    assert r.data["routingCode"] == "PCBA-DIP-V1"
    override = r.data["meta"]["routingOverride"]
    assert override["routingCode"] == "PCBA-DIP-V1" and override["routingId"] == r.data["routingId"]
    assert override["updatedBy"] and override["updatedAt"].endswith("Z")
    again = await receive(demo, "WO-R-9", routingCode="PCBA-STD-V1", plannedQty=7)
    assert again.status == 200, again.body
    assert again.data["routingCode"] == "PCBA-DIP-V1" and again.data["plannedQty"] == 7


async def test_receive_needs_wo_receive(demo: Api) -> None:
    for who in (EN, Q, OP, A):
        expect(await receive(demo, "WO-R-10", who), 403, "FORBIDDEN")
    expect(await demo.get("/work-orders/WO-R-10", PL), 404, "WORK_ORDER_NOT_FOUND")
    demo.client.session.cookie_jar.clear()  # sign-in left a session cookie: drop it
    r = await demo.post(
        "/integration/work-orders", json={"woNo": "WO-R-10", "productCode": "P", "plannedQty": 1}
    )
    expect(r, 401, "UNAUTHORIZED")


async def test_receive_validates_the_body(demo: Api) -> None:
    expect(await receive(demo, "WO-R-11", plannedQty=0), 422, "VALIDATION_FAILED")
    expect(await receive(demo, "bad wo no"), 422, "VALIDATION_FAILED")
    expect(await receive(demo, "WO-R-12", unknownField=1), 422, "VALIDATION_FAILED")


# ---- list ----------------------------------------------------------------------------------------


async def test_list_pages_total_and_run_count(demo: Api) -> None:
    for n in range(1, 4):
        await receive(demo, f"WO-L-{n}")
    r = await demo.get("/work-orders", PL, params={"page": 2, "pageSize": 3, "sort": "woNo.asc"})
    assert r.status == 200, r.body
    assert (r.data["total"], r.data["page"], r.data["pageSize"]) == (7, 2, 3)
    assert [w["woNo"] for w in r.data["items"]] == ["WO-DEMO-SMT-RUN-001", "WO-L-1", "WO-L-2"]
    last = await demo.get("/work-orders", PL, params={"page": 3, "pageSize": 3, "sort": "woNo.asc"})
    assert [w["woNo"] for w in last.data["items"]] == ["WO-L-3"]
    beyond = await demo.get("/work-orders", PL, params={"page": 9, "pageSize": 3})
    assert beyond.data["items"] == [] and beyond.data["total"] == 7
    counts = {w["woNo"]: w["runCount"] for w in (await demo.get("/work-orders", PL)).data["items"]}
    assert counts["WO-DEMO-SMT-RUN-001"] == 1 and counts["WO-DEMO-SMT-001"] == 0 and counts["WO-L-1"] == 0
    flow = await released_run(demo)
    await demo.post(f"/work-orders/{flow['woNo']}/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    one = await demo.get("/work-orders", PL, params={"search": flow["woNo"]})
    assert one.data["items"][0]["runCount"] == 2


async def test_list_search_status_filter_and_sort(demo: Api) -> None:
    await receive(demo, "WO-S-1")
    await receive(demo, "WO-S-2")
    await release(demo, "WO-S-2")
    r = await demo.get("/work-orders", PL, params={"search": "wo-s-"})  # case-insensitive
    assert sorted(w["woNo"] for w in r.data["items"]) == ["WO-S-1", "WO-S-2"]
    by_product = await demo.get("/work-orders", PL, params={"search": "P-1001", "pageSize": 100})
    assert by_product.data["total"] == 6
    r = await demo.get("/work-orders", PL, params={"status": "RELEASED,IN_PROGRESS", "sort": "woNo.asc"})
    assert [w["woNo"] for w in r.data["items"]] == ["WO-DEMO-DIP-RUN-001", "WO-DEMO-SMT-RUN-001", "WO-S-2"]
    assert {w["status"] for w in r.data["items"]} == {"RELEASED", "IN_PROGRESS"}
    desc = await demo.get("/work-orders", PL, params={"sort": "woNo.desc", "status": "RECEIVED"})
    assert [w["woNo"] for w in desc.data["items"]] == ["WO-S-1", "WO-DEMO-SMT-001", "WO-DEMO-DIP-001"]
    expect(await demo.get("/work-orders", PL, params={"sort": "nope.asc"}), 422, "VALIDATION_FAILED")
    expect(await demo.get("/work-orders", PL, params={"sort": "woNo.sideways"}), 422, "VALIDATION_FAILED")
    expect(await demo.get("/work-orders", PL, params={"pageSize": 101}), 422, "VALIDATION_FAILED")


async def test_list_needs_wo_read(demo: Api) -> None:
    expect(await demo.get("/work-orders", OP), 403, "FORBIDDEN")
    assert (await demo.get("/work-orders", Q)).status == 200


# ---- release guards, in the documented order -----------------------------------------------------
# Every refusal below also breaks all the guards after it, so the code proves the order.

BAD_LATER = {"lineCode": "LINE-NOPE", "stationGroupCode": "GRP-NOPE"}


async def test_release_unknown_work_order_is_404(demo: Api) -> None:
    r = await demo.post("/work-orders/WO-NOPE/release", PL, json=BAD_LATER)
    expect(r, 404, "WORK_ORDER_NOT_FOUND")


async def test_release_refused_when_not_received(demo: Api) -> None:
    await receive(demo, "WO-G-1")
    await release(demo, "WO-G-1")
    expect(await demo.post("/work-orders/WO-G-1/release", PL, json=BAD_LATER), 400, "WORK_ORDER_NOT_RECEIVED")


async def test_release_refused_without_routing(demo: Api) -> None:
    r = await receive(demo, "WO-G-2", productCode="P-NOROUTE", routingCode=None)
    assert r.data["routingId"] is None
    expect(await demo.post("/work-orders/WO-G-2/release", PL, json=BAD_LATER), 400, "ROUTE_NOT_FOUND")
    assert (await wo(demo, "WO-G-2"))["status"] == "RECEIVED"


async def test_release_refused_when_the_routing_has_no_ready_version(demo: Api) -> None:
    await new_routing(demo, "ROUTE-UNCOMPILED")
    await receive(demo, "WO-G-3", routingCode="ROUTE-UNCOMPILED")
    expect(await demo.post("/work-orders/WO-G-3/release", PL, json=BAD_LATER), 400, "ROUTE_NOT_READY")
    # An INVALID compile result is not READY either (AUTO step without ingest mapping).
    bad = await demo.post("/routes/ROUTE-UNCOMPILED/execution-config", EN, json={"stationType": "AUTO"})
    assert bad.status == 200, bad.body
    c = await demo.post("/routes/ROUTE-UNCOMPILED/compile", EN)
    assert c.data["status"] == "INVALID"
    expect(await demo.post("/work-orders/WO-G-3/release", PL, json=BAD_LATER), 400, "ROUTE_NOT_READY")
    assert (await wo(demo, "WO-G-3"))["status"] == "RECEIVED"


async def test_release_refused_for_an_unknown_line(demo: Api) -> None:
    await receive(demo, "WO-G-4")
    expect(await demo.post("/work-orders/WO-G-4/release", PL, json=BAD_LATER), 404, "LINE_NOT_FOUND")


async def test_release_refused_when_the_line_has_another_process_type(demo: Api) -> None:
    await receive(demo, "WO-G-5")  # SMT routing
    r = await demo.post(
        "/work-orders/WO-G-5/release", PL, json={"lineCode": "LINE-DIP-A", "stationGroupCode": "GRP-NOPE"}
    )
    expect(r, 400, "LINE_ROUTING_PROCESS_MISMATCH")
    await receive(demo, "WO-G-5B", routingCode="PCBA-DIP-V1")
    expect(await release(demo, "WO-G-5B", "LINE-A"), 400, "LINE_ROUTING_PROCESS_MISMATCH")


async def test_release_refused_for_an_unknown_station_group(demo: Api) -> None:
    await receive(demo, "WO-G-6")
    r = await release(demo, "WO-G-6", stationGroupCode="GRP-NOPE")
    expect(r, 404, "STATION_GROUP_NOT_FOUND")
    w = await wo(demo, "WO-G-6")
    assert w["status"] == "RECEIVED" and "dispatch" not in w["meta"]


async def test_release_writes_the_dispatch(demo: Api) -> None:
    await receive(demo, "WO-G-7")
    r = await release(demo, "WO-G-7", stationGroupCode="SMT-LINE-A")
    assert r.status == 200, r.body
    assert r.data["status"] == "RELEASED"
    d = r.data["meta"]["dispatch"]
    lines = {x["code"]: x["id"] for x in (await demo.get("/lines", EN)).data["items"]}
    assert d["lineId"] == lines["LINE-A"] and d["lineCode"] == "LINE-A"
    assert d["stationGroupCode"] == "SMT-LINE-A" and isinstance(d["stationGroupId"], int)
    assert d["dispatchedAt"].endswith("Z")
    assert (await wo(demo, "WO-G-7"))["meta"]["dispatch"] == d
    await receive(demo, "WO-G-8", routingCode="PCBA-DIP-V1")
    plain = (await release(demo, "WO-G-8", "LINE-DIP-A")).data["meta"]["dispatch"]
    assert plain["lineCode"] == "LINE-DIP-A" and plain["stationGroupId"] is None
    assert plain["stationGroupCode"] is None


async def test_release_needs_wo_release(demo: Api) -> None:
    await receive(demo, "WO-G-9")
    for who in (EN, Q):
        r = await demo.post("/work-orders/WO-G-9/release", who, json={"lineCode": "LINE-A"})
        expect(r, 403, "FORBIDDEN")


# ---- routing override and pick status ------------------------------------------------------------


async def test_routing_override_refused_when_the_work_order_has_runs(demo: Api) -> None:
    flow = await released_run(demo)
    r = await demo.patch(f"/work-orders/{flow['woNo']}/routing", PL, json={"routingCode": "PCBA-DIP-V1"})
    expect(r, 400, "WORK_ORDER_HAS_RUNS")
    assert (await wo(demo, flow["woNo"]))["routingCode"] == "PCBA-STD-V1"


async def test_routing_override_refused_when_the_work_order_is_completed(
    demo: Api, database: Database
) -> None:
    await receive(demo, "WO-O-1")
    async with database.writer() as s, s.begin():  # completed by ERP status sync (no runs): ORM
        await s.execute(update(WorkOrder).where(WorkOrder.wo_no == "WO-O-1").values(status="COMPLETED"))
    r = await demo.patch("/work-orders/WO-O-1/routing", PL, json={"routingCode": "PCBA-DIP-V1"})
    expect(r, 400, "WORK_ORDER_COMPLETED")


async def test_routing_override_guards_and_success(demo: Api) -> None:
    expect(
        await demo.patch("/work-orders/WO-NOPE/routing", PL, json={"routingCode": "PCBA-DIP-V1"}),
        404,
        "WORK_ORDER_NOT_FOUND",
    )
    await receive(demo, "WO-O-2")
    expect(
        await demo.patch("/work-orders/WO-O-2/routing", PL, json={"routingCode": "NOPE"}),
        404,
        "ROUTE_NOT_FOUND",
    )
    expect(
        await demo.patch("/work-orders/WO-O-2/routing", EN, json={"routingCode": "PCBA-DIP-V1"}),
        403,
        "FORBIDDEN",
    )
    r = await demo.patch("/work-orders/WO-O-2/routing", PL, json={"routingCode": "PCBA-DIP-V1"})
    assert r.status == 200 and r.data["routingCode"] == "PCBA-DIP-V1"
    # The new routing is the one release checks: DIP now fits LINE-DIP-A.
    assert (await release(demo, "WO-O-2", "LINE-DIP-A")).data["status"] == "RELEASED"


async def test_pick_status_refused_for_an_erp_work_order(demo: Api, database: Database) -> None:
    await receive(demo, "WO-P-1", pickStatus="1")
    async with database.writer() as s, s.begin():  # the ERP sync has no push API: set erpStatus directly
        await s.execute(update(WorkOrder).where(WorkOrder.wo_no == "WO-P-1").values(erp_status="2"))
    r = await demo.patch("/work-orders/WO-P-1/pick-status", PL, json={"pickStatus": "3"})
    expect(r, 400, "ERP_WORK_ORDER_NOT_EDITABLE")
    assert (await wo(demo, "WO-P-1"))["pickStatus"] == "1"


async def test_pick_status_updates_a_manual_work_order(demo: Api) -> None:
    await receive(demo, "WO-P-2")
    r = await demo.patch("/work-orders/WO-P-2/pick-status", PL, json={"pickStatus": "3"})
    assert r.status == 200 and r.data["pickStatus"] == "3"
    assert (await wo(demo, "WO-P-2"))["pickStatus"] == "3"
    expect(
        await demo.patch("/work-orders/WO-P-2/pick-status", PL, json={"pickStatus": ""}),
        422,
        "VALIDATION_FAILED",
    )
    expect(
        await demo.patch("/work-orders/WO-NOPE/pick-status", PL, json={"pickStatus": "3"}),
        404,
        "WORK_ORDER_NOT_FOUND",
    )


# ---- close ---------------------------------------------------------------------------------------


async def test_close_refused_without_runs(demo: Api) -> None:
    await receive(demo, "WO-C-1")
    await release(demo, "WO-C-1")
    expect(await demo.post("/work-orders/WO-C-1/close", PL), 400, "WORK_ORDER_HAS_NO_RUNS")
    assert (await wo(demo, "WO-C-1"))["status"] == "RELEASED"
    expect(await demo.post("/work-orders/WO-NOPE/close", PL), 404, "WORK_ORDER_NOT_FOUND")


async def test_close_refused_while_a_run_is_not_terminal(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    for status in ("PREP", "AUTHORIZED", "IN_PROGRESS", "ON_HOLD"):
        await set_run_status(database, flow["runNo"], status)
        expect(await demo.post(f"/work-orders/{flow['woNo']}/close", PL), 409, "WORK_ORDER_RUNS_NOT_TERMINAL")
    assert (await wo(demo, flow["woNo"]))["status"] == "IN_PROGRESS"


async def test_close_succeeds_when_all_runs_are_terminal_and_a_second_close_is_a_no_op(
    demo: Api, database: Database
) -> None:
    flow = await authorized_run(demo, database)
    for station in SMT_STATIONS:
        await move(demo, station, flow["sns"][0], flow)
    assert (await demo.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "COMPLETED"
    r = await demo.post(f"/work-orders/{flow['woNo']}/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    second = r.data["runNo"]
    expect(await demo.post(f"/work-orders/{flow['woNo']}/close", PL), 409, "WORK_ORDER_RUNS_NOT_TERMINAL")
    # MRB outcomes have their own tests; here they only need to exist as terminal statuses.
    for status in ("SCRAPPED", "CLOSED_REWORK"):
        await set_run_status(database, second, status)
        closed = await demo.post(f"/work-orders/{flow['woNo']}/close", PL)
        if status == "SCRAPPED":
            assert closed.status == 200 and closed.data["status"] == "COMPLETED", closed.body
            first_close = closed.data
        else:
            assert closed.status == 200 and closed.data["status"] == "COMPLETED"
            assert closed.data["updatedAt"] == first_close["updatedAt"]  # no-op: nothing written
    expect(await demo.post(f"/work-orders/{flow['woNo']}/close", EN), 403, "FORBIDDEN")


# ---- the state machine ---------------------------------------------------------------------------


async def test_work_order_state_machine_over_http(demo: Api, database: Database) -> None:
    assert (await receive(demo, "WO-M-1")).data["status"] == "RECEIVED"
    expect(
        await demo.post("/work-orders/WO-M-1/runs", PL, json={"lineCode": "LINE-A", "planQty": 1}),
        400,
        "WORK_ORDER_NOT_RELEASED",
    )
    assert (await release(demo, "WO-M-1")).data["status"] == "RELEASED"
    r = await demo.post("/work-orders/WO-M-1/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    run_no = r.data["runNo"]
    assert (await wo(demo, "WO-M-1"))["status"] == "IN_PROGRESS"
    # Disallowed: release is only from RECEIVED.
    expect(await release(demo, "WO-M-1"), 400, "WORK_ORDER_NOT_RECEIVED")
    # A second run keeps the work order IN_PROGRESS.
    r2 = await demo.post("/work-orders/WO-M-1/runs", PL, json={"lineCode": "LINE-A", "planQty": 1})
    assert r2.status == 200 and (await wo(demo, "WO-M-1"))["status"] == "IN_PROGRESS"
    flows = [{"woNo": "WO-M-1", "runNo": n} for n in (run_no, r2.data["runNo"])]
    for flow in flows:
        g = await demo.post(f"/runs/{flow['runNo']}/generate-units", PL, json={"quantity": 1})
        await pass_readiness(database, flow["runNo"])
        await pass_fai(database, flow["runNo"])
        assert (
            await demo.post(f"/runs/{flow['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
        ).status == 200
        for station in SMT_STATIONS:
            await move(demo, station, g.data["units"][0]["sn"], flow)
    closed = await demo.post("/work-orders/WO-M-1/close", PL)
    assert closed.status == 200 and closed.data["status"] == "COMPLETED" and closed.data["runCount"] == 2
    # COMPLETED is final: no release, no new run, receive does not reopen it.
    expect(await release(demo, "WO-M-1"), 400, "WORK_ORDER_NOT_RECEIVED")
    expect(
        await demo.post("/work-orders/WO-M-1/runs", PL, json={"lineCode": "LINE-A", "planQty": 1}),
        400,
        "WORK_ORDER_NOT_RELEASED",
    )
    assert (await receive(demo, "WO-M-1")).data["status"] == "COMPLETED"
    async with database.reader() as s:
        n = await s.scalar(select(func.count(Run.id)).join(WorkOrder).where(WorkOrder.wo_no == "WO-M-1"))
    assert n == 2


async def test_work_order_writes_are_audited(demo: Api) -> None:
    await receive(demo, "WO-AU-1")
    expect(await release(demo, "WO-AU-1", "LINE-NOPE"), 404, "LINE_NOT_FOUND")
    await release(demo, "WO-AU-1")
    w = await wo(demo, "WO-AU-1")
    r = await demo.get(
        "/audit-logs", A, params={"entityType": "WORK_ORDER", "entityId": str(w["id"]), "pageSize": 100}
    )
    assert r.status == 200, r.body
    rows = {(x["action"], x["status"]) for x in r.data["items"]}
    assert {
        ("WORK_ORDER_RECEIVE", "SUCCESS"),
        ("WORK_ORDER_RELEASE", "SUCCESS"),
    } <= rows, rows
    fails = await demo.get("/audit-logs", A, params={"action": "WORK_ORDER_RELEASE", "status": "FAIL"})
    assert any(x["errorCode"] == "LINE_NOT_FOUND" for x in fails.data["items"]), fails.data
