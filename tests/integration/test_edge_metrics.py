"""The edge agent's `[metrics]` section and listener, in process: config validation, the shipped example,
the backlog while no broker answers, and a taken port that must not stop acquisition."""

from __future__ import annotations

import asyncio
import socket
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.agent import Agent
from edge.config import ConfigError, EdgeConfig, parse_config
from edge.outbox import NewEvent
from tests.brokers import free_port

CONFIG = Path(__file__).parents[2] / "config"


def config(tmp_path: Path, metrics: dict[str, str] | None) -> EdgeConfig:
    data: dict[str, object] = {
        "edge_id": "edge-m",
        "outbox": {"path": str(tmp_path / "outbox.db")},
        # Nothing listens there: the agent runs disconnected, its events wait in the outbox.
        "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
        "forwarder": {"reconnect_min": 0.1, "reconnect_max": 0.5},
    }
    if metrics is not None:
        data["metrics"] = metrics
    return parse_config(data)


@asynccontextmanager
async def running(cfg: EdgeConfig) -> AsyncIterator[Agent]:
    agent = Agent(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.started.wait(), 10)
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def test_metrics_section_is_optional_and_checked(tmp_path: Path) -> None:
    assert config(tmp_path, None).metrics is None
    cfg = config(tmp_path, {})
    assert cfg.metrics is not None and (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9464)
    v6 = config(tmp_path, {"listen": "[::1]:9500"}).metrics
    assert v6 is not None and (v6.host, v6.port) == ("::1", 9500)
    for bad in ("9464", "127.0.0.1", "host:port", "h:70000", "user@h:1"):
        with pytest.raises(ConfigError, match=r"metrics\.listen"):
            config(tmp_path, {"listen": bad})
    with pytest.raises(ConfigError, match=r"metrics\.port: unknown key"):
        config(tmp_path, {"port": "1"})


def test_the_shipped_example_listens_on_loopback() -> None:
    top = tomllib.loads((CONFIG / "edge-line-b.example.toml").read_text())
    assert top["metrics"] == {"listen": "127.0.0.1:9464"}


async def test_listener_reports_the_backlog_while_the_broker_is_away(tmp_path: Path) -> None:
    async with running(config(tmp_path, {"listen": "127.0.0.1:0"})) as agent:
        assert agent.metrics is not None and agent.outbox is not None
        now = datetime.now(UTC)
        stored = [NewEvent(f"e{i}", "INGEST", now, "ST-1", {"eventType": "AUTO"}) for i in range(3)]
        assert await agent.outbox.append(stored)
        base = f"http://127.0.0.1:{agent.metrics.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200 and r.content_type == "text/plain"
                text = await r.text()
            async with http.get(f"{base}/other") as r:
                assert r.status == 404
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }
        one = {name: v for (name, labels), v in samples.items() if not labels}
        assert one["mes_edge_outbox_backlog"] == 3
        assert one["mes_edge_outbox_oldest_pending_age_seconds"] >= 0
        assert one["mes_edge_broker_connected"] == 0
        assert one["mes_edge_events_published_total"] == 0
        acked = {
            dict(labels)["status"]: v
            for (n, labels), v in samples.items()
            if n == "mes_edge_events_acked_total"
        }
        assert acked == {"ACCEPTED": 0, "DUPLICATE": 0, "REJECTED": 0, "RETRY": 0}
        # No devices configured: no device series.
        assert not any(n == "mes_edge_device_up" for n, _ in samples)


async def test_a_taken_port_leaves_the_agent_running_without_listener(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running(config(tmp_path, {"listen": f"127.0.0.1:{port}"})) as agent:
            assert agent.metrics is None
            assert agent.outbox is not None and await agent.outbox.append(
                [NewEvent("e1", "INGEST", datetime.now(UTC), "ST-1", {"eventType": "AUTO"})]
            )
