"""R5 (quality-bars.md): malformed MQTT payloads hurt neither central's consumer nor the valid traffic.

How the fault is injected: a Mosquitto of the test's own (tests/brokers.Broker) and central's real consumer
(the app built in process, `MES_MQTT_URL` pointing at that broker, max payload 64 KiB). Malformed payloads
are published — not JSON, wrong schema (each required field missing, each of a wrong type or range, unknown
fields, NUL characters), huge (over the configured max), unknown kind, schemaVersion ≠ 1, forged edgeId (on
the registered edge's topic naming another edge, and on other topics naming the registered edge), batches
of unregistered edges, binary garbage, deeply nested JSON, empty payloads: first every variant once, then a
seeded random mix. Valid batches of the registered edge (one INGEST per unit of an AUTO run) are interleaved.
The test paces itself like a real edge: after each chunk of malformed payloads it sends one valid batch and
waits for its ack (one batch in flight), so the consumer's per-edge queue never overflows (a flood beyond it
is dropped and logged by design, not measured here).

Each malformed payload must be accounted for: a FAILED `EDGE_BATCH` integration message with the expected
code, in order, per topic (an unregistered edge's batch: REJECTED `EDGE_NOT_REGISTERED` acks and one FAILED
message per event), and one warning log line each. Valid traffic: every valid batch acked ACCEPTED exactly
once, every event applied once (one receipt, one track, unit DONE), no other ack on the edge's topic.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from central.api import keys
from central.config import Settings
from central.db.engine import Database
from central.db.models import EdgeEventReceipt, IntegrationMessage, Track, Unit
from tests.brokers import Broker
from tests.client import Api
from tests.flows import PL, pass_readiness, seed
from tests.integration.test_mqtt_consumer import EdgeClient, ingest_event, now
from tests.reliability.conftest import Recorder
from tests.reliability.figures import size

EDGE = "edge-line-b"  # registered by the demo seed, with the edge-agent role
MAX_PAYLOAD = 64 * 1024
MALFORMED = size(500, 10_000)
CHUNK = 20  # malformed payloads between two valid batches
EVENTS_PER_VALID = 2
SEED = 5_2026
FORGERS = ["edge-forger-1", "edge-forger-2", "f" * 300]  # the last one: an edgeId longer than any column
GHOSTS = ["edge-ghost-1", "edge-ghost-2"]  # never registered at central
CATEGORIES = (
    "not_json",
    "wrong_schema",
    "huge",
    "unknown_kind",
    "schema_version",
    "forged_edge",
    "unregistered_edge",
    "binary",
    "deep",
    "empty",
)
WEIGHTS = (1, 3, 1, 1, 1, 1, 1, 1, 1, 1)


@dataclass
class Bad:
    category: str
    topic_edge: str  # whose events topic it is published on
    payload: bytes
    code: str  # the refusal code central must record
    events: int = 0  # unregistered edge: events refused one by one


@dataclass
class Mix:
    rng: random.Random
    seq: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def event(self, **over: Any) -> dict[str, Any]:
        # Well-formed, but for a run that does not exist: if a malformed batch were ever applied, its events
        # would come back REJECTED on the edge's ack topic, which the test watches.
        return {**ingest_event(next(self.seq), f"SN-BAD-{uuid.uuid4().hex[:8]}", "RUN-NOPE"), **over}

    def tiny_event(self, i: int) -> dict[str, Any]:  # small enough for 501 of them under the size limit
        return {"eventId": str(i), "seq": i + 1, "kind": "INGEST", "occurredAt": now(), "payload": {}}

    def body(self, edge_id: str = EDGE, events: int = 1, **over: Any) -> dict[str, Any]:
        return {
            "schemaVersion": 1,
            "edgeId": edge_id,
            "lineCode": "LINE-ING",
            "batchId": uuid.uuid4().hex,
            "sentAt": now(),
            "events": [self.event() for _ in range(events)],
            **over,
        }

    def make(self, category: str, variant: int | None = None) -> Bad:
        """One payload of `category`: its `variant`-th kind, or one picked at random."""
        kinds = getattr(self, category)()
        build = kinds[self.rng.randrange(len(kinds)) if variant is None else variant]
        return build()

    def every_variant(self) -> list[Bad]:
        """Each kind of every category once (each required field missing, each wrong type, …)."""
        return [self.make(c, i) for c in CATEGORIES for i in range(len(getattr(self, c)()))]

    # Each category lists builders, so that every variant can be sent at least once.
    def not_json(self) -> list[Callable[[], Bad]]:
        def bad(payload: Callable[[bytes], bytes]) -> Callable[[], Bad]:
            return lambda: Bad("not_json", EDGE, payload(orjson.dumps(self.body())), "MALFORMED_JSON")

        return [
            bad(lambda _: b"not json at all"),
            bad(lambda _: b"{'schemaVersion': 1}"),
            bad(lambda _: b'{"schemaVersion": NaN}'),
            bad(lambda _: b'{"edgeId": "\xff\xfe"}'),  # not UTF-8
            bad(lambda _: b"undefined"),
            bad(lambda _: b"{,}"),
            bad(lambda _: b"[1,]"),
            bad(lambda g: b"\xef\xbb\xbf" + g),  # a byte order mark
            bad(lambda g: g + b"}"),
            bad(lambda g: g[: self.rng.randint(1, len(g) - 1)]),  # cut short
            bad(lambda _: b"   "),
        ]

    def wrong_schema(self) -> list[Callable[[], Bad]]:
        def bad(mutate: Callable[[dict[str, Any], dict[str, Any]], Any]) -> Callable[[], Bad]:
            def build() -> Bad:
                body = self.body()
                out = mutate(body, body["events"][0])
                return Bad("wrong_schema", EDGE, orjson.dumps(body if out is None else out), "BATCH_INVALID")

            return build

        def drop(where: str, name: str) -> Callable[[], Bad]:
            def mutate(b: dict[str, Any], e: dict[str, Any]) -> None:
                del (b if where == "batch" else e)[name]

            return bad(mutate)

        def put(where: str, name: str, value: Any) -> Callable[[], Bad]:
            return bad(lambda b, e: (b if where == "batch" else e).__setitem__(name, value))

        wrong_batch: dict[str, list[Any]] = {
            "schemaVersion": ["1", None, 1.5, []],
            "edgeId": [123, None, "", [EDGE]],
            "batchId": [1, None, "", "b" * 129, "b\x00d"],
            "sentAt": ["yesterday", None, "2026-01-01T08:00:00", "0001-01-01T00:00:00+14:00"],
            "events": [{}, "[]", [], None, [1], "many"],
            "lineCode": [7, "L" * 65],
        }
        wrong_event: dict[str, list[Any]] = {
            "eventId": [1, None, "", "e" * 129, "e\x00"],
            "seq": [0, -1, 1.5, "one", None, 2**63, 2**64 - 1],
            "kind": [1, None, ["INGEST"]],
            "occurredAt": ["now", None, "2026-01-01T08:00:00", "9999-12-31T23:59:59-14:00"],
            "stationCode": [5, "S" * 65, "ST\x00"],
            "payload": [[], "x", None, 1, {"runNo": "R\x00"}, {"k\x00": 1}],
        }
        return [
            *(drop("batch", n) for n in ("schemaVersion", "edgeId", "batchId", "sentAt", "events")),
            *(drop("event", n) for n in ("eventId", "seq", "kind", "occurredAt", "payload")),
            *(put("batch", n, v) for n, vs in wrong_batch.items() for v in vs if v != "many"),
            bad(lambda b, _: b.__setitem__("events", [self.tiny_event(i) for i in range(501)])),  # over 500
            *(put("event", n, v) for n, vs in wrong_event.items() for v in vs),
            put("batch", "priority", "HIGH"),  # unknown fields
            put("event", "note", "typo'd field"),
            *(bad(lambda _b, _e, v=v: v) for v in ([], 1, "x", True)),  # not an object
            bad(lambda _b, _e: [self.body()]),
            lambda: Bad("wrong_schema", EDGE, b"null", "BATCH_INVALID"),
        ]

    def huge(self) -> list[Callable[[], Bad]]:
        def bad(make: Callable[[int], bytes]) -> Callable[[], Bad]:
            def build() -> Bad:
                payload = make(self.rng.randint(MAX_PAYLOAD + 1, MAX_PAYLOAD * 3 // 2))
                assert len(payload) > MAX_PAYLOAD
                return Bad("huge", EDGE, payload, "PAYLOAD_TOO_LARGE")

            return build

        def batch(n: int) -> bytes:  # otherwise well-formed: only its size is wrong
            body = self.body()
            body["events"][0]["payload"]["padding"] = ""
            body["events"][0]["payload"]["padding"] = "x" * max(n - len(orjson.dumps(body)), 1)
            return orjson.dumps(body)

        return [bad(batch), bad(lambda n: b"{" + b" " * (n - 2) + b"}"), bad(self.rng.randbytes)]

    def unknown_kind(self) -> list[Callable[[], Bad]]:
        def bad(kind: str) -> Callable[[], Bad]:
            def build() -> Bad:
                body = self.body(events=2)
                body["events"][self.rng.randrange(2)]["kind"] = kind
                return Bad("unknown_kind", EDGE, orjson.dumps(body), "BATCH_INVALID")

            return build

        return [bad(k) for k in ("TELEPORT", "ingest", "", "INGEST ", "DROP TABLE units")]

    def schema_version(self) -> list[Callable[[], Bad]]:
        def bad(version: int) -> Callable[[], Bad]:
            return lambda: Bad(
                "schema_version", EDGE, orjson.dumps(self.body(schemaVersion=version)), "BATCH_INVALID"
            )

        return [bad(2), bad(2), bad(2), bad(0), bad(1000)]

    def forged_edge(self) -> list[Callable[[], Bad]]:
        def on_ours(other: str) -> Callable[[], Bad]:  # on the registered edge's topic, naming another edge
            return lambda: Bad("forged_edge", EDGE, orjson.dumps(self.body(other)), "EDGE_ID_MISMATCH")

        def as_ours(topic_edge: str) -> Callable[[], Bad]:  # another topic naming the registered edge
            return lambda: Bad("forged_edge", topic_edge, orjson.dumps(self.body(EDGE)), "EDGE_ID_MISMATCH")

        others = ("edge-line-a", "edge-ghost-1", "EDGE-LINE-B", "edge-line-b ")
        return [*(on_ours(o) for o in others), *(as_ours(f) for f in FORGERS)]

    def unregistered_edge(self) -> list[Callable[[], Bad]]:
        def bad(ghost: str) -> Callable[[], Bad]:
            def build() -> Bad:
                n = self.rng.randint(1, 3)
                body = orjson.dumps(self.body(ghost, n))
                return Bad("unregistered_edge", ghost, body, "EDGE_NOT_REGISTERED", n)

            return build

        return [bad(g) for g in GHOSTS]

    def binary(self) -> list[Callable[[], Bad]]:
        def build() -> Bad:
            payload = self.rng.randbytes(self.rng.randint(1, 2048))
            return Bad("binary", EDGE, payload, _json_code(payload))

        return [build]

    def deep(self) -> list[Callable[[], Bad]]:
        # Around the limits that matter: ours (64), orjson/pydantic writing (255), orjson reading (1024).
        def bad(where: str, depth: int | None = None) -> Callable[[], Bad]:
            def build() -> Bad:
                d = depth or self.rng.randint(65, 3000)
                if where == "top":
                    payload = b"[" * d + b"]" * d
                else:
                    body = self.body()
                    if where == "field":
                        body["x"] = "@@NESTED@@"
                    else:
                        body["events"][0]["payload"]["payload"]["meta"] = "@@NESTED@@"
                    nested = b'{"a":' * d + b"1" + b"}" * d
                    payload = orjson.dumps(body).replace(b'"@@NESTED@@"', nested)
                return Bad("deep", EDGE, payload, _json_code(payload))

            return build

        return [bad(w, d) for w in ("top", "field", "event") for d in (None, 65, 256, 1020, 1030)]

    def empty(self) -> list[Callable[[], Bad]]:
        return [lambda: Bad("empty", EDGE, b"", "MALFORMED_JSON")]


def _json_code(payload: bytes) -> str:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "MALFORMED_JSON"
    return "BATCH_INVALID"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def count(self, pred: Callable[[logging.LogRecord], bool]) -> int:
        return sum(1 for r in self.records if pred(r))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("r5-broker"))
    b.start()
    yield b
    b.kill()


@pytest.fixture
def mqtt_log() -> Iterator[Records]:
    """Attached before the app starts, so the consumer's connect and every refusal are seen."""
    logger = logging.getLogger("central.mqtt")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def settings(settings: Settings, broker: Broker, mqtt_log: Records) -> Settings:
    return settings.model_copy(
        update={
            "mqtt_url": broker.url,
            "mqtt_topic_prefix": f"r5{uuid.uuid4().hex[:8]}",
            "mqtt_max_payload_bytes": MAX_PAYLOAD,
        }
    )


async def _auto_run(api: Api, database: Database, units: int) -> dict[str, Any]:
    wo_no = f"WO-R5-{uuid.uuid4().hex[:6]}"
    steps: list[tuple[str, dict[str, Any]]] = [
        (
            "/integration/work-orders",
            {"woNo": wo_no, "productCode": "P-ING-AUTO", "plannedQty": units, "routingCode": "ROUTE-AUTO-V1"},
        ),
        (f"/work-orders/{wo_no}/release", {"lineCode": "LINE-ING"}),
        (f"/work-orders/{wo_no}/runs", {"lineCode": "LINE-ING", "planQty": units}),
    ]
    run_no = ""
    for path, body in steps:
        r = await api.post(path, PL, json=body)
        assert r.status == 200, r.body
        run_no = r.data.get("runNo", run_no) if isinstance(r.data, dict) else run_no
    g = await api.post(f"/runs/{run_no}/generate-units", PL, json={"quantity": units})
    assert g.status == 200, g.body
    await pass_readiness(database, run_no)
    a = await api.post(f"/runs/{run_no}/authorize", PL, json={"action": "AUTHORIZE"})
    assert a.status == 200, a.body
    return {"runNo": run_no, "sns": [u["sn"] for u in g.data["units"]]}


async def _count(database: Database, stmt: Any) -> int:
    async with database.reader() as s:
        return int(await s.scalar(stmt) or 0)


async def _until(check: Callable[[], Any], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_r5_malformed_payloads_are_refused_and_valid_traffic_flows(
    api: Api, database: Database, client: Any, broker: Broker, mqtt_log: Records, record_figures: Recorder
) -> None:
    started = time.monotonic()
    await seed(database)
    consumer = client.app[keys.MQTT]
    await asyncio.wait_for(consumer.connected.wait(), 10)
    prefix = consumer.prefix
    valid_batches = MALFORMED // CHUNK + 1
    run = await _auto_run(api, database, valid_batches * EVENTS_PER_VALID)
    sns = iter(run["sns"])

    edge = EdgeClient(broker.url, prefix, EDGE)
    ghosts = {g: EdgeClient(broker.url, prefix, g) for g in GHOSTS}
    for c in (edge, *ghosts.values()):
        await asyncio.wait_for(c.ready.wait(), 10)
    mix = Mix(random.Random(SEED))
    sent: list[Bad] = []
    valid_ids: list[str] = []
    valid_acks: list[dict[str, Any]] = []

    async def send_valid() -> None:
        events = [ingest_event(next(mix.seq), next(sns), run["runNo"]) for _ in range(EVENTS_PER_VALID)]
        valid_ids.append(edge.publish(events))
        ack = await edge.ack(30)  # the edge's only acks are for valid batches: refused ones get none
        valid_acks.append(ack)
        assert ack["batchId"] == valid_ids[-1], ("an ack for something else than the valid batch", ack)

    every = mix.every_variant()
    try:
        for i in range(MALFORMED):
            bad = every[i] if i < len(every) else mix.make(mix.rng.choices(CATEGORIES, WEIGHTS)[0])
            sent.append(bad)
            edge.publish_raw(bad.payload, bad.topic_edge)
            if (i + 1) % CHUNK == 0:
                await send_valid()
        await send_valid()  # the final valid batch, after every malformed one

        # Other topics are worked on in parallel with the edge's: wait until they are through as well.
        on_topic = [b for b in sent if b.code != "EDGE_NOT_REGISTERED"]
        batch_rows = select(func.count()).where(IntegrationMessage.entity_type == "EDGE_BATCH")
        await _until(lambda: _eq(_count(database, batch_rows), len(on_topic)), "every refusal recorded")
        ghost_sent = Counter(b.topic_edge for b in sent if b.code == "EDGE_NOT_REGISTERED")
        await _until(
            lambda: _true(all(ghosts[g].acks.qsize() == n for g, n in ghost_sent.items())), "ghost acks"
        )

        # Each refusal recorded with its code, in the order sent, per topic.
        async with database.reader() as s:
            rows = (
                await s.execute(
                    select(
                        IntegrationMessage.business_key, IntegrationMessage.meta, IntegrationMessage.status
                    )
                    .where(IntegrationMessage.entity_type == "EDGE_BATCH")
                    .order_by(IntegrationMessage.id)
                )
            ).all()
            ghost_rows = list(
                await s.scalars(
                    select(IntegrationMessage.meta).where(
                        IntegrationMessage.system == "EDGE", IntegrationMessage.entity_type != "EDGE_BATCH"
                    )
                )
            )
        got: dict[str, list[str]] = defaultdict(list)
        for key, meta, status in rows:
            assert status == "FAILED"
            got[meta["edgeId"]].append(meta["code"])
            assert key == meta["edgeId"][:255]
        want: dict[str, list[Bad]] = defaultdict(list)
        for b in on_topic:
            want[b.topic_edge].append(b)
        wrong = [
            (edge_id, i, b.category, b.code, codes[i] if i < len(codes) else None, b.payload[:200])
            for edge_id, bads in want.items()
            for codes in [got.get(edge_id, [])]
            for i, b in enumerate(bads)
            if i >= len(codes) or codes[i] != b.code
        ]
        assert not wrong, wrong[:5]
        assert sorted(got) == sorted(want)
        ghost_events = sum(b.events for b in sent if b.code == "EDGE_NOT_REGISTERED")
        assert sorted((m["edgeId"], m["code"]) for m in ghost_rows) == sorted(
            (b.topic_edge, b.code) for b in sent if b.code == "EDGE_NOT_REGISTERED" for _ in range(b.events)
        )
        ghost_acks = [ghosts[g].acks.get_nowait() for g, n in ghost_sent.items() for _ in range(n)]
        assert {(r["status"], r["code"]) for a in ghost_acks for r in a["results"]} <= {
            ("REJECTED", "EDGE_NOT_REGISTERED")
        }
        assert sum(len(a["results"]) for a in ghost_acks) == ghost_events

        # Valid traffic: each batch acked once, every event ACCEPTED and applied exactly once.
        await asyncio.sleep(0.5)  # a late duplicate ack would show up here
        assert edge.acks.empty(), "an ack nobody asked for"
        assert [a["batchId"] for a in valid_acks] == valid_ids
        assert all(r["status"] == "ACCEPTED" for a in valid_acks for r in a["results"])
        receipts = await _count(
            database,
            select(func.count()).select_from(EdgeEventReceipt).where(EdgeEventReceipt.edge_id == EDGE),
        )
        done = await _count(
            database,
            select(func.count()).select_from(Unit).where(Unit.sn.in_(run["sns"]), Unit.status == "DONE"),
        )
        tracks = await _count(
            database,
            select(func.count())
            .select_from(Track)
            .join(Unit, Unit.id == Track.unit_id)
            .where(Unit.sn.in_(run["sns"])),
        )
        applied = len(valid_ids) * EVENTS_PER_VALID
        assert receipts == done == tracks == applied

        # The consumer is alive and never reconnected; nothing crashed; every refusal has its log line.
        health = await api.get("/health")
        assert health.status == 200 and health.data["mqtt"] == "connected"
        client_id = consumer._client._client_id.decode()
        connects = broker.log_path.read_text(errors="replace").count(f" as {client_id} ")
        errors = mqtt_log.count(lambda r: r.levelno >= logging.ERROR)
        dropped = mqtt_log.count(lambda r: "queue full" in r.getMessage())
        disconnects = mqtt_log.count(lambda r: r.getMessage().startswith("MQTT disconnected"))
        logged = mqtt_log.count(lambda r: r.getMessage().startswith("refused a batch from edge"))
        logged_ghost = mqtt_log.count(lambda r: r.getMessage().startswith("refused batch "))
        assert (errors, dropped, disconnects, connects) == (0, 0, 0, 1)
        assert logged == len(on_topic) == consumer.stats["refused"]
        assert logged_ghost == sum(ghost_sent.values())
    finally:
        for c in (edge, *ghosts.values()):
            c.close()

    by_cat = Counter(b.category for b in sent)
    record_figures(
        "R5",
        "malformed MQTT payloads",
        backend=database.engine.dialect.name,
        payloads_malformed=len(sent),
        **{f"sent_{c}": by_cat[c] for c in CATEGORIES},
        refused=len(rows) + sum(ghost_sent.values()),
        refusal_records=len(rows) + len(ghost_rows),
        logged=logged + logged_ghost,
        refusal_codes=dict(Counter(b.code for b in sent)),
        valid_batches_sent=len(valid_ids),
        valid_batches_acked=len(valid_acks),
        events_applied=applied,
        consumer_restarts=connects - 1,
        errors_5xx_or_crashes=errors,
        seconds=round(time.monotonic() - started, 1),
    )


async def _eq(value: Any, expected: int) -> bool:
    return await value == expected


async def _true(value: bool) -> bool:
    return value
