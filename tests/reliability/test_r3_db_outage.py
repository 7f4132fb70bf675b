"""R3 (quality-bars.md): the database unavailable for 30 s → REST answers 503, MQTT events stay queued
(RETRY), no loss, recovers without a restart.

Set-up: a real `mes-central serve` process on its own PostgreSQL database, reached through a TCP proxy the
test controls (tests/tcp_proxy.py), a real Mosquitto, the simulated LINE-B (the ground truth) and a real
`mes-edge run` agent. While the line produces, the database goes away, without central being restarted:

1. a pulled cable (`TcpProxy.cut()`): connections stay open and silent, new ones are accepted and never
   answered — central can only find out by its own timeouts, the hard case;
2. a database restart (the proxy closed: every connection dropped, new ones refused), then back;
3. an instant restart (`TcpProxy.reset()`: every connection dropped, the server back at once), which REST must
   not even notice.

During 1 and 2 REST must answer 503 SERVICE_UNAVAILABLE within a bounded time (never hang), /api/health must
say the database is down, the edge's batches get RETRY (or no ack) and stay in its outbox — nothing rejected
or dead-lettered. After each, REST answers 200 again from the same central process; at the end the backlog
drains and central holds every machine record exactly once.

PostgreSQL only: a SQLite file has no connection to lose. Without PostgreSQL the test is skipped (and says
so); MES_REQUIRE_SERVICES=1 (CI) makes that an error. Sizes: the cut lasts 30 s in full (`make
reliability`), 6 s reduced; the restart 10 s / 3 s.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import paho.mqtt.client as mqtt
import pytest

from central.demo_line import _session, _sign_in
from shared import topics
from tests import services
from tests.brokers import Broker
from tests.e2e.edge_system import (
    EDGE_ID,
    PASSWORD,
    PLANNER,
    ROUTE,
    Line,
    Rest,
    Stack,
    assert_central_matches_truth,
    eventually,
    records_of,
)
from tests.reliability.conftest import Recorder
from tests.reliability.figures import size
from tests.tcp_proxy import TcpProxy

CUT = size(6.0, 30.0)  # seconds of pulled cable between central and PostgreSQL
RESTART = size(3.0, 10.0)  # seconds the database refuses connections (a restart)
# Slower than E1–E5's 0.3 s: a board spends a takt between two stations, and on a loaded machine the edge's
# readings of two devices can arrive further apart than that, which central rightly refuses (a later station
# first) — an acquisition race this test is not about.
TAKT = 0.5
# Enough boards that the line is still producing through both outages (one enters every TAKT seconds).
BOARDS = size(30, 100)
# A request during the outage must be answered 503 within this (the engine's connect/command timeouts are
# a few seconds; minutes would be a hang).
ANSWER_WITHIN = 15.0
PROBE_TIMEOUT = 120.0  # the probe's own limit: far above ANSWER_WITHIN, so a hang is measured, not hidden


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A dedicated, empty PostgreSQL database (`mes-central migrate` + `seed demo` fill it via the proxy)."""
    if not services.postgres_available():  # raises under MES_REQUIRE_SERVICES=1
        pytest.skip(
            "R3 needs PostgreSQL: a SQLite file has no connection to lose; not run (MES_REQUIRE_SERVICES=1 "
            "makes this an error)"
        )
    name = f"mes_r3_{uuid.uuid4().hex[:10]}"
    await services.pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        await services.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy(services.PG_HOST, services.PG_PORT)
    await p.start()
    yield p
    await p.stop()


class AckWatch:
    """Every ack central publishes to the edge, seen on the broker as a third party (paho thread)."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.acks: list[tuple[float, list[tuple[str, str | None]]]] = []  # (monotonic time, [(status, code)])
        self._ready = threading.Event()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"r3-acks-{uuid.uuid4().hex[:6]}"
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topics.acks(EDGE_ID), qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message
        self._broker = broker

    def start(self) -> None:
        self._client.connect(self._broker.host, self._broker.port)
        self._client.loop_start()
        assert self._ready.wait(10), "the ack watcher could not subscribe"

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        ack = orjson.loads(msg.payload)
        results = [(r["status"], r.get("code")) for r in ack["results"]]
        with self.lock:
            self.acks.append((time.monotonic(), results))

    def between(self, start: float, end: float) -> tuple[int, Counter[str]]:
        """(acks answering RETRY, event results by status) published in [start, end]."""
        with self.lock:
            picked = [results for t, results in self.acks if start <= t <= end]
        retry_acks = sum(1 for results in picked if any(status == "RETRY" for status, _ in results))
        return retry_acks, Counter(status for results in picked for status, _ in results)

    def codes(self, status: str) -> Counter[str | None]:
        with self.lock:
            return Counter(code for _, results in self.acks for s, code in results if s == status)


@dataclass
class Probe:
    started: float  # seconds since the outage began
    latency: float
    status: int
    code: str | None
    db: str | None = None  # /health's "db"


@dataclass
class Outage:
    """What one outage looked like from outside: REST and health answers, the edge's backlog."""

    name: str
    began: float = 0.0
    ended: float = 0.0
    rest: list[Probe] = field(default_factory=list)
    health: list[Probe] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    recovery: float = 0.0
    retry_acks: int = 0
    results: Counter[str] = field(default_factory=Counter)  # acks' event results while the database was away

    def during(self, probes: list[Probe]) -> list[Probe]:
        """Probes answered before the database came back (the ones that must be 503)."""
        return [p for p in probes if p.started + p.latency < self.ended - self.began]


async def _get(http: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
    async with http.get(path, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as r:
        return r.status, await r.json(content_type=None)


async def _probe_loop(
    outage: Outage, http: aiohttp.ClientSession, path: str, into: list[Probe], stop: asyncio.Event
) -> None:
    """Back-to-back requests until `stop`; each one's latency is what a user would wait."""
    while not stop.is_set():
        t = time.monotonic()
        status, body = await _get(http, path)
        error = body.get("error") or {}
        data = body.get("data") or {}
        into.append(Probe(t - outage.began, time.monotonic() - t, status, error.get("code"), data.get("db")))
        await asyncio.sleep(0.2)


def outbox_counts(path: Path) -> tuple[int, int]:
    """(events waiting, dead letters) in the running agent's outbox, read directly (WAL: readers never block
    the agent): a `mes-edge outbox stats` process every 0.3 s would load the machine the line runs on."""
    conn = sqlite3.connect(path, timeout=5)
    try:
        waiting = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        return int(waiting), int(dead)
    finally:
        conn.close()


async def _backlog_loop(line: Line, outage: Outage, stop: asyncio.Event) -> None:
    while not stop.is_set():
        waiting, dead = await asyncio.to_thread(outbox_counts, line.agent.outbox_path)
        assert dead == 0, f"{outage.name}: {dead} events dead-lettered at the edge"
        outage.backlog.append(waiting)
        await asyncio.sleep(0.3)


async def go_down(
    outage: Outage,
    seconds: float,
    down: Callable[[], Awaitable[None]],
    up: Callable[[], Awaitable[None]],
    *,
    api: aiohttp.ClientSession,
    raw: aiohttp.ClientSession,
    run_no: str,
    line: Line,
    acks: AckWatch,
) -> None:
    """The database away for `seconds` while REST, health and the edge's backlog are watched; then back, and
    the recovery time is until the first REST 200 (the same central process throughout)."""
    stop = asyncio.Event()
    await down()
    outage.began = time.monotonic()
    tasks = [
        asyncio.create_task(_probe_loop(outage, api, f"runs/{run_no}", outage.rest, stop)),
        asyncio.create_task(_probe_loop(outage, raw, "health", outage.health, stop)),
        asyncio.create_task(_backlog_loop(line, outage, stop)),
    ]
    await asyncio.sleep(seconds)
    await up()
    outage.ended = time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)

    async def answers() -> Any:
        status, _ = await _get(api, f"runs/{run_no}")
        return status == 200

    await eventually(answers, within=30, what=f"REST 200 again after the {outage.name}", every=0.1)
    outage.recovery = time.monotonic() - outage.ended
    outage.retry_acks, outage.results = acks.between(outage.began, outage.ended)


def check_outage(outage: Outage) -> dict[str, Any]:
    """REST answered 503 SERVICE_UNAVAILABLE, promptly; health said the database is down; the backlog grew."""
    rest = outage.during(outage.rest)
    assert rest, f"{outage.name}: no REST answer at all during the outage: {outage.rest}"
    wrong = [p for p in rest if (p.status, p.code) != (503, "SERVICE_UNAVAILABLE")]
    assert not wrong, f"{outage.name}: REST answers other than 503 SERVICE_UNAVAILABLE: {wrong}"
    slowest = max(p.latency for p in outage.rest)
    assert slowest <= ANSWER_WITHIN, f"{outage.name}: a request waited {slowest:.1f} s: {outage.rest}"
    first_503 = min(p.started + p.latency for p in rest)
    health = outage.during(outage.health)
    assert health and all(p.status == 503 and p.db == "down" for p in health), (outage.name, health)
    assert max(outage.backlog) > 0, f"{outage.name}: nothing waited in the edge's outbox: {outage.backlog}"
    # Central cannot decide without its database: RETRY or silence, never a refusal. (An ACCEPTED or DUPLICATE
    # may still arrive just after the cut, from a batch committed a moment before it.)
    assert outage.results["RETRY"] > 0 or not outage.results, (outage.name, outage.results)
    assert outage.results["REJECTED"] == 0, f"{outage.name}: events refused: {outage.results}"
    return {
        "seconds": round(outage.ended - outage.began, 2),
        "first_503_s": round(first_503, 2),
        "rest_503": len(rest),
        "rest_max_latency_s": round(slowest, 2),
        "health_down": len(health),
        "edge_backlog_max": max(outage.backlog),
        "recovery_s": round(outage.recovery, 2),
        "retry_acks": outage.retry_acks,
        "retry_events": outage.results["RETRY"],
    }


def duplicates_and_losses(traces: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(tracks beyond one per unit and step, unit steps with no track) over every board."""
    dup = lost = 0
    for trace in traces.values():
        per_step = Counter(t["stepNo"] for t in trace["tracks"])
        dup += sum(n - 1 for n in per_step.values() if n > 1)
        lost += sum(1 for step, _ in ROUTE.values() if per_step[step] == 0)
    return dup, lost


async def test_r3_database_outage_answers_503_keeps_events_queued_and_recovers(
    pg_database: str, proxy: TcpProxy, broker: Broker, stack: Stack, record_figures: Recorder
) -> None:
    url = f"postgresql+asyncpg://{services.PG_USER}@127.0.0.1:{proxy.port}/{pg_database}"
    central = await stack.start_central(url, broker.url, prepare=True)
    assert stack.rest is not None
    rest: Rest = stack.rest
    run_no, sns = await stack.prepare_run(BOARDS)
    acks = AckWatch(broker)
    await asyncio.to_thread(acks.start)
    api = _session(central.base_url)
    raw = _session(central.base_url)
    try:
        await _sign_in(api, PLANNER, PASSWORD)
        line = await stack.start_line(run_no=run_no, sns=sns, takt=TAKT)
        line.start_production()

        async def flowing() -> Any:
            return (await rest.edge())["eventsAccepted"] >= 3

        await eventually(flowing, within=30, what="the first events applied at central")
        pid = central.proc.pid if central.proc else None

        async def cut() -> None:
            proxy.cut()

        async def restore() -> None:
            proxy.restore()

        async def refuse() -> None:
            await proxy.stop()  # every connection dropped, new ones refused: the server is restarting

        async def reopen() -> None:
            await proxy.start()

        common = {"api": api, "raw": raw, "run_no": run_no, "line": line, "acks": acks}
        made_before = len(line.sim.records())
        pulled = Outage("pulled cable")
        await go_down(pulled, CUT, cut, restore, **common)
        made_during = len(line.sim.records()) - made_before
        restarted = Outage("database restart")
        await go_down(restarted, RESTART, refuse, reopen, **common)
        figures = {f"cut_{k}": v for k, v in check_outage(pulled).items()}
        figures |= {f"restart_{k}": v for k, v in check_outage(restarted).items()}
        assert made_during >= 10, "the line must have kept producing during the cut"

        # A restart between two requests (every connection dropped, the server back at once) is not even
        # seen: the checkout ping replaces the dead pooled connections.
        proxy.reset()
        t = time.monotonic()
        status, body = await _get(api, f"runs/{run_no}")
        assert status == 200, body
        figures["instant_restart_first_request_s"] = round(time.monotonic() - t, 3)
        health_status, health = await _get(raw, "health")
        assert health_status == 200 and health["data"]["db"] == "ok", health

        await line.finished(within=120)
        await eventually(
            lambda: _all_done(rest, run_no, BOARDS), within=60, what=f"all {BOARDS} units of {run_no} DONE"
        )
        edge = await eventually(lambda: _drained(rest), within=60, what="edge ONLINE with backlog 0")
        waiting, dead = await asyncio.to_thread(outbox_counts, line.agent.outbox_path)
        assert central.running and central.proc is not None and central.proc.pid == pid, "central restarted"

        records = records_of(line.sim, sns)
        traces = {sn: await rest.trace(sn) for sn in sns}
        duplicated, lost = duplicates_and_losses(traces)
        errors = [ln for ln in central.log_path.read_text(errors="replace").splitlines() if " ERROR " in ln]
        record_figures(
            "R3",
            "database unavailable: REST 503, events kept at the edge, recovery without restart",
            backend="postgresql",
            boards=BOARDS,
            **figures,
            retry_codes=dict(acks.codes("RETRY")),
            events_sent=len(records),
            events_applied=edge["eventsAccepted"],
            duplicate_acks=edge["eventsDuplicate"],
            events_lost=lost,
            events_duplicated=duplicated,
            dead_letters=dead,
            central_error_lines=len(errors),
        )
        assert (waiting, dead) == (0, 0), f"{waiting} events still waiting, {dead} dead-lettered at the edge"
        assert acks.codes("REJECTED") == Counter(), acks.codes("REJECTED")
        assert (duplicated, lost) == (0, 0)
        await assert_central_matches_truth(rest, line.sim, sns)
        assert edge["eventsAccepted"] == len(records) and edge["eventsRejected"] == 0, (edge, len(records))
        assert edge["deadLetters"] == 0, edge
        # An outage is expected operation: central says so in warnings, not in error tracebacks.
        assert not errors, "\n".join(errors[:5])
    finally:
        await api.close()
        await raw.close()
        await asyncio.to_thread(acks.stop)


async def _all_done(rest: Rest, run_no: str, n: int) -> bool:
    return (await rest.unit_stats(run_no))["done"] == n


async def _drained(rest: Rest) -> dict[str, Any] | None:
    edge = await rest.edge()
    return edge if edge["state"] == "ONLINE" and edge["backlog"] == 0 else None
