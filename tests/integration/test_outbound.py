"""Outbound ERP completion feedback through the transactional outbox (domain.md §9 Push, §3 MesEvent).

The ERP is a real aiohttp server on a free port; the worker's one-pass `deliver_due` is driven with a moving
clock, so retries and backoff are exercised without waiting."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import select, update

from central.api.app import create_app
from central.api.handlers import ROUTERS
from central.api.handlers import outbound as handler
from central.config import Settings
from central.db.engine import Database, create_database
from central.db.models import (
    AuditEvent,
    ExecutableRouteVersion,
    IntegrationMessage,
    MesEvent,
    Routing,
    Run,
)
from central.domain.clock import iso, utcnow
from central.integration.outbound_worker import deliver_due, run_outbound_worker
from central.services import outbound
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.flows import EN, OP, PL, SMT_STATIONS, Q, authorized_run, move, released_run, seed, set_run_status

ERP_PATH = "/api/mes/outbound/erp/feedback"
EVENTS = "/integration/outbound/events"
BASE, CAP = 10.0, 600.0  # backoff seconds used by these tests


def completion(run_no: str) -> str:
    return f"/integration/outbound/erp/runs/{run_no}/completion"


def expect(r: Any, status: int, code: str) -> None:
    assert (r.status, r.code) == (status, code), r.body


@dataclass
class Receiver:
    """A stand-in ERP: records every request; fails the first `fail_first` ones, or all while `down`."""

    url: str = ""
    fail_first: int = 0
    down: bool = False
    latency: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path,
                "key": request.headers.get("Idempotency-Key"),
                "auth": request.headers.get("Authorization"),
                "body": await request.json(),
            }
        )
        if self.latency:  # an ERP that takes a moment lets two workers overlap
            await asyncio.sleep(self.latency)
        if self.down or len(self.requests) <= self.fail_first:
            return web.json_response({"error": "ERP busy"}, status=503)
        return web.json_response({"accepted": True})


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    rec = Receiver()
    app = web.Application()
    app.router.add_post(ERP_PATH, rec.handle)
    server = await aiohttp_server(app)
    rec.url = str(server.make_url("")).rstrip("/")
    return rec


@pytest.fixture
def erp_settings(settings: Settings, receiver: Receiver) -> Settings:
    return settings.model_copy(
        update={
            "outbound_feedback_enabled": True,
            "outbound_erp_base_url": receiver.url,
            "outbound_erp_api_key": SecretStr("erp-secret"),
            "outbound_max_attempts": 5,
            "outbound_backoff_base_seconds": BASE,
            "outbound_backoff_max_seconds": CAP,
            "outbound_poll_seconds": 0.05,
        }
    )


@pytest.fixture
async def demo(aiohttp_client: Any, erp_settings: Settings, database: Database) -> Api:
    """The demo plant and an app with outbound feedback enabled (router added only until it is in ROUTERS)."""
    await seed(database)
    extra = [] if handler.router in ROUTERS else [handler.router]
    return Api(
        await aiohttp_client(
            create_app(
                erp_settings.model_copy(update={"run_workers": False}), database=database, extra_routers=extra
            )
        )
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def completed_run(api: Api, database: Database) -> dict[str, Any]:
    """A one-unit LINE-A run taken through the five SMT stations: it completes on the last track-out."""
    flow = await authorized_run(api, database, qty=1)
    for station in SMT_STATIONS:
        r = await move(api, station, flow["sns"][0], flow)
        assert r.status == 200, r.body
    return flow


async def terminal_runs(api: Api, database: Database, n: int) -> list[str]:
    """n runs marked COMPLETED directly (their history does not matter to delivery)."""
    runs = []
    for _ in range(n):
        flow = await released_run(api)
        await set_run_status(database, flow["runNo"], "COMPLETED")
        runs.append(flow["runNo"])
    return runs


async def event_of(database: Database, run_no: str) -> MesEvent | None:
    async with database.reader() as s:
        row: MesEvent | None = await s.scalar(
            select(MesEvent).where(MesEvent.idempotency_key == outbound.idempotency_key(run_no))
        )
        return row


async def events(database: Database) -> list[MesEvent]:
    async with database.reader() as s:
        rows = await s.scalars(
            select(MesEvent).where(MesEvent.event_type == "OUTBOUND_FEEDBACK").order_by(MesEvent.id)
        )
        return list(rows)


async def log_rows(database: Database, key: str) -> list[IntegrationMessage]:
    async with database.reader() as s:
        rows = await s.scalars(
            select(IntegrationMessage)
            .where(IntegrationMessage.dedupe_key == key)
            .order_by(IntegrationMessage.id)
        )
        return list(rows)


async def audit_statuses(database: Database, action: str) -> list[tuple[str, str | None]]:
    async with database.reader() as s:
        rows = await s.execute(
            select(AuditEvent.status, AuditEvent.error_code)
            .where(AuditEvent.action == action)
            .order_by(AuditEvent.id)
        )
        return [(st, code) for st, code in rows.all()]


async def expected_payload(
    database: Database, flow: dict[str, Any], unit_stats: dict[str, int]
) -> dict[str, Any]:
    """RUN_COMPLETION_V1 of domain.md §9, field by field, from the database rows."""
    run_no = flow["runNo"]
    async with database.reader() as s:
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        assert run is not None
        version = await s.get(ExecutableRouteVersion, run.route_version_id)
        assert version is not None
        routing = await s.get(Routing, version.routing_id)
        assert routing is not None
    return {
        "schemaVersion": 1,
        "idempotencyKey": f"mes-event:OUTBOUND_FEEDBACK:ERP:RUN_COMPLETION_V1:{run_no}",
        "targetSystem": "ERP",
        "messageType": "RUN_COMPLETION_V1",
        "occurredAt": iso(run.ended_at),
        "businessKey": {"runNo": run_no, "woNo": flow["woNo"], "productCode": "P-1001", "lineCode": "LINE-A"},
        "data": {
            "run": {
                "runNo": run_no,
                "status": run.status,
                "planQty": run.plan_qty,
                "startedAt": iso(run.started_at),
                "endedAt": iso(run.ended_at),
            },
            "route": {
                "code": routing.code,
                "sourceSystem": routing.source_system,
                "sourceKey": routing.source_key,
                "routeVersionId": version.id,
                "routeVersionNo": version.version_no,
                "routeVersionCompiledAt": iso(version.compiled_at),
            },
            "stats": {
                "unitStats": unit_stats,
                "goodQty": unit_stats.get("DONE", 0),
                "scrapQty": unit_stats.get("SCRAPPED", 0),
            },
        },
    }


# ---- enqueue ------------------------------------------------------------------------------------------


async def test_completion_enqueues_run_completion_v1_exactly_and_delivers_it(
    demo: Api, database: Database, erp_settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    flow = await completed_run(demo, database)
    event = await event_of(database, flow["runNo"])
    assert event is not None, "the run's completion enqueued its feedback in the same transaction"
    expected = await expected_payload(database, flow, {"DONE": 1})
    assert event.payload == expected
    assert (event.status, event.attempts, event.max_attempts) == ("PENDING", 0, 5)
    assert (event.entity_type, event.entity_id) == ("RUN", flow["runNo"])
    assert event.retention_until is not None
    assert timedelta(days=179) < event.retention_until - event.created_at <= timedelta(days=180)
    assert iso(event.occurred_at) == expected["occurredAt"]

    r = await demo.get(EVENTS, EN)
    assert r.status == 200, r.body
    [item] = r.data["items"]
    assert item["eventId"] == event.id and item["payload"] == expected and item["deadLetter"] is False

    assert await deliver_due(database, erp_settings, http, utcnow()) == 1
    [req] = receiver.requests
    assert req["path"] == ERP_PATH
    assert req["body"] == expected
    assert req["key"] == expected["idempotencyKey"]
    assert req["auth"] == "Bearer erp-secret"
    done = await event_of(database, flow["runNo"])
    assert done is not None
    assert (done.status, done.attempts, done.next_attempt_at, done.error) == ("COMPLETED", 1, None, None)
    assert done.processed_at is not None


async def test_manual_enqueue_refuses_a_run_that_is_not_terminal(demo: Api, database: Database) -> None:
    flow = await released_run(demo)
    expect(await demo.post(completion(flow["runNo"]), EN), 409, "RUN_NOT_TERMINAL")
    expect(await demo.post(completion("RUN-NOPE"), EN), 404, "RUN_NOT_FOUND")
    assert await events(database) == []
    assert await audit_statuses(database, "OUTBOUND_ERP_RUN_COMPLETION_ENQUEUE") == [
        ("FAIL", "RUN_NOT_TERMINAL"),
        ("FAIL", "RUN_NOT_FOUND"),
    ]


async def test_reenqueue_keeps_the_event_id_and_a_delivered_event_is_not_sent_again(
    demo: Api, database: Database, erp_settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    [run_no] = await terminal_runs(demo, database, 1)
    first = await demo.post(completion(run_no), EN)
    assert first.status == 200, first.body
    assert first.data == {
        "eventId": first.data["eventId"],
        "idempotencyKey": f"mes-event:OUTBOUND_FEEDBACK:ERP:RUN_COMPLETION_V1:{run_no}",
        "status": "PENDING",
    }
    again = await demo.post(completion(run_no), EN)
    assert again.status == 200 and again.data == first.data, again.body
    assert len(await events(database)) == 1

    assert await deliver_due(database, erp_settings, http, utcnow()) == 1
    third = await demo.post(completion(run_no), EN)
    assert third.status == 200, third.body
    assert (third.data["eventId"], third.data["status"]) == (first.data["eventId"], "COMPLETED")
    assert await deliver_due(database, erp_settings, http, utcnow() + timedelta(days=1)) == 0
    assert len(receiver.requests) == 1
    assert await audit_statuses(database, "OUTBOUND_ERP_RUN_COMPLETION_ENQUEUE") == [("SUCCESS", None)] * 3


async def test_automatic_enqueue_only_when_feedback_is_enabled(
    demo: Api, api: Api, database: Database
) -> None:
    """`demo` runs with outbound feedback enabled, `api` (same database) with the default: disabled."""
    disabled = await completed_run(api, database)
    assert (await api.get(f"/runs/{disabled['runNo']}", PL)).data["status"] == "COMPLETED"
    assert await event_of(database, disabled["runNo"]) is None
    enabled = await completed_run(demo, database)
    assert (await demo.get(f"/runs/{enabled['runNo']}", PL)).data["status"] == "COMPLETED"
    assert await event_of(database, enabled["runNo"]) is not None
    # Manual enqueue works whatever the switch: the switch governs automatic enqueue and delivery.
    r = await api.post(completion(disabled["runNo"]), EN)
    assert r.status == 200 and r.data["status"] == "PENDING", r.body


async def _held(database: Database, run_no: str) -> None:
    """ON_HOLD after a failed OQC (the OQC workflow has its own tests): one unit DONE, the others SCRAPPED."""
    from central.db.models import Inspection, Unit

    async with database.writer() as s, s.begin():
        run = await s.scalar(select(Run).where(Run.run_no == run_no))
        assert run is not None
        run.status, run.started_at = "ON_HOLD", utcnow()
        units = (await s.scalars(select(Unit).where(Unit.run_id == run.id).order_by(Unit.id))).all()
        for i, u in enumerate(units):
            u.status, u.current_step_no = ("DONE", 5) if i == 0 else ("SCRAPPED", 3)
        s.add(
            Inspection(
                run_id=run.id,
                type="OQC",
                status="FAIL",
                sample_qty=1,
                passed_qty=0,
                failed_qty=1,
                decided_by="quality",
                decided_at=utcnow(),
                data={"sampledUnitIds": [units[0].id]},
            )
        )


async def test_mrb_scrap_and_rework_enqueue_the_held_run(demo: Api, database: Database) -> None:
    scrap = await authorized_run(demo, database, qty=3)
    await _held(database, scrap["runNo"])
    r = await demo.post(
        f"/runs/{scrap['runNo']}/mrb-decision", Q, json={"decision": "SCRAP", "reason": "solder voids"}
    )
    assert r.status == 200, r.body
    event = await event_of(database, scrap["runNo"])
    assert event is not None
    assert event.payload["data"]["run"]["status"] == "SCRAPPED"
    assert event.payload["data"]["stats"] == {"unitStats": {"SCRAPPED": 3}, "goodQty": 0, "scrapQty": 3}
    assert event.payload == await expected_payload(database, scrap, {"SCRAPPED": 3})

    rework = await authorized_run(demo, database, qty=2)
    await _held(database, rework["runNo"])
    r = await demo.post(
        f"/runs/{rework['runNo']}/mrb-decision",
        Q,
        json={"decision": "REWORK", "reworkType": "FULL_PREP", "reason": "reflow again"},
    )
    assert r.status == 200, r.body
    event = await event_of(database, rework["runNo"])
    assert event is not None
    assert event.payload["data"]["run"]["status"] == "CLOSED_REWORK"
    # The units moved to the rework run, which reports them when it completes.
    assert event.payload["data"]["stats"] == {"unitStats": {}, "goodQty": 0, "scrapQty": 0}
    assert await event_of(database, r.data["reworkRunNo"]) is None


# ---- delivery -----------------------------------------------------------------------------------------


def _within(value: datetime | None, low: datetime, high: datetime) -> bool:
    return value is not None and low <= value <= high


async def test_receiver_failing_three_times_gets_it_once_with_a_stable_idempotency_key(
    demo: Api, database: Database, erp_settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.fail_first = 3
    [run_no] = await terminal_runs(demo, database, 1)
    assert (await demo.post(completion(run_no), EN)).status == 200
    key = outbound.idempotency_key(run_no)
    now = utcnow()
    for attempt in (1, 2, 3):
        assert await deliver_due(database, erp_settings, http, now) == 1
        event = await event_of(database, run_no)
        assert event is not None
        assert (event.status, event.attempts) == ("FAILED", attempt)
        assert event.error is not None and event.error.startswith("HTTP 503")
        # now + [base/2, min(cap, base·2^(attempt−1))], plus the pass's own running time
        ceiling = min(CAP, BASE * 2 ** (attempt - 1))
        slack = timedelta(seconds=5)
        assert _within(
            event.next_attempt_at, now + timedelta(seconds=BASE / 2), now + timedelta(seconds=ceiling) + slack
        )
        assert await deliver_due(database, erp_settings, http, now) == 0, "not due before nextAttemptAt"
        assert event.next_attempt_at is not None
        now = event.next_attempt_at
    assert await deliver_due(database, erp_settings, http, now) == 1
    event = await event_of(database, run_no)
    assert event is not None
    assert (event.status, event.attempts, event.next_attempt_at) == ("COMPLETED", 4, None)
    assert len(receiver.requests) == 4
    assert {r["key"] for r in receiver.requests} == {key}
    assert all(r["body"] == event.payload for r in receiver.requests)
    assert [m.status for m in await log_rows(database, key)] == [
        "RETRYING",
        "RETRYING",
        "RETRYING",
        "SUCCESS",
    ]
    m = (await log_rows(database, key))[0]
    assert (m.direction, m.system, m.entity_type, m.business_key) == ("OUT", "ERP", "RUN_COMPLETION", run_no)
    assert m.meta["eventId"] == event.id and m.meta["attempt"] == 1 and m.meta["httpStatus"] == 503
    assert m.error is not None and "ERP busy" in m.error and m.payload == event.payload


async def test_always_failing_receiver_dead_letters_then_retry_revives_it(
    demo: Api,
    database: Database,
    settings: Settings,
    erp_settings: Settings,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    receiver.down = True
    [run_no] = await terminal_runs(demo, database, 1)
    event_id = (await demo.post(completion(run_no), EN)).data["eventId"]
    now = utcnow()
    for _ in range(5):  # max_attempts of these settings
        assert await deliver_due(database, erp_settings, http, now) == 1
        now += timedelta(seconds=CAP + 10)
    event = await event_of(database, run_no)
    assert event is not None
    assert (event.status, event.attempts, event.next_attempt_at) == ("FAILED", 5, None)
    assert await deliver_due(database, erp_settings, http, now + timedelta(days=30)) == 0
    statuses = [m.status for m in await log_rows(database, outbound.idempotency_key(run_no))]
    assert statuses == ["RETRYING"] * 4 + ["FAILED"]

    r = await demo.get(EVENTS, EN, params={"status": "FAILED"})
    assert [(i["eventId"], i["deadLetter"], i["nextAttemptAt"]) for i in r.data["items"]] == [
        (event_id, True, None)
    ]

    r = await demo.post(f"{EVENTS}/{event_id}/retry", EN)
    assert r.status == 200, r.body
    assert (r.data["eventId"], r.data["status"]) == (event_id, "PENDING")
    assert r.data["nextAttemptAt"].endswith("Z")
    revived = await event_of(database, run_no)
    assert revived is not None and (revived.status, revived.attempts) == ("PENDING", 0)

    receiver.down = False
    assert await deliver_due(database, erp_settings, http, utcnow()) == 1
    delivered = await event_of(database, run_no)
    assert delivered is not None and (delivered.status, delivered.attempts) == ("COMPLETED", 1)
    assert len(receiver.requests) == 6
    assert {r["key"] for r in receiver.requests} == {outbound.idempotency_key(run_no)}
    expect(await demo.post(f"{EVENTS}/{event_id}/retry", EN), 409, "EVENT_NOT_RETRYABLE")
    assert await audit_statuses(database, "OUTBOUND_EVENT_RETRY") == [
        ("SUCCESS", None),
        ("FAIL", "EVENT_NOT_RETRYABLE"),
    ]


async def test_retry_of_an_unknown_event_is_404(demo: Api, database: Database) -> None:
    expect(await demo.post(f"{EVENTS}/999999/retry", EN), 404, "EVENT_NOT_FOUND")
    expect(await demo.post(f"{EVENTS}/abc/retry", EN), 404, "EVENT_NOT_FOUND")
    # Other outbox events (here a track-in event) are not outbound feedback.
    async with database.writer() as s, s.begin():
        other = MesEvent(
            event_type="TRACK_IN",
            status="FAILED",
            occurred_at=utcnow(),
            idempotency_key="mes-event:TRACK_IN:x",
        )
        s.add(other)
        await s.flush()
        other_id = other.id
    expect(await demo.post(f"{EVENTS}/{other_id}/retry", EN), 404, "EVENT_NOT_FOUND")
    assert (await demo.get(EVENTS, EN)).data["items"] == []


async def test_two_concurrent_workers_deliver_each_event_once(
    demo: Api, database: Database, erp_settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.latency = 0.01
    runs = await terminal_runs(demo, database, 6)
    for run_no in runs:
        assert (await demo.post(completion(run_no), EN)).status == 200
    # Two Database objects = two connection pools, as two central processes on one database would have.
    first = create_database(erp_settings.database_url, pool_size=2)
    second = create_database(erp_settings.database_url, pool_size=2)
    try:
        now = utcnow()
        made = await asyncio.gather(
            deliver_due(first, erp_settings, http, now), deliver_due(second, erp_settings, http, now)
        )
    finally:
        await first.dispose()
        await second.dispose()
    assert sum(made) == 6
    assert Counter(r["key"] for r in receiver.requests) == {outbound.idempotency_key(n): 1 for n in runs}
    rows = await events(database)
    assert [(e.status, e.attempts) for e in rows] == [("COMPLETED", 1)] * 6
    for run_no in runs:
        assert [m.status for m in await log_rows(database, outbound.idempotency_key(run_no))] == ["SUCCESS"]


async def test_an_event_stuck_in_processing_is_taken_back_after_the_claim_timeout(
    demo: Api, database: Database, erp_settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    stuck, busy = await terminal_runs(demo, database, 2)
    for run_no in (stuck, busy):
        assert (await demo.post(completion(run_no), EN)).status == 200
    now = utcnow()
    async with database.writer() as s, s.begin():
        for run_no, ago in ((stuck, 10), (busy, 1)):
            await s.execute(
                update(MesEvent)
                .where(MesEvent.idempotency_key == outbound.idempotency_key(run_no))
                .values(status="PROCESSING", claimed_at=now - timedelta(minutes=ago))
            )
    assert await deliver_due(database, erp_settings, http, now, claim_timeout=timedelta(minutes=5)) == 1
    assert [r["key"] for r in receiver.requests] == [outbound.idempotency_key(stuck)]
    taken_back, in_flight = await event_of(database, stuck), await event_of(database, busy)
    assert taken_back is not None and taken_back.status == "COMPLETED"
    assert in_flight is not None and in_flight.status == "PROCESSING"


async def test_a_late_result_of_a_taken_back_event_does_not_overwrite_it(
    demo: Api, database: Database
) -> None:
    [run_no] = await terminal_runs(demo, database, 1)
    assert (await demo.post(completion(run_no), EN)).status == 200
    now = utcnow()
    async with UnitOfWork(database.writer) as uow:
        claim = await outbound.claim_next(uow, now, now - timedelta(minutes=5))
    assert claim is not None
    async with UnitOfWork(database.writer) as uow:  # another worker took it back meanwhile
        retaken = await outbound.claim_next(uow, now + timedelta(minutes=6), now + timedelta(minutes=1))
    assert retaken is not None and retaken.reclaimed and retaken.event_id == claim.event_id
    late = outbound.Attempt(False, "http://erp", 503, "HTTP 503", 5)
    async with UnitOfWork(database.writer) as uow:
        status = await outbound.record_attempt(uow, claim, late, now, backoff_base=BASE, backoff_max=CAP)
    assert status == "FENCED"
    event = await event_of(database, run_no)
    assert event is not None
    assert (event.status, event.attempts, event.claimed_at) == ("PROCESSING", 0, retaken.claimed_at)
    [m] = await log_rows(database, outbound.idempotency_key(run_no))
    assert (m.status, m.meta["fenced"]) == ("FAILED", True)


async def test_an_unreachable_erp_is_a_failed_attempt(
    demo: Api, database: Database, erp_settings: Settings, http: aiohttp.ClientSession
) -> None:
    [run_no] = await terminal_runs(demo, database, 1)
    assert (await demo.post(completion(run_no), EN)).status == 200
    closed_port = erp_settings.model_copy(update={"outbound_erp_base_url": "http://127.0.0.1:9"})
    assert await deliver_due(database, closed_port, http, utcnow()) == 1
    event = await event_of(database, run_no)
    assert event is not None and (event.status, event.attempts) == ("FAILED", 1)
    assert event.error and event.next_attempt_at is not None
    [m] = await log_rows(database, outbound.idempotency_key(run_no))
    assert (m.status, m.meta["httpStatus"]) == ("RETRYING", None)


async def test_worker_loop_delivers_until_stopped_and_idles_when_disabled(
    demo: Api, database: Database, settings: Settings, erp_settings: Settings, receiver: Receiver
) -> None:
    stop = asyncio.Event()
    # Disabled (the default settings): returns at once.
    await asyncio.wait_for(run_outbound_worker(database, settings, stop), 5)

    [run_no] = await terminal_runs(demo, database, 1)
    assert (await demo.post(completion(run_no), EN)).status == 200
    task = asyncio.create_task(run_outbound_worker(database, erp_settings, stop))
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        event = await event_of(database, run_no)
        if event is not None and event.status == "COMPLETED":
            break
        assert asyncio.get_running_loop().time() < deadline, "the worker did not deliver in time"
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(receiver.requests) == 1


# ---- list and permissions -----------------------------------------------------------------------------


async def test_event_list_filters_by_status_and_limit(
    demo: Api, database: Database, erp_settings: Settings, http: aiohttp.ClientSession
) -> None:
    runs = await terminal_runs(demo, database, 3)
    ids = [(await demo.post(completion(n), EN)).data["eventId"] for n in runs]
    async with database.writer() as s, s.begin():
        await s.execute(update(MesEvent).where(MesEvent.id == ids[0]).values(status="COMPLETED"))
    r = await demo.get(EVENTS, EN, params={"limit": "2"})
    assert r.status == 200 and [i["eventId"] for i in r.data["items"]] == [ids[2], ids[1]]
    r = await demo.get(EVENTS, EN, params={"status": "COMPLETED"})
    assert [i["eventId"] for i in r.data["items"]] == [ids[0]]
    r = await demo.get(EVENTS, EN, params={"status": "pending,COMPLETED"})
    assert sorted(i["eventId"] for i in r.data["items"]) == sorted(ids)
    assert set(r.data) == {"items"}
    for bad in ({"limit": "0"}, {"limit": "201"}, {"status": "DELIVERED"}, {"limit": "many"}):
        expect(await demo.get(EVENTS, EN, params=bad), 422, "VALIDATION_FAILED")


async def test_outbound_endpoints_need_system_integration(demo: Api, database: Database) -> None:
    [run_no] = await terminal_runs(demo, database, 1)
    for who in (PL, OP):
        expect(await demo.post(completion(run_no), who), 403, "FORBIDDEN")
        expect(await demo.get(EVENTS, who), 403, "FORBIDDEN")
        expect(await demo.post(f"{EVENTS}/1/retry", who), 403, "FORBIDDEN")
    assert await events(database) == []


async def test_the_server_delivers_on_its_own_when_feedback_is_enabled(
    aiohttp_client: Any, erp_settings: Settings, database: Database, receiver: Receiver
) -> None:
    """The worker runs inside `mes-central serve` (app background loop): a completed run reaches the ERP
    without any manual call."""
    await seed(database)
    api = Api(await aiohttp_client(create_app(erp_settings, database=database)))
    flow = await completed_run(api, database)
    for _ in range(200):
        event = await event_of(database, flow["runNo"])
        if event is not None and event.status == "COMPLETED":
            break
        await asyncio.sleep(0.05)
    assert event is not None and event.status == "COMPLETED"
    assert [r["body"]["businessKey"]["runNo"] for r in receiver.requests] == [flow["runNo"]]
