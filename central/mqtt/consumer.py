"""Central's MQTT consumer (edge.md "MQTT protocol v1"): batches in, acks out, edge status tracked.

paho runs its network loop on its own thread; every callback hands its message to the asyncio loop with
`call_soon_threadsafe`. Each edge gets its own queue and worker task, so one edge's batches are applied
strictly in arrival order while different edges proceed in parallel. Nothing here can kill the consumer: a
malformed payload is refused and logged, a database failure answers RETRY, and paho reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import paho.mqtt.client as mqtt
from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from central import metrics
from central.config import Settings
from central.db.engine import Database
from central.db.models import EdgeAgent, IntegrationMessage
from central.domain.clock import utcnow
from central.mqtt.apply import Applier
from central.services.uow import UnitOfWork
from shared import topics
from shared.events import Ack, AckResult, EdgeStatus, EventBatch
from shared.json_shape import MAX_NESTING, find_oddity

log = logging.getLogger("central.mqtt")

QUEUE_LIMIT = 1000  # per edge; an edge has one batch in flight, so only a flood fills it


class MqttConsumer:
    def __init__(
        self, settings: Settings, db: Database, state: dict[str, Any], url: str | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.state = state
        self.url = url or settings.mqtt_url
        self.prefix = settings.mqtt_topic_prefix
        self.applier = Applier(db, settings)
        self.stats = {"batches": 0, "refused": 0, "acks": 0, "retry": 0}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._status_q: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_LIMIT)
        self._status_task: asyncio.Task[None] | None = None
        self._client: mqtt.Client | None = None
        self.connected = asyncio.Event()
        self._closing = False

    # lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        parts = urlsplit(self.url)
        v5 = bool(self.settings.mqtt_shared_group)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.settings.mqtt_client_id or f"mes-central-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if parts.username:
            client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            client.tls_set_context(self.settings.mqtt_ssl_context())
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self.state["mqtt"] = "connecting"
        default_port = 8883 if parts.scheme == "mqtts" else 1883
        client.connect_async(parts.hostname or "127.0.0.1", parts.port or default_port, keepalive=30)
        client.loop_start()
        self._status_task = asyncio.create_task(self._status_worker(), name="mqtt-status")

    async def stop(self) -> None:
        self._closing = True
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        tasks = [*self._workers.values(), *([self._status_task] if self._status_task else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.state["mqtt"] = "disabled"

    # paho thread → loop
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if reason.is_failure:
            log.warning("MQTT connection refused: %s", reason)
            return
        client.subscribe(
            [
                (topics.events_subscription(self.prefix, self.settings.mqtt_shared_group), 1),
                (topics.status_subscription(self.prefix), 1),
            ]
        )
        log.info("MQTT connected to %s", _safe(self.url))

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: Any, reasons: Any, _p: Any = None) -> None:
        # Ready only once the broker confirmed the subscriptions: a batch published before would be lost.
        if any(getattr(r, "is_failure", False) for r in reasons):
            log.error("MQTT subscription refused (check the broker ACL for central's user): %s", reasons)
            return
        self._call(self._set_connected, True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if self._closing:
            log.info("MQTT disconnected")
        else:
            log.warning("MQTT disconnected (%s); paho reconnects", reason)
        self._call(self._set_connected, False)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._call(self._route, msg.topic, bytes(msg.payload))

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_connected(self, ok: bool) -> None:
        self.state["mqtt"] = "connected" if ok else "disconnected"
        (self.connected.set if ok else self.connected.clear)()

    def _route(self, topic: str, payload: bytes) -> None:
        edge_id = topics.edge_id_of(topic, self.prefix)
        if edge_id is None:
            log.warning("ignored a message on unexpected topic %r", topic)
            return
        if topic.endswith("/status"):
            _put(self._status_q, (edge_id, payload), "status", edge_id)
            return
        q = self._queues.get(edge_id)
        if q is None:
            q = self._queues[edge_id] = asyncio.Queue(QUEUE_LIMIT)
            self._workers[edge_id] = asyncio.create_task(
                self._edge_worker(edge_id, q), name=f"edge-{edge_id}"
            )
        _put(q, payload, "batch", edge_id)

    # batches
    async def _edge_worker(self, edge_id: str, q: asyncio.Queue[bytes]) -> None:
        while True:
            payload = await q.get()
            try:
                await self.handle_batch(edge_id, payload)
            except Exception:  # the consumer never dies; the edge resends after its ack timeout
                log.exception("unexpected failure handling a batch of edge %s", edge_id)

    async def handle_batch(self, edge_id: str, payload: bytes) -> Ack | None:
        batch = await self._parse(edge_id, payload)
        if batch is None:
            metrics.observe_refused_batch()
            return None
        self.stats["batches"] += 1
        started, outcome = time.perf_counter(), "applied"
        try:
            ack = await self.applier.apply(batch)
        except (DBAPIError, OSError, TimeoutError) as exc:
            log.warning("batch %s of edge %s not applied (%s); answering RETRY", batch.batch_id, edge_id, exc)
            ack, outcome = self._retry_all(batch, "DATABASE_UNAVAILABLE"), "retry"
        except Exception:
            # A bug must not dead-letter production data: keep it at the edge and make it loud here.
            log.exception("batch %s of edge %s failed unexpectedly; answering RETRY", batch.batch_id, edge_id)
            ack, outcome = self._retry_all(batch, "INTERNAL_ERROR"), "retry"
        metrics.observe_batch(batch, ack, outcome, time.perf_counter() - started)
        self._publish_ack(edge_id, ack)
        # One line per batch, naming this process: with several central processes on one shared subscription
        # it says which of them applied what (and that the load is spread).
        counts = Counter(r.status for r in ack.results)
        log.info(
            "batch %s of edge %s: %s (pid %d)",
            batch.batch_id,
            edge_id,
            ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no events",
            os.getpid(),
        )
        return ack

    def _retry_all(self, batch: EventBatch, code: str) -> Ack:
        self.stats["retry"] += 1
        return Ack(
            batch_id=batch.batch_id,
            results=[AckResult(event_id=e.event_id, status="RETRY", code=code) for e in batch.events],
        )

    async def _parse(self, edge_id: str, payload: bytes) -> EventBatch | None:
        if len(payload) > self.settings.mqtt_max_payload_bytes:
            return await self._refuse(edge_id, "PAYLOAD_TOO_LARGE", f"{len(payload)} bytes", None)
        try:
            raw = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return await self._refuse(edge_id, "MALFORMED_JSON", str(exc), None)
        odd = _odd_shape(raw)
        if odd is not None:
            # Not stored: such a document cannot be written back as JSON (PostgreSQL, orjson) or read out.
            return await self._refuse(edge_id, "BATCH_INVALID", odd, None)
        try:
            batch = EventBatch.model_validate(raw)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
            return await self._refuse(edge_id, "BATCH_INVALID", detail, raw)
        if batch.edge_id != edge_id:
            # Credentials and ACL bind an edge to its topic: a different edgeId inside is refused whole.
            return await self._refuse(edge_id, "EDGE_ID_MISMATCH", f"batch edgeId {batch.edge_id!r}", raw)
        return batch

    async def _refuse(self, edge_id: str, code: str, detail: str, raw: Any) -> None:
        # One row per refused batch, not an aggregate, so every malformed payload is accounted for (R5). That
        # cannot fill the database any faster than valid traffic could: only a holder of that topic's edge
        # broker credentials can publish there (per-edge users and ACL, S3), each row is bounded (payload kept
        # only up to 64 KiB, error 1000 characters), and a flood beyond QUEUE_LIMIT is dropped before this.
        self.stats["refused"] += 1
        log.warning("refused a batch from edge %s: %s (%s)", edge_id, code, detail[:300])
        payload = raw if isinstance(raw, dict) and len(orjson.dumps(raw)) <= 64 * 1024 else None
        try:
            async with UnitOfWork(self.db.writer) as uow:
                uow.session.add(
                    IntegrationMessage(
                        direction="IN",
                        system="EDGE",
                        entity_type="EDGE_BATCH",
                        business_key=edge_id[:255],  # a topic level may be longer than the column
                        status="FAILED",
                        payload=payload,
                        error=f"{code}: {detail[:1000]}",
                        meta={"edgeId": edge_id, "code": code},
                    )
                )
        except (DBAPIError, OSError) as exc:
            log.warning("could not record the refused batch: %s", exc)
        return None

    def _publish_ack(self, edge_id: str, ack: Ack) -> None:
        client = self._client
        if client is None or not client.is_connected():
            # Never leave it in paho's queue: the edge resends after its ack timeout and gets DUPLICATE.
            return
        client.publish(topics.acks(edge_id, self.prefix), orjson.dumps(ack.wire()), qos=1)
        self.stats["acks"] += 1

    # status
    async def _status_worker(self) -> None:
        while True:
            edge_id, payload = await self._status_q.get()
            try:
                await self.handle_status(edge_id, payload)
            except (DBAPIError, OSError, TimeoutError) as exc:
                # The database is away (R3): expected, and the edge publishes its status again in seconds.
                log.warning("status of edge %s not recorded (%s)", edge_id, type(exc).__name__)
            except Exception:
                log.exception("could not record the status of edge %s", edge_id)

    async def handle_status(self, edge_id: str, payload: bytes) -> bool:
        if not payload:  # a cleared retained message
            return False
        try:
            status = EdgeStatus.model_validate(orjson.loads(payload))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            log.warning("ignored a malformed status message of edge %s: %s", edge_id, str(exc)[:300])
            return False
        async with UnitOfWork(self.db.writer) as uow:
            res = await uow.session.execute(
                update(EdgeAgent)
                .where(EdgeAgent.edge_id == edge_id)
                .values(state=status.state, status=status.wire(), last_status_at=utcnow())
            )
        if not res.rowcount:  # type: ignore[attr-defined]
            log.info("status of unregistered edge %s ignored", edge_id)
        return bool(res.rowcount)  # type: ignore[attr-defined]


def _odd_shape(raw: Any) -> str | None:
    """Why a parsed batch cannot be handled even if it fits the schema (shared/json_shape.py), or None: it
    would fail on every resend, or look like a database outage (RETRY forever)."""
    odd = find_oddity(raw)
    if odd is None:
        return None
    return (
        "contains a NUL character (\\u0000)"
        if odd[1] == "string_nul"
        else f"nested deeper than {MAX_NESTING} levels"
    )


def _put(q: asyncio.Queue[Any], item: Any, what: str, edge_id: str) -> None:
    try:
        q.put_nowait(item)
    except asyncio.QueueFull:
        log.warning("dropped a %s message of edge %s: queue full (the edge resends)", what, edge_id)


def _safe(url: str) -> str:
    """The URL without its password, for logs."""
    p = urlsplit(url)
    host = f"{p.hostname}:{p.port}" if p.port else (p.hostname or "")
    user = f"{p.username}@" if p.username else ""
    return f"{p.scheme}://{user}{host}"
