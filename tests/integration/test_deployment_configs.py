"""The shipped config/mosquitto-tls.conf.example (docs/DEPLOYMENT.md "Mosquitto"), run by a real Mosquitto.

The file is used as shipped except for what a test cannot use: its certificate, password, ACL and persistence
paths point at files made here, and its listeners move to free ports on 127.0.0.1. Every other line (TLS
version, authentication, ACL, the optional mutual-TLS switches) is the operator's. A forbidden message is
shown not to arrive without waiting for a timeout: the same client publishes an allowed one after it, and
Mosquitto keeps one publisher's messages in order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import queue
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion

from central.api.app import create_app
from central.config import Settings
from central.db.engine import create_database
from shared import topics
from tests.brokers import MOSQUITTO, free_port
from tests.client import Api
from tests.integration.test_mqtt_consumer import ingest_event, now

CONFIG = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = CONFIG / "mosquitto-tls.conf.example"
WAIT = 10.0
PASSWORDS = {name: f"pw-{name}-{uuid.uuid4().hex[:6]}" for name in ("mes-central", "edge-a", "edge-b")}


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=edge-a, signed by the CA
    client_key: Path
    central_cert: Path  # CN=mes-central, signed by the CA
    central_key: Path


def _cert(
    subject: str, issuer: x509.Name, public_key: Any, signer: Any, *, ca: bool, ext: list[Any]
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for e in ext:
        builder = builder.add_extension(e, critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_pki(workdir: Path) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1, client certificates for edge-a and mes-central."""
    pem = serialization.Encoding.PEM

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
        fmt = serialization.PrivateFormat.PKCS8
        path.write_bytes(key.private_bytes(pem, fmt, serialization.NoEncryption()))
        return path

    def write_cert(path: Path, cert: x509.Certificate) -> Path:
        path.write_bytes(cert.public_bytes(pem))
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mes deployment test CA")])
    ca = _cert("mes deployment test CA", ca_name, ca_key.public_key(), ca_key, ca=True, ext=[])
    srv_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    srv = _cert("127.0.0.1", ca.subject, srv_key.public_key(), ca_key, ca=False, ext=[san])
    cli_key = ec.generate_private_key(ec.SECP256R1())
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    cli = _cert("edge-a", ca.subject, cli_key.public_key(), ca_key, ca=False, ext=[eku])
    central_key = ec.generate_private_key(ec.SECP256R1())
    central = _cert("mes-central", ca.subject, central_key.public_key(), ca_key, ca=False, ext=[eku])
    workdir.mkdir(parents=True, exist_ok=True)
    return Pki(
        ca=write_cert(workdir / "ca.crt", ca),
        server_cert=write_cert(workdir / "server.crt", srv),
        server_key=write_key(workdir / "server.key", srv_key),
        client_cert=write_cert(workdir / "edge-a.crt", cli),
        client_key=write_key(workdir / "edge-a.key", cli_key),
        central_cert=write_cert(workdir / "mes-central.crt", central),
        central_key=write_key(workdir / "mes-central.key", central_key),
    )


class RunningBroker:
    """Mosquitto started with the example file, its paths and ports rewritten; `ports` in listener order."""

    def __init__(self, workdir: Path, pki: Pki, *, mutual_tls: bool) -> None:
        self.workdir = workdir
        self.ports: list[int] = []
        passwd = workdir / "mes.passwd"
        passwd.write_text("")
        for name, password in PASSWORDS.items():
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), name, password], check=True)
        (workdir / "data").mkdir()
        paths = {
            "cafile": pki.ca,
            "certfile": pki.server_cert,
            "keyfile": pki.server_key,
            "password_file": passwd,
            "acl_file": CONFIG / "mosquitto.acl",
            "persistence_location": f"{workdir / 'data'}/",
        }
        lines = []
        for line in EXAMPLE.read_text().splitlines():
            words = line.split()
            if words and words[0] == "listener":
                self.ports.append(free_port())
                line = f"listener {self.ports[-1]} 127.0.0.1"
            elif words and words[0] in paths:
                line = f"{words[0]} {paths[words[0]]}"
            elif mutual_tls and words and words[0] in ("require_certificate", "use_identity_as_username"):
                line = f"{words[0]} true"
            lines.append(line)
        if os.geteuid() == 0:
            # As root Mosquitto would switch to its own user, which cannot read this test's private files.
            lines.append("user root")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "mosquitto.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=out, stderr=out)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Client:
    """A paho client over TLS (the broker's certificate verified against the test CA)."""

    def __init__(
        self,
        port: int,
        pki: Pki,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: bool = True,
        client_cert: bool = False,
    ) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[Any]] = queue.Queue()
        self.connected = threading.Event()
        self.refused: Any = None
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"deploy-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.c.username_pw_set(user, password if password is not None else PASSWORDS[user])
        if tls:
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            if client_cert:
                ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
            self.c.tls_set_context(ctx)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_a: self.connected.set()
        self.c.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(list(codes))
        self.c.on_message = lambda _c, _u, m: self.inbox.put((m.topic, bytes(m.payload)))
        try:
            self.c.connect("127.0.0.1", port, keepalive=10)
        except (ssl.SSLError, OSError) as exc:  # the TLS handshake itself was refused
            self.refused = exc
            self.connected.set()
            return
        self.c.loop_start()

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason
        self.connected.set()

    def accepted(self) -> bool:
        assert self.connected.wait(WAIT), "neither CONNACK nor a refusal"
        return self.refused is None and self.c.is_connected()

    def subscribe(self, *filters: str) -> None:
        self.c.subscribe([(f, 1) for f in filters])
        codes = self.subacks.get(timeout=WAIT)
        assert not any(c.is_failure for c in codes), codes

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait_listening(broker: RunningBroker) -> None:
    import socket
    import time

    deadline = time.monotonic() + 15
    for port in broker.ports:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if broker.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start:\n{broker.log.read_text()}") from None
                time.sleep(0.02)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _broker(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, *, mutual_tls: bool
) -> Iterator[RunningBroker]:
    b = RunningBroker(tmp_path_factory.mktemp("broker"), pki, mutual_tls=mutual_tls)
    try:
        _wait_listening(b)
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningBroker]:
    yield from _broker(tmp_path_factory, pki, mutual_tls=False)


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningBroker]:
    yield from _broker(tmp_path_factory, pki, mutual_tls=True)


def test_the_tls_example_has_no_plain_text_listener_and_needs_credentials() -> None:
    settings: dict[str, list[list[str]]] = {}
    for line in EXAMPLE.read_text().splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            settings.setdefault(words[0], []).append(words[1:])
    assert settings["allow_anonymous"] == [["false"]]
    assert [w[0] for w in settings["listener"]] == ["8883", "8884"]
    # Each listener carries its own certificate: no listener without TLS.
    assert len(settings["certfile"]) == len(settings["keyfile"]) == len(settings["listener"])
    assert settings["acl_file"] == [["/etc/mosquitto/mes.acl"]]


def test_edges_and_central_talk_over_verified_tls_under_the_shipped_acl(
    broker: RunningBroker, pki: Pki
) -> None:
    edge_port, central_port = broker.ports
    central = Client(central_port, pki, user="mes-central")
    edge_a = Client(edge_port, pki, user="edge-a")
    try:
        assert central.accepted() and edge_a.accepted()
        central.subscribe(topics.events_subscription("mes", "central"))
        edge_a.publish(topics.events("edge-b"), b"forged")
        edge_a.publish(topics.events("edge-a"), b"own")
        assert central.inbox.get(timeout=WAIT) == (topics.events("edge-a"), b"own")
        assert central.inbox.empty()
    finally:
        central.close()
        edge_a.close()


def test_plain_text_anonymous_and_wrong_password_clients_are_refused(broker: RunningBroker, pki: Pki) -> None:
    edge_port, _ = broker.ports
    attempts = [
        Client(edge_port, pki, user="edge-a", tls=False),  # plain MQTT on the TLS port
        Client(edge_port, pki),  # TLS, no credentials
        Client(edge_port, pki, user="edge-a", password="wrong"),
    ]
    try:
        for c in attempts:
            assert not c.accepted()
    finally:
        for c in attempts:
            c.close()


def test_with_mutual_tls_the_certificate_is_the_edge_identity(mtls_broker: RunningBroker, pki: Pki) -> None:
    edge_port, central_port = mtls_broker.ports
    no_cert = Client(edge_port, pki, user="edge-a")  # a correct password no longer suffices
    central = Client(central_port, pki, user="mes-central")  # central's listener asks for no certificate
    # The CN (edge-a) is the user name: no password; the ACL's %u binds the certificate to edge-a's topics.
    edge_a = Client(edge_port, pki, client_cert=True)
    try:
        assert not no_cert.accepted()
        assert central.accepted() and edge_a.accepted()
        central.subscribe(topics.events("+"))
        edge_a.publish(topics.events("edge-b"), b"forged")
        edge_a.publish(topics.events("edge-a"), b"own")
        assert central.inbox.get(timeout=WAIT) == (topics.events("edge-a"), b"own")
        assert central.inbox.empty()
    finally:
        for c in (no_cert, central, edge_a):
            c.close()


async def _central_mqtt_state(
    aiohttp_client: Any, settings: Settings, connected_within: float
) -> tuple[Any, str]:
    """A real central (app and MQTT consumer): its MQTT state once connected, or when the wait is over."""
    database = create_database(settings.database_url, pool_size=2)
    api = Api(await aiohttp_client(create_app(settings, database=database)))
    deadline = time.monotonic() + connected_within
    while True:
        state = (await api.get("/health")).data["mqtt"]
        if state == "connected" or time.monotonic() > deadline:
            return database, state
        await asyncio.sleep(0.1)


async def test_central_presents_its_client_certificate_where_the_listener_requires_one(
    mtls_broker: RunningBroker, pki: Pki, aiohttp_client: Any, sqlite_template: Path, tmp_path: Path
) -> None:
    """Central on the mutual-TLS edge listener: its certificate (CN=mes-central) is its identity under the
    shipped ACL — it reads edge-a's batch and answers on edge-a's acks topic. Without the certificate the
    broker refuses it, and a certificate beside a plain URL is refused by the settings."""
    edge_port, _ = mtls_broker.ports
    shutil.copyfile(sqlite_template, tmp_path / "mes.db")
    tls = {"mqtt_url": f"mqtts://127.0.0.1:{edge_port}", "mqtt_ca_file": str(pki.ca)}
    base = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'mes.db'}", migrate_on_start=False)
    with_cert = base.model_copy(
        update={**tls, "mqtt_cert_file": str(pki.central_cert), "mqtt_key_file": str(pki.central_key)}
    )
    database, state = await _central_mqtt_state(aiohttp_client, with_cert, connected_within=15)
    edge_a = Client(edge_port, pki, client_cert=True)
    try:
        assert state == "connected"
        assert edge_a.accepted()
        edge_a.subscribe(topics.acks("edge-a"))
        batch = {
            "schemaVersion": 1,
            "edgeId": "edge-a",
            "batchId": uuid.uuid4().hex,
            "sentAt": now(),
            "events": [ingest_event(1, "SN-MTLS", "RUN-MTLS")],
        }
        edge_a.publish(topics.events("edge-a"), json.dumps(batch).encode())
        topic, payload = await asyncio.to_thread(edge_a.inbox.get, True, WAIT)
        ack = json.loads(payload)
        assert topic == topics.acks("edge-a") and ack["batchId"] == batch["batchId"]
        assert (ack["results"][0]["status"], ack["results"][0]["code"]) == ("REJECTED", "EDGE_NOT_REGISTERED")
    finally:
        edge_a.close()
        await database.dispose()

    database, state = await _central_mqtt_state(
        aiohttp_client, base.model_copy(update=tls), connected_within=3
    )
    await database.dispose()
    assert state != "connected"  # the listener wants a certificate; a central without one stays out

    with pytest.raises(ValueError, match="mqtt_cert_file: TLS settings need an mqtts://"):
        Settings(
            database_url=base.database_url,
            mqtt_url=f"mqtt://127.0.0.1:{edge_port}",
            mqtt_cert_file=str(pki.central_cert),
        )
    with pytest.raises(ValueError, match="mqtt_key_file: needs mqtt_cert_file"):
        Settings(database_url=base.database_url, **tls, mqtt_key_file=str(pki.central_key))
