"""The edge agent's `[metrics]` listener (issue 10): a real `mes-edge run` process on the simulated LINE-B,
a real `mes-central serve` and Mosquitto; `/metrics` scraped over HTTP and parsed with prometheus_client's
parser while the line produces, while a machine is switched off, and while the broker is away."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from central.demo_line import line_b_sim_config
from edge.sim.line import SimLine
from tests.brokers import Broker, free_port
from tests.e2e.edge_system import ROUTE, EdgeAgent, Line, Rest, Stack, eventually, records_of

TAKT = 0.3
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def line_with_metrics(stack: Stack, run_no: str, sns: list[str], port: int) -> Line:
    """tests/e2e/edge_system.start_line, plus `[metrics] listen` in the agent's TOML."""
    assert stack.central is not None
    cfg = line_b_sim_config(
        stack.workdir / "sim-truth.jsonl", run_no=run_no, sns=sns, takt=TAKT, boards=len(sns)
    )
    sim = SimLine(cfg)
    await sim.start()
    agent = EdgeAgent(stack.workdir, stack.central.broker_url, sim.endpoints(), sim)
    with agent.config_path.open("a", encoding="utf-8") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    line = stack.line = Line(sim, agent)
    await agent.start()
    return line


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples | None:
    try:
        async with http.get(url) as r:
            if r.status != 200:
                return None
            text = await r.text()
    except (aiohttp.ClientError, OSError):
        return None
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def when(http: aiohttp.ClientSession, url: str, check: Any, what: str, within: float = 30) -> Samples:
    """Scrapes until `check(samples)` holds; returns those samples."""

    async def ok() -> Samples | None:
        s = await scrape(http, url)
        return s if s is not None and check(s) else None

    result: Samples = await eventually(ok, within=within, what=what)
    return result


async def test_edge_metrics_follow_production_devices_and_broker(
    sqlite_url: str, broker: Broker, stack: Stack
) -> None:
    await stack.start_central(sqlite_url, broker.url, prepare=False)
    rest = stack.rest
    assert isinstance(rest, Rest)
    run_no, sns = await stack.prepare_run(4)
    port = free_port()
    line = await line_with_metrics(stack, run_no, sns, port)
    url = f"http://127.0.0.1:{port}/metrics"
    devices = sorted(ROUTE)

    async with aiohttp.ClientSession() as http:
        # Before production: connected, every machine up, nothing published or waiting.
        idle = await when(
            http,
            url,
            lambda s: (
                value(s, "mes_edge_broker_connected") == 1
                and all(value(s, "mes_edge_device_up", device=d) == 1 for d in devices)
            ),
            "broker connected and all six devices up",
        )
        assert value(idle, "mes_edge_outbox_backlog") == 0
        assert value(idle, "mes_edge_events_published_total") == 0
        assert value(idle, "mes_edge_outbox_dead_letters") == 0
        assert any(name.startswith("process_") for name, _ in idle)

        # Production: every machine record published and ACCEPTED by central, then nothing waits.
        line.start_production()
        await line.finished()
        made = len(records_of(line.sim, sns))
        done = await when(
            http,
            url,
            lambda s: (
                value(s, "mes_edge_events_acked_total", status="ACCEPTED") == made
                and value(s, "mes_edge_outbox_backlog") == 0
            ),
            f"all {made} records ACCEPTED and the backlog empty",
        )
        assert value(done, "mes_edge_events_published_total") >= made
        assert value(done, "mes_edge_batches_published_total") >= 1
        assert value(done, "mes_edge_events_acked_total", status="REJECTED") == 0
        assert value(done, "mes_edge_outbox_oldest_pending_age_seconds") == 0
        # The same count central reports for this edge.
        edge = await rest.edge()
        assert edge["eventsAccepted"] == made

        # A machine switched off: its device goes down, the others stay up; back on, it is up again.
        await line.sim.stop_device("ST-B-AOI-01")
        down = await when(
            http, url, lambda s: value(s, "mes_edge_device_up", device="ST-B-AOI-01") == 0, "AOI down"
        )
        assert value(down, "mes_edge_device_up", device="ST-B-ICT-01") == 1
        await line.sim.start_device("ST-B-AOI-01")
        await when(http, url, lambda s: value(s, "mes_edge_device_up", device="ST-B-AOI-01") == 1, "AOI up")

        # The broker away: the agent says so, and still answers the scrape.
        await asyncio.to_thread(broker.stop)
        await when(http, url, lambda s: value(s, "mes_edge_broker_connected") == 0, "broker disconnected")
        await asyncio.to_thread(broker.start)
        await when(http, url, lambda s: value(s, "mes_edge_broker_connected") == 1, "broker reconnected")
