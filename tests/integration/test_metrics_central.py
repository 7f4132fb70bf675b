"""`GET /api/metrics` (issue 10): scraped over real HTTP with an API key, parsed with prometheus_client's own
parser; every series central/metrics.py lists is there with the values that follow from what the test did
(REST calls, one MQTT batch through the real consumer on a real broker, an edge status, outbox rows)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from central.api import keys
from central.config import Settings
from central.db.engine import Database
from central.db.models import EdgeAgent, IntegrationMessage, MesEvent
from central.domain.clock import utcnow
from central.services.outbound import EVENT_TYPE
from shared import topics
from tests.client import Api
from tests.e2e.edge_system import eventually
from tests.flows import seed
from tests.integration.test_mqtt_consumer import EDGE, EdgeClient, auto_run, ingest_event
from tests.shared_broker import broker_url

ADMIN = "admin@example.com"
ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"mqtt_url": broker_url(), "mqtt_topic_prefix": f"t{uuid.uuid4().hex[:10]}"}
    )


@pytest.fixture
async def edge(api: Api, database: Database, client: Any, settings: Settings) -> AsyncIterator[EdgeClient]:
    await seed(database)
    await asyncio.wait_for(client.app[keys.MQTT].connected.wait(), 10)
    e = EdgeClient(settings.mqtt_url, settings.mqtt_topic_prefix)
    await asyncio.wait_for(e.ready.wait(), 10)
    yield e
    e.close()


async def api_key(api: Api, role: str) -> str:
    r = await api.post("/api-keys", ADMIN, json={"name": f"scraper-{role}", "role": role})
    assert r.status == 200, r.body
    return str(r.data["key"])


async def scrape(api: Api, key: str) -> Samples:
    r = await api.client.get("/api/metrics", headers={"Authorization": f"Bearer {key}"})
    text = await r.text()
    assert r.status == 200, text
    assert r.content_type == "text/plain"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


async def count(database: Database, stmt: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(stmt) or 0)


async def add_outbound_rows(database: Database) -> None:
    """Two due, one waiting for its retry, one dead letter, one delivered (business rows, as the worker
    leaves them), and a TRACK_IN record that no worker drains."""
    now = utcnow()
    later = now + timedelta(minutes=5)
    rows = [
        ("PENDING", 0, None),
        ("PENDING", 0, None),
        ("FAILED", 3, later),
        ("FAILED", 50, None),
        ("COMPLETED", 1, None),
    ]
    async with database.writer() as s, s.begin():
        for i, (status, attempts, next_at) in enumerate(rows):
            s.add(
                MesEvent(
                    event_type=EVENT_TYPE,
                    status=status,
                    attempts=attempts,
                    max_attempts=50,
                    next_attempt_at=next_at,
                    occurred_at=now,
                    idempotency_key=f"mes-event:{EVENT_TYPE}:metrics-{i}",
                )
            )
        s.add(
            MesEvent(
                event_type="TRACK_IN", status="PENDING", occurred_at=now, idempotency_key="mes-event:T:m"
            )
        )


async def test_metrics_need_credentials_and_system_config(api: Api, database: Database) -> None:
    await seed(database)
    r = await api.client.get("/api/metrics")
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "UNAUTHORIZED"
    planner_key = await api_key(api, "planner")  # holds no system:config
    r = await api.client.get("/api/metrics", headers={"Authorization": f"Bearer {planner_key}"})
    assert r.status == 403
    assert (await r.json())["error"]["code"] == "FORBIDDEN"
    # A signed-in admin (session token) may scrape too, not only API keys.
    token = await api.login(ADMIN)
    assert "mes_edges_registered" in names(await scrape(api, token))


async def test_scrape_holds_every_series_with_what_the_test_did(
    api: Api, database: Database, edge: EdgeClient, settings: Settings
) -> None:
    key = await api_key(api, "admin")
    run = await auto_run(api, database)
    before = await scrape(api, key)

    # REST: two reads of one run by its number, one path no route has.
    route = "/api/runs/{runNo}"
    for _ in range(2):
        r = await api.get(f"/runs/{run['runNo']}", ADMIN)
        assert r.status == 200, r.body
    assert (await api.client.get("/api/no-such-thing")).status == 404

    # MQTT: one batch of two events for the run's units, both ACCEPTED in the ack.
    events = [ingest_event(1, run["sns"][0], run["runNo"]), ingest_event(2, run["sns"][1], run["runNo"])]
    edge.publish(events)
    ack = await edge.ack()
    assert [x["status"] for x in ack["results"]] == ["ACCEPTED", "ACCEPTED"]

    # The edge says it is ONLINE (retained status, as the agent publishes it).
    edge.c.publish(
        topics.status(EDGE, settings.mqtt_topic_prefix),
        orjson.dumps({"state": "ONLINE", "backlog": 0}),
        qos=1,
        retain=True,
    ).wait_for_publish(5)

    async def online() -> bool:
        stmt = select(func.count()).select_from(EdgeAgent).where(EdgeAgent.state == "ONLINE")
        return await count(database, stmt) == 1

    await eventually(online, within=10, what="edge-line-b ONLINE at central")
    await add_outbound_rows(database)

    after = await scrape(api, key)

    # HTTP latency: by route template, never the raw path.
    ok_runs = {"method": "GET", "route": route, "status": "200"}
    assert value(after, "mes_http_request_duration_seconds_count", **ok_runs) - value(
        before, "mes_http_request_duration_seconds_count", **ok_runs
    ) == pytest.approx(2)
    routes = {dict(labels).get("route") for name, labels in after if name.startswith("mes_http_request")}
    assert route in routes and "/api/metrics" in routes and "UNMATCHED" in routes
    assert not any(run["runNo"] in (r or "") for r in routes)
    missing = {"method": "GET", "route": "UNMATCHED", "status": "404"}
    assert value(after, "mes_http_request_duration_seconds_count", **missing) >= 1

    # Ingest: the ack's answers per kind and status, one applied batch, the lag of both accepted events.
    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mes_ingest_events_total", kind="INGEST", status="ACCEPTED") == 2
    assert delta("mes_ingest_events_total", kind="INGEST", status="REJECTED") == 0
    assert delta("mes_ingest_batches_total", outcome="applied") == 1
    assert delta("mes_ingest_batch_duration_seconds_count") == 1
    assert delta("mes_ingest_lag_seconds_count") == 2
    # Published right after occurredAt was stamped: the lag is this test's seconds, not hours.
    assert 0 <= delta("mes_ingest_lag_seconds_sum") < 60

    # Database figures: exactly the rows there are.
    assert value(after, "mes_outbox_depth", status="PENDING") == 2
    assert value(after, "mes_outbox_depth", status="FAILED") == 1
    assert value(after, "mes_outbox_depth", status="PROCESSING") == 0
    assert value(after, "mes_outbox_dead_letters") == 1
    pending = await count(
        database,
        select(func.count())
        .select_from(MesEvent)
        .where(MesEvent.event_type == EVENT_TYPE, MesEvent.status == "PENDING"),
    )
    assert value(after, "mes_outbox_depth", status="PENDING") == pending
    parked = await count(
        database,
        select(func.count()).select_from(IntegrationMessage).where(IntegrationMessage.status == "WAITING"),
    )
    assert value(after, "mes_ingest_parked_events") == parked
    registered = await count(database, select(func.count()).select_from(EdgeAgent))
    assert registered >= 1 and value(after, "mes_edges_registered") == registered
    assert value(after, "mes_edges_online") == 1

    # Default collectors of the single-process mode.
    assert any(n.startswith("python_") for n in names(after))
    assert any(n.startswith("process_") for n in names(after))


async def test_edge_with_an_old_status_is_not_online(api: Api, database: Database) -> None:
    """A broker that dies sends no will: a status older than the window no longer counts as online."""
    await seed(database)
    key = await api_key(api, "admin")
    async with database.writer() as s, s.begin():
        row = await s.scalar(select(EdgeAgent).where(EdgeAgent.edge_id == EDGE))
        row.state, row.last_status_at = "ONLINE", utcnow() - timedelta(minutes=10)
    assert value(await scrape(api, key), "mes_edges_online") == 0
    async with database.writer() as s, s.begin():
        row = await s.scalar(select(EdgeAgent).where(EdgeAgent.edge_id == EDGE))
        row.last_status_at = utcnow()
    assert value(await scrape(api, key), "mes_edges_online") == 1


_WORKER = """
from datetime import UTC, datetime
from central import metrics
from shared.events import Ack, AckResult, EdgeEvent, EventBatch
now = datetime.now(UTC)
ev = EdgeEvent(event_id="x", seq=1, kind="INGEST", occurred_at=now, payload={})
batch = EventBatch(schema_version=1, edge_id="e", batch_id="b", sent_at=now, events=[ev])
ack = Ack(batch_id="b", results=[AckResult(event_id="x", status="ACCEPTED")])
metrics.observe_batch(batch, ack, "applied", 0.01)
metrics.observe_request("GET", "/api/runs/{runNo}", 200, 0.002)
"""
_SCRAPE = """
import sys
from central import metrics
body, _ = metrics.render(metrics.Figures(edges_registered=3), None)
sys.stdout.write(body.decode())
"""


def test_multiprocess_mode_answers_for_every_worker(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set (serve --workers), one process's scrape holds the samples the other
    worker processes recorded, summed."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER], cwd=ROOT, env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", _SCRAPE],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(out)
        for s in fam.samples
    }
    assert value(samples, "mes_ingest_events_total", kind="INGEST", status="ACCEPTED") == 2
    assert value(samples, "mes_ingest_batches_total", outcome="applied") == 2
    assert value(samples, "mes_ingest_lag_seconds_count") == 2
    req = {"method": "GET", "route": "/api/runs/{runNo}", "status": "200"}
    assert value(samples, "mes_http_request_duration_seconds_count", **req) == 2
    assert value(samples, "mes_edges_registered") == 3
