"""ERP pull sync over real HTTP against the mock ERP server (domain.md §9 "Pull")."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from sqlalchemy import select

from central.api.app import create_app
from central.config import Settings
from central.db.engine import Database
from central.db.models import (
    ErpRouteLineRaw,
    IntegrationMessage,
    StationGroup,
    WorkCenterStationGroupMapping,
)
from central.integration.mock_server import STATE, MockState, at, create_mock_app, route
from tests.client import Api
from tests.flows import EN, PL, Q, seed

KEY = "upstream-secret"
ROUTES, WOS, MATERIALS, BOMS, CENTERS = (
    f"/integration/erp/{e}/sync" for e in ("routes", "work-orders", "materials", "boms", "work-centers")
)


@dataclass
class Upstream:
    state: MockState
    server: TestServer

    def url(self, system: str) -> str:
        return str(self.server.make_url(f"/{system}"))


async def start_upstream(aiohttp_server: Any) -> Upstream:
    """The mock ERP/TPM server on a free port, requiring our API key."""
    app = create_mock_app(api_key=KEY)
    return Upstream(app[STATE], await aiohttp_server(app))


def pointed_at(settings: Settings, up: Upstream | None, **extra: Any) -> Settings:
    """The test settings with ERP and TPM pointing at the mock server (None: not configured)."""
    urls = {"erp_base_url": up.url("erp"), "tpm_base_url": up.url("tpm")} if up else {}
    keys = {"erp_api_key": SecretStr(KEY), "tpm_api_key": SecretStr(KEY)}
    return settings.model_copy(update={**urls, **keys, **extra})


async def app_for(aiohttp_client: Any, settings: Settings, database: Database) -> Api:
    # The tests drive pulls and ticks themselves: the app's own background scheduler stays off.
    quiet = settings.model_copy(update={"run_workers": False})
    return Api(await aiohttp_client(create_app(quiet, database=database)))


@dataclass
class Env:
    api: Api
    up: Upstream
    db: Database


@pytest.fixture
async def env(aiohttp_server: Any, aiohttp_client: Any, settings: Settings, database: Database) -> Env:
    up = await start_upstream(aiohttp_server)
    await seed(database)
    return Env(await app_for(aiohttp_client, pointed_at(settings, up), database), up, database)


async def messages(db: Database, entity: str) -> list[IntegrationMessage]:
    async with db.reader() as s:
        stmt = select(IntegrationMessage).where(IntegrationMessage.entity_type == entity)
        return list(await s.scalars(stmt.order_by(IntegrationMessage.id)))


async def map_work_centers(db: Database) -> None:
    """ERP work centers → the demo station groups (what an engineer maps once)."""
    async with db.writer() as s, s.begin():
        groups = dict((await s.execute(select(StationGroup.code, StationGroup.id))).tuples().all())
        for wc, group in (("WC-SMT-A", "SMT-LINE-A"), ("WC-DIP-A", "DIP-LINE-A")):
            s.add(
                WorkCenterStationGroupMapping(
                    source_system="ERP", work_center_code=wc, department="", station_group_id=groups[group]
                )
            )


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


async def test_route_cycle_first_pull_dedupe_and_recompile(env: Env) -> None:
    api, up = env.api, env.up
    await map_work_centers(env.db)
    r = await api.post(ROUTES, EN)
    assert r.status == 200, r.body
    d = r.data
    assert (d["sourceSystem"], d["entityType"], d["status"]) == ("ERP", "ROUTING", "SUCCESS")
    assert d["cursor"] == {"nextSyncAt": at(11), "hasMore": False, "nextStartRow": None}
    assert [i["header"]["routeNo"] for i in d["items"]] == ["ERP-RT-3001", "ERP-RT-3002"]
    assert d["summary"] | {"rejected": None} == {
        "received": 2,
        "created": 2,
        "updated": 0,
        "unchanged": 0,
        "rejected": None,
    }
    assert d["dedupeKey"].startswith("ERP:ROUTING:") and len(d["dedupeKey"]) == len("ERP:ROUTING:") + 64
    assert up.state.requests[0]["query"] == {"startRow": "0", "limit": "200"}  # first pull: no since

    smt = (await api.get("/routes/ERP-RT-3001", EN)).data
    assert (smt["sourceSystem"], smt["sourceKey"], smt["productCode"], smt["processType"]) == (
        "ERP",
        "ERP-RT-3001",
        "P-3001",
        "SMT",
    )
    steps = {st["stepNo"]: st for st in smt["steps"]}
    assert list(steps) == [10, 20, 30, 40, 50]
    assert [st["operationCode"] for st in smt["steps"]] == ["PRINTING", "SPI", "MOUNTING", "REFLOW", "AOI"]
    assert steps[10]["requiresFai"] is True and steps[20]["requiresFai"] is False
    assert [st["isLast"] for st in smt["steps"]] == [False, False, False, False, True]
    assert {st["stationGroupCode"] for st in smt["steps"]} == {"SMT-LINE-A"}
    assert {st["stationType"] for st in smt["steps"]} == {"MANUAL"}
    assert steps[10]["sourceStepKey"] == "ERP:ERP-RT-3001:10:PRINTING"
    # An unknown process code became an ERP operation (MANUAL, read-only in the API).
    ops = (await api.get("/operations", EN, params={"search": "CONFORMAL"})).data["items"]
    assert [(o["code"], o["sourceSystem"], o["defaultType"]) for o in ops] == [
        ("CONFORMAL_COAT", "ERP", "MANUAL")
    ]
    expect(
        await api.patch("/operations/CONFORMAL_COAT", EN, json={"name": "x"}), 403, "OPERATION_ERP_READONLY"
    )
    v1 = (await api.post("/routes/ERP-RT-3001/compile", EN)).data
    assert (v1["versionNo"], v1["status"]) == (1, "READY")

    # The cursor re-pull returns the boundary item (since is inclusive): nothing in it changed …
    again = (await api.post(ROUTES, EN)).data
    assert up.state.requests[-1]["query"]["since"] == at(11)
    assert again["status"] == "SUCCESS" and again["summary"]["unchanged"] == 1
    assert again["summary"]["created"] == again["summary"]["updated"] == 0
    # … and from then on the identical page is a DUPLICATE: logged once, counted, never applied.
    for _ in range(2):
        dup = (await api.post(ROUTES, EN)).data
        assert dup["status"] == "DUPLICATE" and dup["summary"]["unchanged"] == 1
    # Re-pulling the first window explicitly gives the very first envelope: DUPLICATE too.
    first_window = (await api.post(ROUTES, EN, params={"since": at(0)})).data
    assert first_window["status"] == "DUPLICATE" and first_window["dedupeKey"] == d["dedupeKey"]
    log = await messages(env.db, "ROUTING")
    assert [m.status for m in log] == ["SUCCESS", "SUCCESS", "DUPLICATE", "DUPLICATE"]
    assert log[2].meta["repeats"] == 2 and log[2].payload is None and log[2].meta["duplicateOf"] == log[1].id
    assert log[0].payload["items"] == d["items"] and log[0].dedupe_key == d["dedupeKey"]
    same = (await api.post("/routes/ERP-RT-3001/compile", EN)).data
    assert same["versionNo"] == 1  # nothing changed: compile keeps version 1

    # ERP changes the route: REFLOW dropped, ICT appended → steps upserted, vanished one deleted.
    changed = route(
        "ERP-RT-3001",
        "P-3001",
        "SMT",
        [
            (10, "PRINTING", "WC-SMT-A"),
            (20, "SPI", "WC-SMT-A"),
            (30, "MOUNTING", "WC-SMT-A"),
            (50, "AOI", "WC-SMT-A"),
            (60, "ICT", "WC-SMT-A"),
        ],
        30,
    )
    up.state.put("erp", "routes", changed)
    upd = (await api.post(ROUTES, EN)).data
    assert upd["status"] == "SUCCESS" and upd["summary"]["updated"] == 1
    smt = (await api.get("/routes/ERP-RT-3001", EN)).data
    assert [(st["stepNo"], st["operationCode"], st["isLast"]) for st in smt["steps"]] == [
        (10, "PRINTING", False),
        (20, "SPI", False),
        (30, "MOUNTING", False),
        (50, "AOI", False),
        (60, "ICT", True),
    ]
    assert smt["steps"][-1]["stationGroupCode"] == "SMT-LINE-A"
    v2 = (await api.post("/routes/ERP-RT-3001/compile", EN)).data
    assert (v2["versionNo"], v2["status"]) == (2, "READY")
    async with env.db.reader() as s:
        lines = set(
            await s.scalars(
                select(ErpRouteLineRaw.business_key).where(ErpRouteLineRaw.route_no == "ERP-RT-3001")
            )
        )
    assert lines == {
        f"ERP-RT-3001:{no}:{op}"
        for no, op in ((10, "PRINTING"), (20, "SPI"), (30, "MOUNTING"), (50, "AOI"), (60, "ICT"))
    }
    audits = (await api.get("/audit-logs", "admin@example.com", params={"action": "ERP_ROUTE_SYNC"})).data
    kinds = [(a["entityType"], a["status"]) for a in audits["items"]]
    assert kinds.count(("ROUTING", "SUCCESS")) == 3 and ("INTEGRATION", "SUCCESS") in kinds


async def test_paging_with_has_more_across_pages(env: Env) -> None:
    api, up = env.api, env.up
    mats = [
        {"materialCode": f"MAT-9{i:02d}", "name": f"Part {i}", "unit": "PCS", "updatedAt": at(100 + i)}
        for i in range(5)
    ]
    up.state.data["erp"]["materials"] = mats
    pages = []
    for _ in range(3):
        r = await api.post(MATERIALS, EN, params={"limit": 2})
        assert r.status == 200, r.body
        pages.append(r.data)
    assert [[i["materialCode"] for i in p["items"]] for p in pages] == [
        ["MAT-900", "MAT-901"],
        ["MAT-902", "MAT-903"],
        ["MAT-904"],
    ]
    assert [p["cursor"]["hasMore"] for p in pages] == [True, True, False]
    assert [p["cursor"]["nextStartRow"] for p in pages] == [2, 4, None]
    assert [r["query"]["startRow"] for r in up.state.requests] == ["0", "2", "4"]
    assert all("since" not in r["query"] for r in up.state.requests)  # the window's since is kept
    status = (await api.get("/integration/status", EN)).data
    job = next(j for j in status["jobs"] if j["entityType"] == "MATERIAL")
    assert job["cursor"]["lastSyncAt"] == at(104) and job["cursor"]["meta"] == {}
    listed = (await api.get("/materials", EN, params={"search": "MAT-9", "pageSize": 50})).data["items"]
    assert sorted((m["code"], m["sourceSystem"]) for m in listed) == [
        (m["materialCode"], "ERP") for m in mats
    ]

    # While a window is open the status shows where it resumes; an explicit startRow overrides it.
    await api.post(MATERIALS, EN, params={"limit": 2, "since": at(101)})
    status = (await api.get("/integration/status", EN)).data
    job = next(j for j in status["jobs"] if j["entityType"] == "MATERIAL")
    assert job["cursor"]["meta"] == {"nextStartRow": 2, "since": at(101), "maxUpdatedAt": at(102)}
    r = await api.post(MATERIALS, EN, params={"startRow": 3, "limit": 2})
    assert [i["materialCode"] for i in r.data["items"]] == ["MAT-904"] and not r.data["cursor"]["hasMore"]
    assert up.state.requests[-1]["query"] == {"since": at(101), "startRow": "3", "limit": "2"}

    # BOM pages default to 50 rows, the other entities to 200.
    await api.post(BOMS, EN)
    assert up.state.requests[-1]["query"]["limit"] == "50"


async def test_upstream_failure_is_502_and_leaves_a_failed_message(env: Env) -> None:
    api, up = env.api, env.up
    up.state.fail(1, status=500)
    r = await api.post(WOS, EN)
    expect(r, 502, "UPSTREAM_FAILED")
    details = r.body["error"]["details"]
    assert details["reason"] == "HTTP_ERROR" and details["httpStatus"] == 500
    async with env.db.reader() as s:
        failed = await s.get(IntegrationMessage, details["messageId"])
    assert failed is not None and failed.status == "FAILED" and "HTTP 500" in (failed.error or "")
    assert failed.payload["request"] == {
        "since": None,
        "startRow": 0,
        "limit": 200,
        "url": up.url("erp") + "/work-orders",
    }
    audit = (await api.get("/audit-logs", "admin@example.com", params={"action": "ERP_WORK_ORDER_SYNC"})).data
    assert [(a["status"], a["errorCode"]) for a in audit["items"]] == [("FAIL", "UPSTREAM_FAILED")]
    assert (await api.get("/work-orders/ERP-WO-3001", PL)).status == 404  # nothing applied
    status = (await api.get("/integration/status", EN)).data
    job = next(j for j in status["jobs"] if j["entityType"] == "WORK_ORDER")
    assert job["cursor"] is None and job["lastMessage"]["status"] == "FAILED"

    assert (await api.post(WOS, EN)).data["status"] == "SUCCESS"  # the retry goes through

    for body, reason in (
        ("{not json", "BAD_JSON"),
        ('{"items": 5}', "BAD_PAYLOAD"),
        ('[{"materialCode": "M"}]', "BAD_PAYLOAD"),
        ('{"items": [], "cursor": {"hasMore": "yes"}}', "BAD_PAYLOAD"),
        ('{"items": [], "cursor": {"hasMore": true}}', "BAD_PAYLOAD"),  # more, but no progress
    ):
        up.state.canned = [body]
        r = await api.post(MATERIALS, EN)
        expect(r, 502, "UPSTREAM_FAILED")
        assert r.body["error"]["details"]["reason"] == reason, body
    # The MES's own envelope is accepted too.
    item = {"materialCode": "MAT-W", "updatedAt": at(9)}
    up.state.canned = [json.dumps({"ok": True, "data": {"items": [item]}})]
    wrapped = (await api.post(MATERIALS, EN)).data
    assert wrapped["summary"]["created"] == 1 and wrapped["cursor"]["nextSyncAt"] == at(9)
    up.state.failing_paths = {"/erp/boms"}
    r = await api.post(BOMS, EN)
    expect(r, 502, "UPSTREAM_FAILED")
    up.state.failing_paths = set()
    up.state.api_key = "rotated"  # our key no longer works
    r = await api.post(CENTERS, EN)
    assert r.body["error"]["details"]["httpStatus"] == 401
    assert [m.status for m in await messages(env.db, "MATERIAL")] == ["FAILED"] * 5 + ["SUCCESS"]


async def test_timeout_unreachable_and_not_configured(
    aiohttp_server: Any, aiohttp_client: Any, settings: Settings, database: Database
) -> None:
    up = await start_upstream(aiohttp_server)
    await seed(database)
    slow = await app_for(aiohttp_client, pointed_at(settings, up, sync_timeout_seconds=0.2), database)
    up.state.delay_seconds = 2
    r = await slow.post(ROUTES, EN)
    expect(r, 502, "UPSTREAM_FAILED")
    assert r.body["error"]["details"]["reason"] == "TIMEOUT"
    up.state.delay_seconds = 0

    gone = pointed_at(settings, up).model_copy(update={"erp_base_url": "http://127.0.0.1:9/erp"})
    r = await (await app_for(aiohttp_client, gone, database)).post(ROUTES, EN)
    expect(r, 502, "UPSTREAM_FAILED")
    assert r.body["error"]["details"]["reason"] == "CONNECTION"

    bare = await app_for(aiohttp_client, pointed_at(settings, None), database)
    r = await bare.post(MATERIALS, EN)
    expect(r, 502, "INTEGRATION_NOT_CONFIGURED")
    assert "MES_ERP_BASE_URL" in r.body["error"]["message"]
    failed = await messages(database, "MATERIAL")
    assert [(m.status, m.payload["error"]["reason"]) for m in failed] == [("FAILED", "NOT_CONFIGURED")]
    reasons = [m.payload["error"]["reason"] for m in await messages(database, "ROUTING")]
    assert reasons == ["TIMEOUT", "CONNECTION"]


async def test_permissions_and_query_validation(env: Env, make_user: Any) -> None:
    api = env.api
    r = await api.post(ROUTES, PL)
    assert r.status == 403 and "system:integration" in r.body["error"]["message"]
    assert (await api.get("/integration/status", PL)).status == 403
    for params in (
        {"since": "2026-01-05T08:00:00"},
        {"limit": 0},
        {"limit": 1001},
        {"startRow": -1},
        {"x": 1},
    ):
        expect(await api.post(ROUTES, EN, params=params), 422, "VALIDATION_FAILED")
    assert env.up.state.requests == []


async def test_work_order_status_mapping_and_stickiness(env: Env) -> None:
    api, up = env.api, env.up
    await api.post(ROUTES, EN)
    r = await api.post(WOS, EN)
    assert r.data["summary"]["created"] == 4, r.body

    async def wo(no: str) -> dict[str, Any]:
        return (await api.get(f"/work-orders/{no}", PL)).data

    first = {no: await wo(no) for no in ("ERP-WO-3001", "ERP-WO-3002", "ERP-WO-1001", "ERP-WO-0999")}
    assert {no: (w["status"], w["erpStatus"]) for no, w in first.items()} == {
        "ERP-WO-3001": ("RECEIVED", "1"),
        "ERP-WO-3002": ("RELEASED", "2"),
        "ERP-WO-1001": ("IN_PROGRESS", "3"),
        "ERP-WO-0999": ("COMPLETED", "5"),
    }
    assert first["ERP-WO-3001"]["sourceSystem"] == "ERP" and first["ERP-WO-3001"]["erpPickStatus"] == "1"
    assert first["ERP-WO-3001"]["plannedQty"] == 100 and first["ERP-WO-3001"]["dueDate"] == at(7 * 24 * 60)

    # ERP moves 3001 forward and "regresses" the others: MES follows forward only, COMPLETED stays.
    moves = {"ERP-WO-3001": ("3", 12.5), "ERP-WO-1001": ("2", 100), "ERP-WO-0999": ("1", 100)}
    for i, (no, (fstatus, qty)) in enumerate(moves.items()):
        item = next(x for x in up.state.items("erp", "work-orders") if x["woNo"] == no)
        up.state.put(
            "erp", "work-orders", {**item, "status": fstatus, "plannedQty": qty, "updatedAt": at(60 + i)}
        )
    r = await api.post(WOS, EN)
    assert r.data["summary"]["updated"] == 3, r.body
    after = {no: await wo(no) for no in moves}
    assert {no: (w["status"], w["erpStatus"]) for no, w in after.items()} == {
        "ERP-WO-3001": ("IN_PROGRESS", "3"),
        "ERP-WO-1001": ("IN_PROGRESS", "2"),
        "ERP-WO-0999": ("COMPLETED", "1"),
    }
    assert after["ERP-WO-3001"]["plannedQty"] == 12.5  # decimals are kept
    # Work orders are re-applied even when ERP sends the very same page again.
    again = await api.post(WOS, EN, params={"since": at(60)})
    repeat = await api.post(WOS, EN, params={"since": at(60)})
    assert again.data["dedupeKey"] == repeat.data["dedupeKey"]
    assert repeat.data["status"] == "SUCCESS" and repeat.data["summary"]["unchanged"] == 3
    log = await messages(env.db, "WORK_ORDER")
    assert [m.status for m in log] == ["SUCCESS"] * 4 and log[-1].meta["reapplied"] is True
    audit = (await api.get("/audit-logs", "admin@example.com", params={"entityType": "WORK_ORDER"})).data
    changes = [a for a in audit["items"] if a["entityDisplay"] == "ERP-WO-3001"]
    assert (
        len(changes) == 2
        and {"op": "replace", "path": "/status", "before": "RECEIVED", "after": "IN_PROGRESS"}
        in changes[0]["diff"]
    )


async def test_routing_resolution(env: Env) -> None:
    api, up = env.api, env.up
    await api.post(ROUTES, EN)
    await api.post(WOS, EN)

    async def routing_of(no: str) -> tuple[str | None, str]:
        w = (await api.get(f"/work-orders/{no}", PL)).data
        return w["routingCode"], w["meta"]["erp"]["routing"]["mode"]

    assert await routing_of("ERP-WO-3001") == ("ERP-RT-3001", "product_code")  # unique ERP match
    assert await routing_of("ERP-WO-3002") == ("ERP-RT-3002", "routing_code")
    assert await routing_of("ERP-WO-1001") == ("PCBA-STD-V1", "routing_code")

    # MES routings are preferred over ERP ones for the product; two candidates of one kind = no match.
    body = {
        "name": "MES 3001",
        "productCode": "P-3001",
        "processType": "SMT",
        "steps": [{"stepNo": 1, "operationCode": "PRINTING", "stationGroupCode": "SMT-LINE-A"}],
    }
    assert (await api.post("/routes", EN, json={**body, "code": "MES-3001"})).status == 200
    for no, product in (("ERP-WO-4001", "P-3001"), ("ERP-WO-4002", "P-4002"), ("ERP-WO-4003", "P-NONE")):
        up.state.put(
            "erp",
            "work-orders",
            {"woNo": no, "productCode": product, "plannedQty": 5, "status": "1", "updatedAt": at(200)},
        )
    for code in ("MES-4002-A", "MES-4002-B"):
        assert (
            await api.post("/routes", EN, json={**body, "code": code, "productCode": "P-4002"})
        ).status == 200
    await api.post(WOS, EN)
    assert await routing_of("ERP-WO-4001") == ("MES-3001", "product_code")
    assert await routing_of("ERP-WO-4002") == (None, "unresolved")
    assert await routing_of("ERP-WO-4003") == (None, "unresolved")

    # An unknown routingCode leaves the routing alone; a planner's override wins over ERP for good.
    item = next(x for x in up.state.items("erp", "work-orders") if x["woNo"] == "ERP-WO-3002")
    up.state.put("erp", "work-orders", {**item, "routingCode": "NO-SUCH-ROUTE", "updatedAt": at(300)})
    await api.post(WOS, EN)
    assert await routing_of("ERP-WO-3002") == ("ERP-RT-3002", "not_found")
    r = await api.patch("/work-orders/ERP-WO-3002/routing", PL, json={"routingCode": "PCBA-DIP-V1"})
    assert r.status == 200, r.body
    up.state.put("erp", "work-orders", {**item, "updatedAt": at(301)})  # ERP insists on ERP-RT-3002
    await api.post(WOS, EN)
    assert await routing_of("ERP-WO-3002") == ("PCBA-DIP-V1", "override")

    # An ERP route that is no longer effective is not matched by product.
    expired = route("ERP-RT-5001", "P-5001", "SMT", [(10, "PRINTING", "WC-SMT-A")], 400)
    expired["header"] |= {"effectiveFrom": at(-1000), "effectiveTo": at(-500)}
    up.state.put("erp", "routes", expired)
    up.state.put(
        "erp",
        "work-orders",
        {"woNo": "ERP-WO-5001", "productCode": "P-5001", "plannedQty": 1, "updatedAt": at(401)},
    )
    await api.post(ROUTES, EN)
    await api.post(WOS, EN)
    assert await routing_of("ERP-WO-5001") == (None, "unresolved")


async def test_master_data_and_item_rejections(env: Env) -> None:
    api, up = env.api, env.up
    up.state.put("erp", "materials", {"materialCode": "BAD CODE", "name": "x", "updatedAt": at(50)})
    up.state.put(
        "erp",
        "boms",
        {"parentCode": "P-9", "childCode": "MAT-001", "qty": 3, "denominator": 4, "updatedAt": at(51)},
        {"parentCode": "P-9", "childCode": "P-9", "qty": 1, "updatedAt": at(52)},
    )
    r = (await api.post(MATERIALS, EN)).data
    assert r["summary"]["received"] == 5 and r["summary"]["created"] == 1 and r["summary"]["updated"] == 3
    assert r["summary"]["rejected"] == [
        {"key": "BAD CODE", "code": "ITEM_INVALID", "message": r["summary"]["rejected"][0]["message"]}
    ]
    assert "materialCode" in r["summary"]["rejected"][0]["message"]
    mats = {m["code"]: m for m in (await api.get("/materials", EN, params={"pageSize": 50})).data["items"]}
    assert mats["MAT-004"]["sourceSystem"] == "ERP" and mats["MAT-001"]["sourceSystem"] == "ERP"
    boms = (await api.post(BOMS, EN)).data
    assert [x["code"] for x in boms["summary"]["rejected"]] == ["BOM_ITEM_SELF_REFERENCE"]
    items = (await api.get("/boms", EN, params={"parentCode": "P-9"})).data["items"]
    assert [(b["childCode"], b["qty"]) for b in items] == [("MAT-001", 0.75)]
    centers = (await api.post(CENTERS, EN)).data
    assert centers["summary"]["created"] == 2
    listed = (await api.get("/work-centers", EN)).data["items"]
    assert sorted((w["code"], w["department"]) for w in listed) == [
        ("WC-DIP-A", "D-DIP"),
        ("WC-SMT-A", "D-SMT"),
    ]

    # Routes: an MES routing code cannot be taken over, repeated step numbers are refused.
    up.state.put("erp", "routes", route("PCBA-STD-V1", "P-1001", "SMT", [(1, "PRINTING", "WC-SMT-A")], 60))
    dup = route("ERP-RT-DUP", "P-1", "SMT", [(10, "PRINTING", "WC-SMT-A"), (10, "SPI", "WC-SMT-A")], 61)
    backwards = route("ERP-RT-BACK", "P-1", "SMT", [(10, "PRINTING", "WC-SMT-A")], 62)
    backwards["header"] |= {"effectiveFrom": at(100), "effectiveTo": at(50)}
    up.state.put("erp", "routes", dup, backwards)
    r = (await api.post(ROUTES, EN)).data
    assert r["summary"]["created"] == 2
    assert sorted((x["key"], x["code"]) for x in r["summary"]["rejected"]) == [
        ("ERP-RT-BACK", "ROUTING_EFFECTIVE_RANGE_INVALID"),
        ("ERP-RT-DUP", "ROUTING_STEP_DUPLICATE"),
        ("PCBA-STD-V1", "ROUTING_SOURCE_CONFLICT"),
    ]
    std = (await api.get("/routes/PCBA-STD-V1", EN)).data
    assert std["sourceSystem"] == "MES" and len(std["steps"]) == 5
    assert (await api.get("/routes/ERP-RT-DUP", EN)).status == 404


async def test_concurrent_pulls_of_one_entity_do_not_both_apply(env: Env) -> None:
    api, up = env.api, env.up
    assert (await api.post(MATERIALS, EN)).status == 200
    up.state.put("erp", "materials", {"materialCode": "MAT-777", "name": "New", "updatedAt": at(500)})
    up.state.delay_seconds = 1.0  # both requests read the cursor before either one applies
    first, second = await asyncio.gather(api.post(MATERIALS, EN), api.post(MATERIALS, EN))
    assert sorted([first.status, second.status]) == [200, 409], (first.body, second.body)
    loser = first if first.status == 409 else second
    assert loser.code == "SYNC_IN_PROGRESS"
    assert [m.status for m in await messages(env.db, "MATERIAL")] == ["SUCCESS", "SUCCESS"]


async def test_status_lists_every_job(env: Env) -> None:
    api = env.api
    await api.post(CENTERS, EN)
    data = (await api.get("/integration/status", EN)).data
    assert data["scheduler"] == {"enabled": False, "intervalSeconds": 0}
    assert [(j["sourceSystem"], j["entityType"]) for j in data["jobs"]] == [
        ("ERP", "WORK_CENTER"),
        ("ERP", "MATERIAL"),
        ("ERP", "BOM"),
        ("ERP", "ROUTING"),
        ("ERP", "WORK_ORDER"),
        ("TPM", "EQUIPMENT"),
        ("TPM", "MAINTENANCE_TASK"),
        ("TPM", "STATUS_LOG"),
    ]
    assert all(j["configured"] for j in data["jobs"])
    wc = data["jobs"][0]
    assert wc["cursor"]["lastSyncAt"] == at(1) and wc["lastCron"] is None
    assert wc["lastMessage"]["status"] == "SUCCESS" and wc["lastMessage"]["error"] is None
    assert all(j["cursor"] is None and j["lastMessage"] is None for j in data["jobs"][1:])


async def test_builtin_mock_endpoints(
    env: Env, aiohttp_client: Any, settings: Settings, database: Database
) -> None:
    r = await env.api.get("/integration/mock/erp/routes", EN, params={"limit": 1})
    assert r.status == 200 and r.data["entityType"] == "ROUTING" and r.data["cursor"]["hasMore"] is True
    assert [i["header"]["routeNo"] for i in r.data["items"]] == ["ERP-RT-3001"]
    tpm = (await env.api.get("/integration/mock/tpm/equipment", EN)).data
    assert {"ST-PRINT-01", "ST-B-ICT-01"} <= {i["equipmentCode"] for i in tpm["items"]}
    expect(await env.api.get("/integration/mock/erp/nothing", EN), 404, "NOT_FOUND")
    assert (await env.api.get("/integration/mock/erp/routes", Q)).status == 403
    off = await app_for(aiohttp_client, settings.model_copy(update={"allow_demo_seed": False}), database)
    expect(await off.get("/integration/mock/erp/routes", EN), 404, "NOT_FOUND")


async def test_mock_server_control_endpoints(aiohttp_server: Any, aiohttp_client: Any) -> None:
    client = await aiohttp_client(await aiohttp_server(create_mock_app(api_key=KEY)))
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (await client.get("/erp/routes")).status == 401
    assert (await client.get("/erp/routes", headers=auth, params={"since": "yesterday"})).status == 400
    assert (await client.get("/erp/nothing", headers=auth)).status == 404
    item = {"materialCode": "M-1", "name": "One", "updatedAt": at(1)}
    assert (await client.post("/_control/data", json={"erp": {"materials": [item]}})).status == 200
    assert (await client.post("/_control/data", json={"erp": {"nothing": []}})).status == 400
    page = await (await client.get("/erp/materials", headers=auth)).json()
    assert page["items"] == [item] and page["cursor"] == {"nextSyncAt": at(1), "hasMore": False}
    failures = {"failNext": 1, "status": 503, "bodies": ["{oops"], "paths": ["/tpm/equipment"]}
    assert (await client.post("/_control/failures", json=failures)).status == 200
    assert (await client.get("/erp/materials", headers=auth)).status == 503
    assert await (await client.get("/erp/materials", headers=auth)).text() == "{oops"
    assert (await client.get("/tpm/equipment", headers=auth)).status == 503
    log = await (await client.get("/_control/requests")).json()
    assert [r["path"] for r in log["requests"]][-3:] == ["/erp/materials", "/erp/materials", "/tpm/equipment"]
