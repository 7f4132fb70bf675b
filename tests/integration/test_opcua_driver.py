"""OPC UA driver against a real asyncua server: subscriptions, reconnect, outage catch-up, fallback, security.

One server for the module (building an asyncua address space takes seconds); each test resets its values.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.acquisition import Acquisition
from edge.device_config import OpcuaDevice, RuleConfig
from edge.drivers import DeviceError
from edge.drivers.opcua import EventNotice, OpcuaDriver
from edge.rules import NewEvent

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_URI = "urn:mes:edge:test"
BUFFER = 4


class Users:
    """Anonymous sessions are allowed; a named user must give the right password."""

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            return User(role=UserRole.User)
        return User(role=UserRole.User, name=username) if (username, password) == ("edge", "s3cret") else None


@dataclass
class Machine:
    server: Server
    endpoint: str
    idx: int
    event_type: ua.NodeId
    client_cert: Path
    client_key: Path

    def node(self, name: str) -> Any:
        return self.server.get_node(f"ns={self.idx};s={name}")

    async def put(self, name: str, value: Any, vt: ua.VariantType) -> None:
        await self.node(name).write_value(ua.Variant(value, vt))

    async def record(self, n: int, sn: str, result: str = "PASS") -> None:
        """A tester's record: fields in the buffer slot and as last record, then the count (a PLC's order)."""
        for where in (f"Records[{n % BUFFER}]", "Last"):
            await self.put(f"M.{where}.SN", sn, ua.VariantType.String)
            await self.put(f"M.{where}.Result", result, ua.VariantType.String)
        await self.put("M.Count", n, ua.VariantType.UInt32)

    def subscriptions(self) -> int:
        return len(self.server.iserver.subscription_service.subscriptions)


def _pem_pair(tmp: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {},
        [x509.UniformResourceIdentifier(uri), x509.DNSName(socket.gethostname())],
        extended=[usage],
    )
    cert_path, key_path = tmp / f"{name}.der", tmp / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def machine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Machine]:
    tmp = tmp_path_factory.mktemp("opcua")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy(
        [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    )
    server_uri = "urn:mes:test:machine"
    await server.set_application_uri(server_uri)
    scert, skey = _pem_pair(tmp, "server", server_uri, ExtendedKeyUsageOID.SERVER_AUTH)
    await server.load_certificate(str(scert))
    await server.load_private_key(str(skey))
    ccert, ckey = _pem_pair(tmp, "client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
    idx = await server.register_namespace("urn:mes:test")
    obj = await server.nodes.objects.add_object(ua.NodeId("M", idx), "M")
    await obj.add_variable(ua.NodeId("M.Count", idx), "Count", ua.Variant(0, ua.VariantType.UInt32))
    await obj.add_variable(ua.NodeId("M.Flag", idx), "Flag", False)
    for where in ["Last", *(f"Records[{k}]" for k in range(BUFFER))]:
        await obj.add_variable(ua.NodeId(f"M.{where}.SN", idx), f"{where}.SN", "")
        await obj.add_variable(ua.NodeId(f"M.{where}.Result", idx), f"{where}.Result", "")
    etype = await server.create_custom_event_type(idx, "BoardDone", ua.ObjectIds.BaseEventType)
    await server.start()
    m = Machine(server, endpoint, idx, etype.nodeid, ccert, ckey)
    yield m
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(machine: Machine) -> Machine:
    await machine.put("M.Count", 0, ua.VariantType.UInt32)
    await machine.put("M.Flag", False, ua.VariantType.Boolean)
    return machine


def device(m: Machine, **over: Any) -> OpcuaDevice:
    signals = [
        {"name": "count", "node": f"ns={m.idx};s=M.Count", "type": "uint32"},
        {"name": "flag", "node": f"ns={m.idx};s=M.Flag"},
        {"name": "sn", "node": f"ns={m.idx};s=M.Records[{{slot}}].SN"},
        {"name": "result", "node": f"ns={m.idx};s=M.Records[{{slot}}].Result"},
        {"name": "last_sn", "node": f"ns={m.idx};s=M.Last.SN"},
    ]
    base: dict[str, Any] = {
        "id": "ict",
        "protocol": "opcua",
        "endpoint": m.endpoint,
        "timeout": 2.0,
        "poll_interval": 0.1,
        "publishing_interval": 0.05,
        "watchdog_interval": 0.3,
        "reconnect_min": 0.1,
        "reconnect_max": 0.5,
        "signals": signals,
    }
    return OpcuaDevice.model_validate({**base, **over})


def record_rule(**over: Any) -> RuleConfig:
    base: dict[str, Any] = {
        "name": "ict-record",
        "device": "ict",
        "trigger": {"kind": "counter", "signal": "count"},
        "ingest_type": "TEST",
        "station_code": "ST-B-ICT-01",
        "fields": {"sn": "sn", "result": "result"},
        "record_buffer": {"size": BUFFER},
    }
    return RuleConfig.model_validate({**base, **over})


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        res = check()
        if isinstance(res, Awaitable):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


class Running:
    """An Acquisition over one device with a list sink, running in the background."""

    def __init__(self, dev: OpcuaDevice, rules: list[RuleConfig]) -> None:
        self.events: list[NewEvent] = []
        self.acq = Acquisition(SimpleNamespace(devices=[dev], rules=rules), self._sink)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _sink(self, evs: list[NewEvent]) -> bool:
        self.events.extend(evs)
        return True

    async def __aenter__(self) -> Running:
        self._task = asyncio.create_task(self.acq.run(self._stop))
        await eventually(lambda: self.acq.device_states()[0].state == "CONNECTED")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def sns(self) -> list[str]:
        return [e.payload["payload"]["sn"] for e in self.events if e.kind == "INGEST"]


# --- subscriptions --------------------------------------------------------------------------------


async def test_first_notification_is_the_current_value_not_an_event(fresh: Machine) -> None:
    await fresh.record(5, "SN-OLD")  # made before the agent started: not reported
    async with Running(device(fresh), [record_rule()]) as run:
        await eventually(lambda: fresh.subscriptions() == 1)
        await asyncio.sleep(0.4)  # several publishing intervals: the initial notification has arrived
        assert run.events == []
        await fresh.record(6, "SN-0006", "FAIL")
        await eventually(lambda: len(run.events) == 1)
        (ev,) = run.events
        assert ev.kind == "INGEST" and ev.payload["eventType"] == "TEST"
        assert ev.payload["payload"] == {
            "stationCode": "ST-B-ICT-01",
            "sn": "SN-0006",
            "testResultId": "ict-6",
            "result": "FAIL",
        }


async def test_subscriptions_are_recreated_after_the_server_restarts(fresh: Machine) -> None:
    drv = OpcuaDriver(device(fresh))
    drv.watch(["count"])
    try:
        first = await asyncio.wait_for(drv.next_update(), 15)
        assert isinstance(first, object) and getattr(first, "values", None) == {"count": 0}
        await eventually(lambda: fresh.subscriptions() == 1)
        await fresh.server.stop()
        await fresh.put("M.Count", 3, ua.VariantType.UInt32)  # the machine counts on while it is offline
        await fresh.server.start()
        values: list[int] = []
        while 3 not in values:
            update = await asyncio.wait_for(drv.next_update(), 20)
            assert not isinstance(update, EventNotice)
            values.append(update.values["count"])
        # A fresh client and a fresh subscription (the old session died with the server).
        assert drv.health.connects == 2 and drv.subscriptions == 2 and not drv.polling
        await eventually(lambda: fresh.subscriptions() == 1)
        await fresh.put("M.Count", 4, ua.VariantType.UInt32)
        while 4 not in values:
            update = await asyncio.wait_for(drv.next_update(), 5)
            assert not isinstance(update, EventNotice)
            values.append(update.values["count"])
        assert values == sorted(values)  # updates stay in time order across the reconnect
    finally:
        await drv.close()
    assert drv.state == "STOPPED"


async def test_records_made_during_an_outage_are_read_back_from_the_buffer(
    fresh: Machine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.opcua")
    async with Running(device(fresh), [record_rule()]) as run:
        await fresh.record(1, "SN-0001")
        await eventually(lambda: run.sns() == ["SN-0001"])
        await fresh.server.stop()
        await eventually(lambda: run.acq.device_states()[0].state == "DISCONNECTED")
        for n in (2, 3, 4):
            await fresh.record(n, f"SN-{n:04d}")
        await fresh.server.start()
        await eventually(lambda: run.sns() == ["SN-0001", "SN-0002", "SN-0003", "SN-0004"])
        assert run.acq.device_states()[0].state == "CONNECTED" and run.acq.warnings() == []
    msgs = [r.getMessage() for r in caplog.records if r.name == "edge.opcua"]
    assert sum("connection lost" in m for m in msgs) == 1 and sum("recovered" in m for m in msgs) == 1


async def test_without_a_buffer_a_jump_during_an_outage_is_one_event_and_a_gap(fresh: Machine) -> None:
    rule = record_rule(fields={"sn": "last_sn"}, record_buffer=None)
    async with Running(device(fresh), [rule]) as run:
        await fresh.server.stop()
        for n in (1, 2, 3):
            await fresh.record(n, f"SN-{n:04d}")
        await fresh.server.start()
        await eventually(lambda: len(run.events) == 1)
        assert run.sns() == ["SN-0003"]
        assert [w.split(":")[0] for w in run.acq.warnings()] == ["GAP ict/ict-record"]


async def test_polled_fallback_when_subscriptions_are_off(fresh: Machine) -> None:
    rule = record_rule(
        name="edge",
        trigger={"kind": "rising_edge", "signal": "flag"},
        fields={"sn": "last_sn"},
        record_buffer=None,
    )
    async with Running(device(fresh, subscribe=False), [rule]) as run:
        await asyncio.sleep(0.3)
        assert fresh.subscriptions() == 0
        await fresh.put("M.Last.SN", "SN-EDGE", ua.VariantType.String)
        await fresh.put("M.Flag", True, ua.VariantType.Boolean)
        await eventually(lambda: run.sns() == ["SN-EDGE"])
        await fresh.put("M.Flag", False, ua.VariantType.Boolean)
        await asyncio.sleep(0.3)
        assert len(run.events) == 1  # the falling edge is not an event


async def test_node_event_trigger(fresh: Machine) -> None:
    rule = record_rule(
        name="done-event",
        trigger={"kind": "node_event", "node": "i=2253", "event_type": fresh.event_type.to_string()},
        fields={"sn": "last_sn"},
        record_buffer=None,
    )
    async with Running(device(fresh), [rule]) as run:
        await eventually(lambda: fresh.subscriptions() == 1)
        gen = await fresh.server.get_event_generator(fresh.event_type, fresh.server.nodes.server)
        for sn in ("SN-E1", "SN-E2"):
            await fresh.put("M.Last.SN", sn, ua.VariantType.String)
            await gen.trigger(message="board done")
            await eventually(lambda sn=sn: sn in run.sns())
        assert run.sns() == ["SN-E1", "SN-E2"]
        assert len({e.event_id for e in run.events}) == 2


# --- security -------------------------------------------------------------------------------------


async def test_sign_and_encrypt_with_user_and_password(fresh: Machine) -> None:
    dev = device(
        fresh,
        username="edge",
        password="s3cret",
        security={
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": str(fresh.client_cert),
            "private_key": str(fresh.client_key),
            "application_uri": CLIENT_URI,
        },
    )
    drv = OpcuaDriver(dev)
    drv.watch(["count"])
    try:
        await fresh.put("M.Count", 11, ua.VariantType.UInt32)
        first = await asyncio.wait_for(drv.next_update(), 20)
        assert getattr(first, "values", None) == {"count": 11}
        assert drv.state == "CONNECTED"
        assert (
            drv._client is not None
            and drv._client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        )
    finally:
        await drv.close()


async def test_a_refused_login_is_reported_and_retried_with_backoff(fresh: Machine) -> None:
    drv = OpcuaDriver(device(fresh, username="edge", password="wrong", reconnect_min=0.2, reconnect_max=0.4))
    drv.watch(["count"])
    task = asyncio.create_task(drv.next_update())
    try:
        await eventually(lambda: drv.health.state == "DISCONNECTED")
        assert "BadUserAccessDenied" in (drv.error or "")
        await asyncio.sleep(1.0)
        assert not task.done() and drv.health.backoff.attempt <= 8  # a few tries a second, not a hot loop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await drv.close()
    with pytest.raises(DeviceError):
        await drv.read(["count"])
