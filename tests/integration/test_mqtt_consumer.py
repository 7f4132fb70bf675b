"""Central's MQTT consumer against a real broker (edge.md delivery rules, E4, E5): batches applied through the
same services as REST, acks per event, duplicates, refusals, malformed payloads, edge status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import event, func, select, update

from central.api import keys
from central.config import Settings
from central.db.engine import Database
from central.db.models import EdgeEventReceipt, IntegrationMessage, Track, Unit
from central.mqtt import parked
from shared import topics
from tests.client import Api
from tests.flows import EN, PL, Q, pass_readiness, released_run, seed
from tests.ingest_helpers import line_b_run
from tests.shared_broker import broker_url

EDGE = "edge-line-b"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A topic prefix per test keeps tests apart on a shared broker.
    return settings.model_copy(
        update={"mqtt_url": broker_url(), "mqtt_topic_prefix": f"t{uuid.uuid4().hex[:10]}"}
    )


class EdgeClient:
    """A stand-in for the edge agent's MQTT side: publishes batches, collects acks."""

    def __init__(self, url: str, prefix: str, edge_id: str = EDGE) -> None:
        from urllib.parse import urlsplit

        self.url, self.prefix, self.edge_id = url, prefix, edge_id
        self.acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        p = urlsplit(url)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.ready = asyncio.Event()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self.loop.call_soon_threadsafe(self.ready.set)
        self.c.on_message = lambda _c, _u, m: self.loop.call_soon_threadsafe(
            self.acks.put_nowait, orjson.loads(m.payload)
        )
        self.c.connect(p.hostname or "127.0.0.1", p.port or 1883)
        self.c.loop_start()

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe(topics.acks(self.edge_id, self.prefix), qos=1)

    def publish_raw(self, payload: bytes, edge_id: str | None = None) -> None:
        self.c.publish(topics.events(edge_id or self.edge_id, self.prefix), payload, qos=1).wait_for_publish(
            5
        )

    def publish(
        self, events: list[dict[str, Any]], *, batch_id: str | None = None, edge_id: str | None = None
    ) -> str:
        batch_id = batch_id or uuid.uuid4().hex
        body = {
            "schemaVersion": 1,
            "edgeId": edge_id or self.edge_id,
            "lineCode": "LINE-ING",
            "batchId": batch_id,
            "sentAt": now(),
            "events": events,
        }
        self.publish_raw(orjson.dumps(body))
        return batch_id

    async def ack(self, wait: float = 15) -> dict[str, Any]:
        return await asyncio.wait_for(self.acks.get(), wait)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def ingest_event(seq: int, sn: str, run_no: str, *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "eventId": event_id or uuid.uuid4().hex,
        "seq": seq,
        "kind": "INGEST",
        "occurredAt": now(),
        "stationCode": "ST-AUTO-01",
        "payload": {
            "eventType": "AUTO",
            "runNo": run_no,
            "payload": {
                "stationCode": "ST-AUTO-01",
                "sn": sn,
                "result": "PASS",
                "measurements": [{"name": "TEMP-AUTO", "value": 55.5, "unit": "C", "judge": "PASS"}],
            },
        },
    }


@pytest.fixture
async def edge(api: Api, database: Database, client: Any, settings: Settings) -> AsyncIterator[EdgeClient]:
    await seed(database)
    consumer = client.app[keys.MQTT]
    await asyncio.wait_for(consumer.connected.wait(), 10)
    e = EdgeClient(settings.mqtt_url, settings.mqtt_topic_prefix)
    await asyncio.wait_for(e.ready.wait(), 10)
    yield e
    e.close()


async def auto_run(api: Api, database: Database, units: int = 2) -> dict[str, Any]:
    run = await released_run(
        api, product="P-ING-AUTO", routing="ROUTE-AUTO-V1", line="LINE-ING", qty=units, units=units
    )
    await pass_readiness(database, run["runNo"])
    r = await api.post(f"/runs/{run['runNo']}/authorize", PL, json={"action": "AUTHORIZE"})
    assert r.status == 200, r.body
    return run


async def count(database: Database, stmt: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(stmt) or 0)


async def test_batch_applied_acked_and_replay_is_duplicate(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    run = await auto_run(api, database)
    events = [ingest_event(1, run["sns"][0], run["runNo"]), ingest_event(2, run["sns"][1], run["runNo"])]
    batch_id = edge.publish(events)
    ack = await edge.ack()
    assert ack["batchId"] == batch_id
    assert [r["status"] for r in ack["results"]] == ["ACCEPTED", "ACCEPTED"]
    assert [r["eventId"] for r in ack["results"]] == [e["eventId"] for e in events]
    statuses = await count(
        database, select(func.count()).select_from(Unit).where(Unit.sn.in_(run["sns"]), Unit.status == "DONE")
    )
    assert statuses == 2
    # The same batch again (ack lost, edge resent): same answers as DUPLICATE, no second track.
    edge.publish(events, batch_id=batch_id)
    ack = await edge.ack()
    assert [r["status"] for r in ack["results"]] == ["DUPLICATE", "DUPLICATE"]
    tracks = await count(
        database,
        select(func.count())
        .select_from(Track)
        .join(Unit, Unit.id == Track.unit_id)
        .where(Unit.sn.in_(run["sns"])),
    )
    assert tracks == 2
    # Applied with the edge's identity: trace shows the edge as the source system.
    t = await api.get(f"/trace/units/{run['sns'][0]}", Q, params={"mode": "run"})
    assert t.status == 200, t.body
    assert t.data["ingestEvents"][0]["sourceSystem"] == f"edge:{EDGE}"
    edges = await api.get("/integration/edges", EN)
    row = next(e for e in edges.data if e["edgeId"] == EDGE)
    assert (row["eventsAccepted"], row["eventsDuplicate"], row["lastBatchId"]) == (2, 2, batch_id)


async def test_refused_event_is_rejected_logged_and_rest_applied(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    run = await auto_run(api, database, units=1)
    bad = ingest_event(1, "SN-NOBODY", run["runNo"])
    bad["payload"].pop("runNo")  # the unit's run is looked up by sn → UNIT_RUN_NOT_FOUND
    good = ingest_event(2, run["sns"][0], run["runNo"])
    edge.publish([good, bad])  # out of order on purpose: central applies by seq
    ack = await edge.ack()
    by_id = {r["eventId"]: r for r in ack["results"]}
    assert by_id[bad["eventId"]]["status"] == "REJECTED"
    assert by_id[bad["eventId"]]["code"] == "UNIT_RUN_NOT_FOUND"
    assert by_id[good["eventId"]]["status"] == "ACCEPTED"
    msgs = await api.get("/integration/messages", EN, params={"status": "FAILED", "system": "EDGE"})
    assert msgs.status == 200, msgs.body
    assert any(bad["eventId"] in (m.get("dedupeKey") or "") for m in msgs.data["items"])
    # A refused event wrote nothing (no receipt): once fixed, the same eventId is evaluated again.
    assert (
        await count(
            database,
            select(func.count())
            .select_from(EdgeEventReceipt)
            .where(EdgeEventReceipt.event_id == bad["eventId"]),
        )
        == 0
    )


async def test_permissions_of_the_edge_identity_apply(api: Api, database: Database, edge: EdgeClient) -> None:
    run = await auto_run(api, database, units=1)
    # The edge-agent role has no quality permissions, but EQUIPMENT_STATUS needs system:integration: allowed;
    # a TRACK_IN on a station is allowed too (exec:track_in). Revoke its role's exec rights and try again.
    from central.db.models import Role

    async with database.writer() as s, s.begin():
        role = await s.scalar(select(Role).where(Role.code == "edge-agent"))
        role.permissions = ["system:integration"]
    ev = {
        "eventId": uuid.uuid4().hex,
        "seq": 1,
        "kind": "TRACK_IN",
        "occurredAt": now(),
        "stationCode": "ST-AUTO-01",
        "payload": {"sn": run["sns"][0], "woNo": run["woNo"], "runNo": run["runNo"]},
    }
    # The identity is cached for a minute; a fresh consumer would see it at once. Use another edge id.
    reg = await api.post(
        "/integration/edges", "admin@example.com", json={"edgeId": "edge-perm", "lineCode": "LINE-ING"}
    )
    assert reg.status == 201, reg.body
    async with database.writer() as s, s.begin():
        role = await s.scalar(select(Role).where(Role.code == "edge-agent"))
        assert role.permissions == ["system:integration"]
    other = EdgeClient(edge.url, edge.prefix, "edge-perm")
    await asyncio.wait_for(other.ready.wait(), 10)
    try:
        other.publish([ev])
        ack = await other.ack()
        assert ack["results"][0]["status"] == "REJECTED"
        assert ack["results"][0]["code"] == "FORBIDDEN"
    finally:
        other.close()


async def test_unregistered_edge_gets_every_event_rejected(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    stranger = EdgeClient(edge.url, edge.prefix, "edge-unknown")
    await asyncio.wait_for(stranger.ready.wait(), 10)
    try:
        ev = ingest_event(1, "SN-X", "RUN-X")
        stranger.publish([ev])
        ack = await stranger.ack()
        assert ack["results"] == [
            {
                "eventId": ev["eventId"],
                "status": "REJECTED",
                "code": "EDGE_NOT_REGISTERED",
                "message": ack["results"][0]["message"],
            }
        ]
    finally:
        stranger.close()


async def test_malformed_payloads_are_refused_and_the_consumer_keeps_going(
    api: Api, database: Database, edge: EdgeClient, client: Any
) -> None:
    run = await auto_run(api, database, units=1)
    valid = ingest_event(1, run["sns"][0], run["runNo"])
    edge.publish_raw(b"not json at all")
    edge.publish_raw(
        orjson.dumps({"schemaVersion": 2, "edgeId": EDGE, "batchId": "b", "sentAt": now(), "events": [valid]})
    )
    edge.publish_raw(
        orjson.dumps(
            {
                "schemaVersion": 1,
                "edgeId": EDGE,
                "batchId": "b2",
                "sentAt": now(),
                "events": [{**valid, "kind": "TELEPORT"}],
            }
        )
    )
    edge.publish_raw(b"{" + b" " * (2 * 1024 * 1024) + b"}")
    # A batch naming another edge than its topic is refused whole.
    edge.publish_raw(
        orjson.dumps(
            {"schemaVersion": 1, "edgeId": "edge-other", "batchId": "b3", "sentAt": now(), "events": [valid]}
        )
    )
    batch_id = edge.publish([valid])
    ack = await edge.ack()  # the first (and only) ack is the valid batch's
    assert ack["batchId"] == batch_id
    assert ack["results"][0]["status"] == "ACCEPTED"
    consumer = client.app[keys.MQTT]
    assert consumer.stats["refused"] == 5
    async with database.reader() as s:
        errors = list(
            await s.scalars(
                select(IntegrationMessage.meta).where(IntegrationMessage.entity_type == "EDGE_BATCH")
            )
        )
    assert sorted(m["code"] for m in errors) == sorted(
        ["MALFORMED_JSON", "BATCH_INVALID", "BATCH_INVALID", "PAYLOAD_TOO_LARGE", "EDGE_ID_MISMATCH"]
    )
    h = await api.get("/health")
    assert h.data["mqtt"] == "connected"


async def test_edge_status_is_tracked(api: Api, database: Database, edge: EdgeClient) -> None:
    status = {
        "state": "ONLINE",
        "version": "1.0.0",
        "startedAt": now(),
        "backlog": 7,
        "oldestPendingAt": now(),
        "deadLetters": 1,
        "devices": [{"id": "plc-print", "state": "CONNECTED", "lastOkAt": now()}],
    }
    edge.c.publish(
        topics.status(EDGE, edge.prefix), orjson.dumps(status), qos=1, retain=True
    ).wait_for_publish(5)
    for _ in range(100):
        r = await api.get("/integration/edges", EN)
        row = next(e for e in r.data if e["edgeId"] == EDGE)
        if row["state"] == "ONLINE":
            break
        await asyncio.sleep(0.1)
    assert (row["state"], row["online"], row["backlog"], row["deadLetters"]) == ("ONLINE", True, 7, 1)
    assert row["devices"][0]["id"] == "plc-print"
    # The will / a clean shutdown publishes OFFLINE.
    edge.c.publish(
        topics.status(EDGE, edge.prefix), orjson.dumps({"state": "OFFLINE"}), qos=1, retain=True
    ).wait_for_publish(5)
    for _ in range(100):
        row = next(e for e in (await api.get("/integration/edges", EN)).data if e["edgeId"] == EDGE)
        if row["state"] == "OFFLINE":
            break
        await asyncio.sleep(0.1)
    assert row["online"] is False
    edge.c.publish(topics.status(EDGE, edge.prefix), b"", qos=1, retain=True).wait_for_publish(5)


async def test_register_edge_and_disable_it(api: Api, database: Database, edge: EdgeClient) -> None:
    r = await api.post(
        "/integration/edges", "admin@example.com", json={"edgeId": "edge-new", "lineCode": "LINE-B"}
    )
    assert r.status == 201, r.body
    assert r.data["apiKey"].startswith("mes_")
    assert (
        await api.post("/integration/edges", "admin@example.com", json={"edgeId": "edge-new"})
    ).code == "EDGE_EXISTS"
    bad_line = await api.post(
        "/integration/edges", "admin@example.com", json={"edgeId": "edge-x", "lineCode": "NOPE"}
    )
    assert (bad_line.status, bad_line.code) == (404, "LINE_NOT_FOUND")
    off = await api.patch("/integration/edges/edge-new", "admin@example.com", json={"isActive": False})
    assert (off.status, off.data["isActive"]) == (200, False)
    missing = await api.patch("/integration/edges/nope", "admin@example.com", json={"isActive": False})
    assert (missing.status, missing.code) == (404, "EDGE_NOT_FOUND")
    # Planners may not register edges.
    assert (await api.post("/integration/edges", PL, json={"edgeId": "edge-y"})).status == 403


async def test_embedded_broker_mode(aiohttp_client: Any, settings: Settings, database: Database) -> None:
    """MES_MQTT_URL=embedded (the demo's default): central runs its own broker and consumes from it."""
    from central.api.app import create_app

    emb = settings.model_copy(update={"mqtt_url": "embedded", "mqtt_embedded_port": 0})
    cl = await aiohttp_client(create_app(emb, database=database))
    await seed(database)
    consumer = cl.app[keys.MQTT]
    await asyncio.wait_for(consumer.connected.wait(), 10)
    url = cl.app[keys.STATE]["mqttUrl"]
    assert url.startswith("mqtt://127.0.0.1:") and url != settings.mqtt_url
    e = EdgeClient(url, emb.mqtt_topic_prefix)
    await asyncio.wait_for(e.ready.wait(), 10)
    try:
        ev = ingest_event(1, "SN-NOBODY", "RUN-NOPE")
        e.publish([ev])
        ack = await e.ack()
        assert (ack["results"][0]["status"], ack["results"][0]["code"]) == ("REJECTED", "RUN_NOT_FOUND")
    finally:
        e.close()


async def test_database_down_answers_retry_and_keeps_consuming() -> None:
    """Central cannot decide while its database is unreachable: every event is answered RETRY (the edge keeps
    them), and the consumer stays up."""
    from central.db.engine import create_database
    from central.mqtt.consumer import MqttConsumer

    url = broker_url()
    st = Settings(
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/nowhere",
        mqtt_url=url,
        mqtt_topic_prefix=f"t{uuid.uuid4().hex[:10]}",
    )
    db = create_database(st.database_url, pool_size=1)
    consumer = MqttConsumer(st, db, {}, url)
    await consumer.start()
    e = EdgeClient(url, st.mqtt_topic_prefix)
    try:
        await asyncio.wait_for(consumer.connected.wait(), 10)
        await asyncio.wait_for(e.ready.wait(), 10)
        for _ in range(2):
            ev = ingest_event(1, "SN-1", "RUN-1")
            e.publish([ev])
            ack = await e.ack()
            assert ack["results"] == [
                {"eventId": ev["eventId"], "status": "RETRY", "code": "DATABASE_UNAVAILABLE"}
            ]
    finally:
        e.close()
        await consumer.stop()
        await db.dispose()


# ---- events that come before their unit (central/mqtt/parked.py) -------------------------------------------


def line_b_event(seq: int, station: str, sn: str, run_no: str, at: str) -> dict[str, Any]:
    """What the edge's LINE-B rules send (config/edge-line-b.devices.example.toml) for a PASS record."""
    body: dict[str, Any] = {"stationCode": station, "sn": sn, "result": "PASS"}
    event: dict[str, Any] = {"eventType": "AUTO", "payload": body}
    if station == "ST-B-SPI-01":
        event = {"eventType": "TEST", "runNo": run_no, "payload": {**body, "testResultId": f"SPI-{sn}"}}
    return {
        "eventId": uuid.uuid4().hex,
        "seq": seq,
        "kind": "INGEST",
        "occurredAt": at,
        "stationCode": station,
        "payload": event,
    }


async def test_event_ahead_of_its_unit_waits_and_is_applied_when_the_unit_gets_there(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    flow = await line_b_run(api)
    sn, run_no = flow["sns"][0], flow["runNo"]
    # The MOUNT record (step 30) overtook the PRINT (10) and SPI (20) records of the same board.
    mount = line_b_event(1, "ST-B-MOUNT-01", sn, run_no, "2026-12-03T06:00:03.000Z")
    edge.publish([mount])
    (r,) = (await edge.ack())["results"]
    assert (r["status"], r["code"]) == ("ACCEPTED", "WAITING"), r
    waiting = await api.get("/integration/messages", EN, params={"status": "WAITING", "system": "EDGE"})
    assert [m["dedupeKey"] for m in waiting.data["items"]] == [f"edge:{EDGE}:{mount['eventId']}"]
    # Resent (its ack was lost): the receipt answers, nothing is held twice.
    edge.publish([mount])
    assert (await edge.ack())["results"][0]["status"] == "DUPLICATE"

    edge.publish([line_b_event(2, "ST-B-PRINT-01", sn, run_no, "2026-12-03T06:00:01.000Z")])
    assert (await edge.ack())["results"][0]["status"] == "ACCEPTED"
    trace = await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})
    assert [t["stepNo"] for t in trace.data["tracks"]] == [10], "MOUNT still waits for SPI"

    edge.publish([line_b_event(3, "ST-B-SPI-01", sn, run_no, "2026-12-03T06:00:02.000Z")])
    assert (await edge.ack())["results"][0]["status"] == "ACCEPTED"
    trace = await api.get(f"/trace/units/{sn}", Q, params={"mode": "run"})
    tracks = sorted((t["stepNo"], t["stationCode"], t["outAt"]) for t in trace.data["tracks"])
    assert tracks == [
        (10, "ST-B-PRINT-01", "2026-12-03T06:00:01.000Z"),
        (20, "ST-B-SPI-01", "2026-12-03T06:00:02.000Z"),
        (30, "ST-B-MOUNT-01", "2026-12-03T06:00:03.000Z"),  # the machine's time, not the time it was applied
    ]
    assert trace.data["unit"]["currentStepNo"] == 40
    applied = await api.get("/integration/messages", EN, params={"status": "APPLIED", "system": "EDGE"})
    assert [m["dedupeKey"] for m in applied.data["items"]] == [f"edge:{EDGE}:{mount['eventId']}"]


@contextmanager
def savepoints(database: Database) -> Iterator[list[str]]:
    """The SAVEPOINT statements sent: one per event applied one by one, and one per waiting event tried."""
    seen: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SAVEPOINT"):
            seen.append(statement)

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", count)


async def test_waiting_events_are_tried_again_only_when_their_unit_moved(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    flow = await line_b_run(api, qty=4)
    (a, b, c, d), run_no = flow["sns"], flow["runNo"]
    at = "2026-12-03T06:00:0{}.000Z".format

    async def one(seq: int, station: str, sn: str) -> int:
        """Publishes one event; → the SAVEPOINTs its batch sent."""
        with savepoints(database) as seen:
            edge.publish([line_b_event(seq, station, sn, run_no, at(seq))])
            assert (await edge.ack())["results"][0]["status"] == "ACCEPTED"
        return len(seen)

    alone = await one(1, "ST-B-PRINT-01", c)  # nothing waits yet
    # Unit a's MOUNT (step 30) overtook its PRINT (10) and SPI (20): it waits, refused at step 10.
    edge.publish([line_b_event(2, "ST-B-MOUNT-01", a, run_no, at(5))])
    assert (await edge.ack())["results"][0]["code"] == "WAITING"
    assert await one(3, "ST-B-PRINT-01", b) == alone  # b moved, a did not: a's event is not tried
    assert await one(4, "ST-B-PRINT-01", a) > alone  # a moved to 20: tried, still waits (needs SPI)
    async with database.reader() as s:
        meta = await s.scalar(select(IntegrationMessage.meta).where(IntegrationMessage.status == "WAITING"))
    assert meta["units"] == {a: 20}  # noted where a is now
    assert await one(5, "ST-B-PRINT-01", d) == alone  # a still at 20: not tried
    await one(6, "ST-B-SPI-01", a)  # a at 30 now: tried and applied
    trace = await api.get(f"/trace/units/{a}", Q, params={"mode": "run"})
    assert sorted(t["stepNo"] for t in trace.data["tracks"]) == [10, 20, 30]
    applied = await api.get("/integration/messages", EN, params={"status": "APPLIED", "system": "EDGE"})
    assert len(applied.data["items"]) == 1


async def test_a_waiting_event_whose_unit_never_gets_there_fails_after_the_ttl(
    api: Api, database: Database, edge: EdgeClient
) -> None:
    flow = await line_b_run(api, qty=2)
    (a, b), run_no = flow["sns"], flow["runNo"]
    # Unit a's MOUNT arrives, but its PRINT/SPI records never will (lost at the machine).
    stray = line_b_event(1, "ST-B-MOUNT-01", a, run_no, "2026-12-03T06:00:03.000Z")
    edge.publish([stray])
    assert (await edge.ack())["results"][0]["code"] == "WAITING"
    async with database.writer() as s, s.begin():
        await s.execute(
            update(IntegrationMessage)
            .where(IntegrationMessage.status == "WAITING")
            .values(created_at=datetime.now(UTC) - parked.PARK_TTL - timedelta(seconds=1))
        )
    # Any progress of the line tries the waiting events again: past the TTL it becomes FAILED.
    edge.publish([line_b_event(2, "ST-B-PRINT-01", b, run_no, "2026-12-03T06:00:04.000Z")])
    assert (await edge.ack())["results"][0]["status"] == "ACCEPTED"
    failed = await api.get("/integration/messages", EN, params={"status": "FAILED", "system": "EDGE"})
    (msg,) = failed.data["items"]
    assert msg["dedupeKey"] == f"edge:{EDGE}:{stray['eventId']}"
    assert msg["error"].startswith("STATION_MISMATCH"), msg
