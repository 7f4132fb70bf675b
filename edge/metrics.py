"""The agent's optional Prometheus listener (`[metrics] listen = "127.0.0.1:9464"`): `GET /metrics`.

Series, all computed when scraped from what the agent itself reports, so they cannot drift from its status:
- `mes_edge_outbox_backlog`: events stored and not yet acknowledged by central (the status' backlog).
- `mes_edge_outbox_oldest_pending_age_seconds`: age of the oldest of them (0 when none).
- `mes_edge_outbox_dead_letters`: events central refused for good (`mes-edge dead-letters list`).
- `mes_edge_device_up{device}`: 1 while the device's driver is CONNECTED, else 0 (DISCONNECTED, CONNECTING,
  ERROR, STOPPED); `mes_edge_device_info{device,state}` carries the state itself.
- `mes_edge_events_published_total`: events sent to the broker, resends included (the publish rate).
- `mes_edge_batches_published_total`, `mes_edge_batch_resends_total`: batches sent; sent again after no ack.
- `mes_edge_events_acked_total{status}`: central's answers (ACCEPTED, DUPLICATE, REJECTED, RETRY).
- `mes_edge_broker_connected`: 1 while connected and subscribed to the acks topic.
- `process_*`, `python_*`: prometheus_client's default collectors.

No authentication: the edge has no user accounts. The listener is off unless configured, and its default
address is the loopback one; to scrape from another host, listen on the plant-network address and firewall
the port to the Prometheus host.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from edge.config import MetricsConfig
from edge.forwarder import Forwarder
from shared.events import EdgeStatus

log = logging.getLogger(__name__)

StatusSource = Callable[[], Awaitable[EdgeStatus]]
ACK_STATUSES = ("ACCEPTED", "DUPLICATE", "REJECTED", "RETRY")


def families(status: EdgeStatus, fwd: Forwarder, now: datetime) -> Iterator[Metric]:
    """One scrape's series from the agent's status and the forwarder's running totals."""
    yield GaugeMetricFamily("mes_edge_outbox_backlog", "Events waiting for central's ack", status.backlog)
    age = (now - status.oldest_pending_at).total_seconds() if status.oldest_pending_at else 0.0
    yield GaugeMetricFamily(
        "mes_edge_outbox_oldest_pending_age_seconds", "Age of the oldest unacknowledged event", max(0.0, age)
    )
    yield GaugeMetricFamily(
        "mes_edge_outbox_dead_letters", "Events central refused for good", status.dead_letters
    )
    up = GaugeMetricFamily("mes_edge_device_up", "1 while the device is connected", labels=["device"])
    info = GaugeMetricFamily("mes_edge_device_info", "The device's driver state", labels=["device", "state"])
    for d in status.devices:
        up.add_metric([d.id], 1 if d.state == "CONNECTED" else 0)
        info.add_metric([d.id, d.state], 1)
    yield up
    yield info
    yield CounterMetricFamily(
        "mes_edge_events_published", "Events published to the broker, resends included", fwd.events_published
    )
    yield CounterMetricFamily("mes_edge_batches_published", "Batches published", fwd.batches_sent)
    yield CounterMetricFamily("mes_edge_batch_resends", "Batches sent again after no ack", fwd.resends)
    acked = CounterMetricFamily("mes_edge_events_acked", "Central's answers per event", labels=["status"])
    for st in sorted({*ACK_STATUSES, *fwd.events_acked}):
        acked.add_metric([st], fwd.events_acked.get(st, 0))
    yield acked
    yield GaugeMetricFamily(
        "mes_edge_broker_connected", "1 while connected to the broker", 1 if fwd.link.ready else 0
    )


class _Scrape:
    """The process figures and this scrape's series as one collector (an OpenMetrics document has one EOF)."""

    def __init__(self, status: EdgeStatus, fwd: Forwarder, process: CollectorRegistry) -> None:
        self.status, self.fwd, self.process = status, fwd, process

    def collect(self) -> Iterator[Metric]:
        yield from self.process.collect()
        yield from families(self.status, self.fwd, datetime.now(UTC))


class MetricsServer:
    """aiohttp on the configured address; a registry of its own (process figures), never the global one."""

    def __init__(self, cfg: MetricsConfig, status: StatusSource, forwarder: Forwarder) -> None:
        self.cfg = cfg
        self._status = status
        self._fwd = forwarder
        self._process = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self._process)
        self._runner: web.AppRunner | None = None
        self.port = cfg.port  # the bound one once started (listen = "host:0" picks a free port)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.cfg.host, self.cfg.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        if not _loopback(self.cfg.host):
            log.warning("metrics listener on %s has no authentication: firewall the port", self.cfg.host)
        log.info("metrics on http://%s:%d/metrics", self.cfg.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        status = await self._status()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(_Scrape(status, self._fwd, self._process))  # type: ignore[arg-type]
        return web.Response(body=body, headers={"Content-Type": content_type})


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
