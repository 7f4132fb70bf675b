"""The shipped Mosquitto ACL (config/mosquitto.acl, edge.md rule 8): an edge publishes only as itself and
reads only its own acks; central reads every edge's events and status and writes every edge's acks.

A real Mosquitto runs with the shipped ACL file and a generated password file (users mes-central, edge-a,
edge-b). "Never reaches" is shown without waiting for a timeout: the forbidden message is published first and
an allowed one by the same client after it; Mosquitto keeps one publisher's messages in order for a
subscriber, so once the allowed one has arrived the forbidden one would have arrived before it.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from tests.brokers import Broker, User

CONFIG = Path(__file__).resolve().parents[2] / "config"
USERS = {
    name: User(name, f"pw-{name}-{uuid.uuid4().hex[:6]}") for name in ("mes-central", "edge-a", "edge-b")
}
WAIT = 10.0


class Client:
    """A paho client as one broker user: connects, subscribes, publishes (waiting for each ack), collects."""

    def __init__(self, broker: Broker, user: User | None, *, v5: bool = False, password: str | None = None):
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.refused: Any = None
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.pubacks: dict[int, Any] = {}
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"acl-{user.name if user else 'anon'}-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if user is not None:
            self.c.username_pw_set(user.name, password if password is not None else user.password)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(list(codes))
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda _c, _u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.c.connect(broker.host, broker.port, keepalive=10)
        self.c.loop_start()

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason
        self.connected.set()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.pubacks[mid] = reason

    def ready(self) -> Client:
        assert self.connected.wait(WAIT), "no CONNACK"
        assert self.refused is None, f"connection refused: {self.refused}"
        return self

    def subscribe(self, *filters: str) -> list[Any]:
        self.c.subscribe([(f, 1) for f in filters])
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes) -> Any:
        """Publishes at QoS 1 and returns the PUBACK's reason code (v5 says when the ACL refused it)."""
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()
        return self.pubacks.get(info.mid)

    def next(self) -> tuple[str, bytes]:
        return self.inbox.get(timeout=WAIT)

    def nothing_more(self) -> bool:
        return self.inbox.empty()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(
        tmp_path_factory.mktemp("acl-broker"),
        kind="mosquitto",
        users=list(USERS.values()),
        acl_file=CONFIG / "mosquitto.acl",
    )
    b.start()
    yield b
    b.stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    made: list[Client] = []

    def make(name: str, **kw: Any) -> Client:
        c = Client(broker, USERS[name], **kw).ready()
        made.append(c)
        return c

    yield {name: make(name) for name in USERS}
    for c in made:
        c.close()


def test_the_shipped_broker_config_uses_the_acl_and_refuses_anonymous_clients() -> None:
    conf = [line.split() for line in (CONFIG / "mosquitto.conf").read_text().splitlines() if line.strip()]
    settings = {words[0]: words[1:] for words in conf if not words[0].startswith("#")}
    assert settings["allow_anonymous"] == ["false"]
    assert "acl_file" in settings and "password_file" in settings


def test_anonymous_and_wrong_password_clients_are_refused(broker: Broker) -> None:
    for client in (Client(broker, None), Client(broker, USERS["edge-a"], password="wrong")):
        try:
            assert client.connected.wait(WAIT)
            assert client.refused is not None and client.refused.is_failure, client.refused
        finally:
            client.close()


def test_an_edge_publishes_only_on_its_own_topics(clients: dict[str, Client], broker: Broker) -> None:
    central, edge_a, edge_b = clients["mes-central"], clients["edge-a"], clients["edge-b"]
    central.subscribe(topics.events("+"), topics.status("+"))

    # edge-a forges edge-b's events and status, then publishes its own events.
    edge_a.publish(topics.events("edge-b"), b"forged events")
    edge_a.publish(topics.status("edge-b"), b"forged status")
    edge_a.publish(topics.events("edge-a"), b"own events")
    assert central.next() == (topics.events("edge-a"), b"own events")
    assert central.nothing_more()

    # edge-b's own topics do carry messages: what stopped the forgery is the ACL.
    edge_b.publish(topics.events("edge-b"), b"real events")
    edge_b.publish(topics.status("edge-b"), b"real status")
    assert central.next() == (topics.events("edge-b"), b"real events")
    assert central.next() == (topics.status("edge-b"), b"real status")

    # An edge cannot fake central's acks either, not even on its own acks topic.
    edge_b.subscribe(topics.acks("edge-b"))
    edge_a.publish(topics.acks("edge-b"), b"forged ack")
    edge_b.publish(topics.acks("edge-b"), b"self-made ack")
    central.publish(topics.acks("edge-b"), b"central's ack")
    assert edge_b.next() == (topics.acks("edge-b"), b"central's ack")
    assert edge_b.nothing_more()

    # With MQTT 5 the broker says so in the PUBACK.
    v5 = Client(broker, USERS["edge-a"], v5=True).ready()
    try:
        assert v5.publish(topics.events("edge-b"), b"forged").is_failure
        assert not v5.publish(topics.events("edge-a"), b"own").is_failure
    finally:
        v5.close()


def test_an_edge_reads_only_its_own_acks(clients: dict[str, Client]) -> None:
    central, edge_a, edge_b = clients["mes-central"], clients["edge-a"], clients["edge-b"]
    # Mosquitto 2.0 grants these subscriptions and applies the read ACL to each message delivered.
    edge_a.subscribe(topics.acks("edge-b"), topics.acks("+"), topics.events("+"), topics.acks("edge-a"))
    edge_b.subscribe(topics.acks("edge-b"))

    central.publish(topics.acks("edge-b"), b"ack for b")
    edge_b.publish(topics.events("edge-b"), b"events of b")
    central.publish(topics.acks("edge-a"), b"ack for a")
    assert edge_a.next() == (topics.acks("edge-a"), b"ack for a")
    assert edge_a.nothing_more()
    assert edge_b.next() == (topics.acks("edge-b"), b"ack for b")


def test_central_reads_every_edge_through_a_shared_subscription(clients: dict[str, Client]) -> None:
    """edge.md rule 7: several central processes share `$share/{group}/mes/v1/edge/+/events`."""
    central, edge_a, edge_b = clients["mes-central"], clients["edge-a"], clients["edge-b"]
    granted = central.subscribe(topics.events_subscription("mes", "central"))
    assert not granted[0].is_failure, granted
    edge_a.publish(topics.events("edge-a"), b"a")
    edge_b.publish(topics.events("edge-b"), b"b")
    got = {central.next(), central.next()}
    assert got == {(topics.events("edge-a"), b"a"), (topics.events("edge-b"), b"b")}
