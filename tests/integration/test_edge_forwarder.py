"""The edge agent's forwarder against a real broker, a test acker playing central (tests/edge_acker.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge.agent import Agent
from edge.config import EdgeConfig, parse_config
from edge.outbox import NewEvent
from shared.events import EventBatch
from tests.brokers import Broker, Tls, User, default_kind, make_tls
from tests.edge_acker import Acker, Decision, StatusWatcher

EDGE = "edge-t"


def edge_config(
    tmp_path: Path,
    broker: Broker,
    *,
    mqtt_extra: dict | None = None,
    outbox_extra: dict | None = None,
    **forwarder: Any,
) -> EdgeConfig:
    fwd = {
        "ack_timeout": 1.0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.3,
        "retry_min": 0.05,
        "retry_max": 0.2,
        "status_interval": 60,
    } | forwarder
    return parse_config(
        {
            "edge_id": EDGE,
            "line_code": "LINE-B",
            "outbox": {"path": str(tmp_path / "outbox.db")} | (outbox_extra or {}),
            "mqtt": {"url": broker.url, "keepalive": 5} | (mqtt_extra or {}),
            "forwarder": fwd,
        }
    )


def events(n: int, prefix: str = "e", kind: str = "INGEST", start: int = 0) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        NewEvent(
            f"{prefix}{i}", kind, now, "ST-B-PRINT-01", {"eventType": "AUTO", "payload": {"sn": f"SN{i}"}}
        )
        for i in range(start, start + n)
    ]


async def until(cond: Callable[[], Any], within: float = 20.0, what: str = "condition") -> None:
    """Polls with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def backlog(agent: Agent) -> int:
    assert agent.outbox is not None
    return (await agent.outbox.stats()).backlog


@asynccontextmanager
async def running(cfg: EdgeConfig, *, connected: bool = True) -> AsyncIterator[Agent]:
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.started.wait(), 10)
    try:
        if connected:
            await until(lambda: agent.forwarder is not None and agent.forwarder.link.ready, what="connection")
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def append(agent: Agent, evs: list[NewEvent]) -> None:
    assert agent.outbox is not None
    assert await agent.outbox.append(evs)


async def drained(agent: Agent, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while await backlog(agent):
        assert time.monotonic() < deadline, f"outbox not drained: backlog {await backlog(agent)}"
        await asyncio.sleep(0.02)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


@pytest.fixture
def acker(broker: Broker) -> Iterator[Acker]:
    a = Acker(broker, EDGE).start()
    yield a
    a.stop()


# ---- delivery ------------------------------------------------------------------------------------------


# MQTT 5 needs Mosquitto (amqtt speaks 3.1.1 only): like PostgreSQL for the database tests, it is exercised
# whenever the run has Mosquitto, which MES_REQUIRE_SERVICES=1 (CI) guarantees.
VARIANTS = [("default", "3.1.1"), ("amqtt", "3.1.1")] + (
    [("mosquitto", "5")] if default_kind() == "mosquitto" else []
)


@pytest.mark.parametrize(("kind", "protocol"), VARIANTS)
async def test_events_reach_central_in_valid_batches_and_leave_the_outbox_after_the_ack(
    tmp_path: Path, kind: str, protocol: str
) -> None:
    broker = Broker(tmp_path / "broker", kind=None if kind == "default" else kind)
    broker.start()
    acker = Acker(broker, EDGE).start()
    try:
        cfg = edge_config(tmp_path, broker, mqtt_extra={"protocol": protocol}, batch_max_events=500)
        async with running(cfg) as agent:
            await append(agent, events(1200))
            await drained(agent)
            got = acker.batches()
            assert all(len(b.events) <= 500 for b in got) and len(got) >= 3
            for b in got:
                assert b.schema_version == 1 and b.edge_id == EDGE and b.line_code == "LINE-B"
                assert [e.seq for e in b.events] == sorted(e.seq for e in b.events)
            assert sorted(acker.accepted) == sorted(f"e{i}" for i in range(1200))
            assert set(acker.accepted.values()) == {1}
            seqs = [acker.applied[f"e{i}"] for i in range(1200)]
            assert seqs == sorted(seqs) and len(set(seqs)) == 1200
            sample = next(e for e in acker.events() if e.event_id == "e7")
            assert sample.kind == "INGEST" and sample.station_code == "ST-B-PRINT-01"
            assert sample.payload == {"eventType": "AUTO", "payload": {"sn": "SN7"}}
    finally:
        acker.stop()
        broker.kill()


async def test_nothing_leaves_the_outbox_without_an_ack_and_a_silent_batch_is_resent_identically(
    tmp_path: Path, broker: Broker
) -> None:
    silent = {"on": True}
    acker = Acker(broker, EDGE, script=lambda b, n, applied: None if silent["on"] else {}).start()
    try:
        async with running(edge_config(tmp_path, broker, ack_timeout=0.3)) as agent:
            await append(agent, events(20))
            await until(lambda: len(acker.received) >= 3, what="two resends")
            assert await backlog(agent) == 20  # a PUBACK is not an ack
            first, second, third = acker.received[:3]
            assert first.batch.batch_id == second.batch.batch_id == third.batch.batch_id
            assert [e.event_id for e in first.batch.events] == [e.event_id for e in third.batch.events]
            assert first.batch.sent_at == third.batch.sent_at  # the very same message again
            assert agent.outbox is not None
            assert all(r.attempts >= 2 for r in await agent.outbox.head(50))  # each timeout is counted
            silent["on"] = False
            await drained(agent)
            assert set(acker.accepted.values()) == {1} and len(acker.accepted) == 20
    finally:
        acker.stop()


async def test_each_ack_status_does_what_the_protocol_says(tmp_path: Path, broker: Broker) -> None:
    def script(batch: EventBatch, attempt: int, applied: dict[str, int]) -> dict[str, Decision]:
        if attempt == 1:
            return {
                "e1": ("DUPLICATE", None, None),
                "e2": ("REJECTED", "UNIT_NOT_FOUND", "unit SN2 not found"),
                "e3": ("RETRY", "DB_UNAVAILABLE", "database down"),
            }
        return {}

    acker = Acker(broker, EDGE, script=script).start()
    try:
        async with running(edge_config(tmp_path, broker)) as agent:
            assert agent.outbox is not None
            await append(agent, events(4))
            await until(lambda: len(acker.received) >= 2, what="the RETRY resend")
            first, again = acker.received[0].batch, acker.received[1].batch
            # RETRY: the same batch, reduced to what is still unsettled, goes again (same batchId).
            assert again.batch_id == first.batch_id and [e.event_id for e in again.events] == ["e3"]
            await drained(agent)
            assert acker.accepted == {"e0": 1, "e3": 1}  # e1 DUPLICATE was deleted as well
            (dead,) = await agent.outbox.dead_letters()
            assert (dead.event_id, dead.code, dead.message) == ("e2", "UNIT_NOT_FOUND", "unit SN2 not found")
            stats = await agent.outbox.stats()
            assert (stats.backlog, stats.delivered_total, stats.dead_letters) == (0, 3, 1)
    finally:
        acker.stop()


async def test_only_one_batch_is_ever_in_flight(tmp_path: Path, broker: Broker) -> None:
    acker = Acker(broker, EDGE, delay=0.05).start()
    try:
        async with running(edge_config(tmp_path, broker, batch_max_events=100)) as agent:
            for k in range(10):  # appended while batches are in flight
                await append(agent, events(100, start=k * 100))
            await drained(agent)
            assert len(acker.received) >= 10
            assert acker.overlaps == []
            assert len(acker.accepted) == 1000
    finally:
        acker.stop()


async def test_a_broker_killed_mid_stream_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, broker: Broker
) -> None:
    acker = Acker(broker, EDGE, delay=0.02).start()
    try:
        cfg = edge_config(tmp_path, broker, batch_max_events=50, ack_timeout=0.5)
        async with running(cfg) as agent:
            await append(agent, events(1500))
            await until(lambda: len(acker.received) >= 3, what="the first batches")
            broker.kill()  # SIGKILL: in-flight publishes and acks are lost with it
            await until(lambda: not agent.forwarder.link.ready, what="the edge to notice")  # type: ignore[union-attr]
            await append(agent, events(300, start=1500))  # the line keeps producing
            assert await backlog(agent) > 300
            broker.start()
            acker.wait_subscribed()
            await drained(agent, within=60)
            assert sorted(acker.applied) == sorted(f"e{i}" for i in range(1800))
            assert set(acker.accepted.values()) == {1}
            assert acker.overlaps == []  # a lost batch is sent again alone, never beside the next one
            assert agent.forwarder is not None and agent.forwarder.link.connects >= 2
    finally:
        acker.stop()


async def test_live_events_overtake_the_backlog_but_state_events_and_refusals_keep_their_order(
    tmp_path: Path, broker: Broker
) -> None:
    def script(batch: EventBatch, attempt: int, applied: dict[str, int]) -> dict[str, Decision]:
        # Like central: a unit's live event is refused while its older track-in is still unapplied.
        ids = {e.event_id for e in batch.events}
        if "live-child0" in ids and "b-last0" not in applied and "b-last0" not in ids:
            return {"live-child0": ("REJECTED", "UNIT_NOT_AT_STATION", "no track-in yet")}
        return {}

    acker = Acker(broker, EDGE, script=script, delay=0.03)
    cfg = edge_config(tmp_path, broker, batch_max_events=40)
    broker.kill()  # an outage: the backlog builds up
    async with running(cfg, connected=False) as agent:
        await append(agent, events(800, prefix="b"))
        await append(agent, events(1, prefix="b-last"))
        broker.start()
        acker.start()
        try:
            await until(lambda: len(acker.received) >= 3, what="the drain to start")
            n_before = len(acker.received)
            live = [
                *events(1, prefix="live-child"),
                *events(1, prefix="live-status", kind="EQUIPMENT_STATUS"),
            ]
            await append(agent, live)
            await drained(agent, within=60)
            batches = acker.batches()
            first_live = next(
                i for i, b in enumerate(batches) if "live-child0" in {e.event_id for e in b.events}
            )
            # Sent right after the batch in flight, not behind 800 backlog events (20 batches).
            assert first_live <= n_before + 1 < 15
            # Refused ahead of its elder, it was not dead-lettered but sent again in order, then applied.
            assert agent.outbox is not None and await agent.outbox.dead_letters() == []
            assert acker.accepted["live-child0"] == 1
            order = list(acker.applied)
            assert order.index("b-last0") < order.index("live-child0")
            # A state event never overtakes: it is applied after every older event.
            assert order.index("live-status0") > order.index("b-last0")
            assert len(acker.accepted) == 803 and set(acker.accepted.values()) == {1}
        finally:
            acker.stop()


async def test_an_event_too_large_for_a_batch_is_dead_lettered_and_the_rest_flows(
    tmp_path: Path, broker: Broker, acker: Acker
) -> None:
    async with running(edge_config(tmp_path, broker, batch_max_bytes=8192)) as agent:
        assert agent.outbox is not None
        now = datetime.now(UTC)
        huge = NewEvent("huge", "DEVICE_DATA", now, "ST-1", {"blob": "x" * 10_000})
        await append(agent, [*events(30), huge, *events(30, start=30)])
        await drained(agent)
        assert len(acker.accepted) == 60
        assert all(r.size <= 8192 for r in acker.received)
        (dead,) = await agent.outbox.dead_letters()
        assert dead.event_id == "huge" and dead.code == "EVENT_TOO_LARGE"


# ---- status --------------------------------------------------------------------------------------------


async def test_status_is_retained_online_republished_on_change_and_offline_at_stop(
    tmp_path: Path, broker: Broker
) -> None:
    def refuse_all(batch: EventBatch, attempt: int, applied: dict[str, int]) -> dict[str, Decision]:
        return {e.event_id: ("REJECTED", "UNIT_NOT_FOUND", "?") for e in batch.events}

    acker = Acker(broker, EDGE, script=refuse_all).start()
    watcher = StatusWatcher(broker)
    try:
        async with running(edge_config(tmp_path, broker, status_interval=600)) as agent:
            await until(lambda: watcher.messages, what="the first status")
            online = watcher.messages[-1]
            assert (
                online.state == "ONLINE" and online.version == agent.version and online.started_at is not None
            )
            assert (online.backlog, online.dead_letters, online.devices, online.alarms) == (0, 0, [], [])
            await append(agent, events(2))
            # On change (a dead letter), not after status_interval (600 s).
            await until(lambda: watcher.messages[-1].dead_letters == 2, what="the status update")
        await until(lambda: watcher.messages[-1].state == "OFFLINE", what="the OFFLINE status")
        assert watcher.messages[-1].dead_letters == 2
        late = StatusWatcher(broker)  # retained: a newcomer learns the last state at once
        try:
            await until(lambda: late.messages, what="the retained status")
            assert late.messages[0].state == "OFFLINE"
        finally:
            late.stop()
    finally:
        watcher.stop()
        acker.stop()


async def test_a_full_outbox_raises_an_alarm_in_the_status(tmp_path: Path, broker: Broker) -> None:
    acker = Acker(broker, EDGE, script=lambda b, n, a: None).start()  # central does not answer
    watcher = StatusWatcher(broker)
    cfg = edge_config(tmp_path, broker, outbox_extra={"max_events": 5})
    try:
        async with running(cfg) as agent:
            assert agent.outbox is not None
            assert await agent.outbox.append(events(5))
            assert not await agent.outbox.append(events(1, start=5))  # refused: nothing stored is dropped
            await until(
                lambda: watcher.messages and "OUTBOX_FULL" in watcher.messages[-1].alarms, what="alarm"
            )
            assert watcher.messages[-1].backlog == 5
    finally:
        watcher.stop()
        acker.stop()


# ---- security ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


async def test_tls_with_credentials_delivers_and_bad_credentials_are_refused(
    tmp_path: Path, tls_files: Tls
) -> None:
    users = [User("edge-t", "edge-secret"), User("central", "central-secret")]
    broker = Broker(tmp_path / "broker", tls=tls_files, users=users)
    broker.start()
    acker = Acker(broker, EDGE, user=users[1]).start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("edge-secret\n")
        good = {"ca_file": str(tls_files.ca), "username": "edge-t", "password_file": str(secret)}
        async with running(edge_config(tmp_path, broker, mqtt_extra=good)) as agent:
            await append(agent, events(10))
            await drained(agent)
            assert len(acker.accepted) == 10
        bad = {"ca_file": str(tls_files.ca), "username": "edge-t", "password": "wrong"}
        async with running(edge_config(tmp_path, broker, mqtt_extra=bad), connected=False) as agent:
            await append(agent, events(3, start=10))
            link = agent.forwarder.link  # type: ignore[union-attr]
            await until(lambda: link.last_error is not None, what="the refusal")
            assert "not authorized" in link.last_error.lower() and not link.ready  # type: ignore[union-attr]
            assert await backlog(agent) == 3
    finally:
        acker.stop()
        broker.kill()


async def test_tls_never_falls_back_to_plain_text(
    tmp_path: Path, broker: Broker, acker: Acker, tls_files: Tls
) -> None:
    # The broker listens in plain text; the edge is configured for TLS: it must not connect at all.
    tls_url = broker.url.replace("mqtt://", "mqtts://")
    cfg = edge_config(tmp_path, broker, mqtt_extra={"url": tls_url, "ca_file": str(tls_files.ca)})
    async with running(cfg, connected=False) as agent:
        await append(agent, events(5))
        link = agent.forwarder.link  # type: ignore[union-attr]
        await until(lambda: link.last_error is not None, what="the TLS failure")
        # The TLS handshake fails (how depends on the broker: an SSL error or a reset): never a session.
        assert not link.ready and link.connects == 0
        assert acker.received == [] and await backlog(agent) == 5
    # Likewise a TLS broker with an untrusted certificate (no CA given → system trust store) is refused.
    tls_broker = Broker(tmp_path / "tls-broker", tls=tls_files)
    tls_broker.start()
    try:
        cfg = edge_config(tmp_path / "b", tls_broker)
        async with running(cfg, connected=False) as agent:
            link = agent.forwarder.link  # type: ignore[union-attr]
            await until(lambda: link.last_error is not None, what="the certificate failure")
            assert "CERTIFICATE_VERIFY_FAILED" in link.last_error  # type: ignore[operator]
    finally:
        tls_broker.kill()
