"""A test double of central's side of the MQTT contract (edge.md delivery rules), for edge tests.

It subscribes to one edge's events topic, validates each batch against shared.events.EventBatch, dedupes on
eventId the way central's unique (sourceSystem, dedupeKey) does, and answers acks per a script: ACCEPTED,
DUPLICATE, REJECTED with a code, RETRY, or silence. It records everything so a test can assert delivery
exactly once, batches in flight and sizes. It stands in for central (another component), never for edge code.
StatusWatcher keeps the edge's status messages (retained, and the will) as central would see them.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.events import Ack, AckResult, EdgeEvent, EdgeStatus, EventBatch
from tests.brokers import Broker, User

Decision = tuple[str, str | None, str | None]  # (status, code, message)
# (batch, how many times this batchId arrived, events applied so far) → decisions by eventId; None = silence.
Script = Callable[[EventBatch, int, dict[str, int]], dict[str, Decision] | None]


@dataclass
class Received:
    batch: EventBatch
    size: int
    at: float
    answered: bool = False
    results: list[AckResult] = field(default_factory=list)


class Acker:
    def __init__(
        self,
        broker: Broker,
        edge_id: str,
        *,
        script: Script | None = None,
        delay: float = 0.0,
        prefix: str = "mes",
        user: User | None = None,
    ) -> None:
        self.broker = broker
        self.edge_id = edge_id
        self.script = script
        self.delay = delay
        self.events_topic = topics.events(edge_id, prefix)
        self.acks_topic = topics.acks(edge_id, prefix)
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.applied: dict[str, int] = {}  # eventId → seq, in the order applied
        self.accepted: Counter[str] = Counter()
        self.arrivals: Counter[str] = Counter()  # batchId → times received
        self.outstanding: set[str] = set()
        self.overlaps: list[tuple[str, str]] = []
        self.malformed: list[str] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"acker-{edge_id}-{time.monotonic_ns()}"
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        if user:
            self._client.username_pw_set(user.name, user.password)
        if broker.tls:
            self._client.tls_set(ca_certs=str(broker.tls.ca), cert_reqs=ssl.CERT_REQUIRED)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Acker:
        self._subscribed.clear()
        self._client.connect(self.broker.host, self.broker.port, keepalive=5)
        self._client.loop_start()
        assert self._subscribed.wait(timeout), "acker could not subscribe"
        return self

    def wait_subscribed(self, timeout: float = 15.0) -> None:
        """After a broker restart: until the acker has reconnected and subscribed again."""
        assert self._subscribed.wait(timeout), "acker did not resubscribe"

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self._subscribed.clear()
        client.subscribe(self.events_topic, qos=1)

    # ---- central's behaviour ----------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            batch = EventBatch.model_validate_json(msg.payload)
        except ValueError as exc:
            self.malformed.append(str(exc))
            return
        assert batch.edge_id == self.edge_id
        with self.lock:
            self.arrivals[batch.batch_id] += 1
            attempt = self.arrivals[batch.batch_id]
            others = self.outstanding - {batch.batch_id}
            if others:
                self.overlaps.append((sorted(others)[0], batch.batch_id))
            self.outstanding.add(batch.batch_id)
            rec = Received(batch, len(msg.payload), time.monotonic())
            self.received.append(rec)
            decisions = self.script(batch, attempt, dict(self.applied)) if self.script else {}
        if decisions is None:
            return  # silence: the edge must time out and send the same batch again
        if self.delay:
            threading.Timer(self.delay, self._answer, (rec, decisions)).start()
        else:
            self._answer(rec, decisions)

    def _answer(self, rec: Received, decisions: dict[str, Decision]) -> None:
        results = []
        with self.lock:
            # Central applies a batch in seq order, each event on its own.
            for ev in sorted(rec.batch.events, key=lambda e: e.seq):
                status, code, message = decisions.get(ev.event_id, ("ACCEPTED", None, None))
                if ev.event_id in self.applied and status in ("ACCEPTED", "REJECTED"):
                    status, code, message = (
                        "DUPLICATE",
                        None,
                        None,
                    )  # the dedupe key was seen: no second effect
                if status == "ACCEPTED":
                    self.applied[ev.event_id] = ev.seq
                    self.accepted[ev.event_id] += 1
                results.append(AckResult(event_id=ev.event_id, status=status, code=code, message=message))  # type: ignore[arg-type]
            rec.answered = True
            rec.results = results
            self.outstanding.discard(rec.batch.batch_id)
        ack = Ack(batch_id=rec.batch.batch_id, results=results)
        self._client.publish(self.acks_topic, ack.model_dump_json(by_alias=True, exclude_none=True), qos=1)

    # ---- views ------------------------------------------------------------------------------------------

    def events(self) -> list[EdgeEvent]:
        with self.lock:
            return [e for r in self.received for e in r.batch.events]

    def batches(self) -> list[EventBatch]:
        with self.lock:
            return [r.batch for r in self.received]


class StatusWatcher:
    """Subscribes to the edge's retained status topic and keeps every message."""

    def __init__(self, broker: Broker, edge_id: str = "edge-t") -> None:
        self.messages: list[EdgeStatus] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_: c.subscribe(topics.status(edge_id), qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(
            EdgeStatus.model_validate_json(m.payload)
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
