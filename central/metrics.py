"""Central's Prometheus series (served by `GET /api/metrics`, permission `system:config`).

Recorded in this process as things happen:
- `mes_http_request_duration_seconds{method,route,status}` histogram: every HTTP request; `route` is the
  route template (`/api/runs/{runNo}`), `UNMATCHED` for a path no route has, so the label set stays bounded.
- `mes_ingest_batches_total{outcome}` counter: MQTT event batches from edges; outcome `applied` (the applier
  answered), `retry` (database or unexpected failure: every event answered RETRY), `refused` (malformed,
  oversized or foreign batch, answered nothing).
- `mes_ingest_events_total{kind,status}` counter: events of the acks sent, per event kind and ack status
  (ACCEPTED, DUPLICATE, REJECTED, RETRY; an event parked WAITING is ACCEPTED, as its ack says).
- `mes_ingest_lag_seconds` histogram: machine → central lag of each ACCEPTED event, i.e. the time it was
  applied minus its `occurredAt` (includes time spent in the edge's outbox during an outage).
- `mes_ingest_batch_duration_seconds` histogram: time to apply one batch (its transaction).

Read from the database at scrape time, so any process answers for the whole system:
- `mes_outbox_depth{status}` gauge: outbound ERP feedback events not yet delivered (PENDING, PROCESSING,
  FAILED awaiting a retry). Only these have a delivering worker; the TRACK_IN/TRACK_OUT rows of `mes_events`
  are a record for future consumers and never drain, so counting them would measure nothing.
- `mes_outbox_dead_letters` gauge: outbound events that used up their attempts.
- `mes_ingest_parked_events` gauge: edge events held WAITING for their unit (central/mqtt/parked.py).
- `mes_edges_registered` gauge: registered edge agents; `mes_edges_online` gauge: active ones whose last
  status says ONLINE and arrived within `EDGE_ONLINE_WINDOW_S` (a crashed broker sends no will).
- `process_*`, `python_*`: prometheus_client's default collectors (single-process mode only).

Several processes (`mes-central serve --workers N`) set PROMETHEUS_MULTIPROC_DIR for their workers before they
import this module (prometheus_client decides at import); exposition then merges every worker's files with
prometheus_client's MultiProcessCollector, so whichever worker answers a scrape answers for all.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from shared.events import Ack, EventBatch

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, documented as such
# From one second to a day: a batch sent live arrives in tens of milliseconds, one held by an outage in hours.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# This process's instruments, in a registry of their own (the global one belongs to whoever imports us).
REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_DURATION = Histogram(
    "mes_http_request_duration_seconds",
    "HTTP request duration by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
INGEST_BATCHES = Counter(
    "mes_ingest_batches_total", "MQTT event batches received from edges", ["outcome"], registry=REGISTRY
)
INGEST_EVENTS = Counter(
    "mes_ingest_events_total",
    "Edge events answered, by kind and ack status",
    ["kind", "status"],
    registry=REGISTRY,
)
INGEST_LAG = Histogram(
    "mes_ingest_lag_seconds",
    "Machine to central lag of accepted events (applied at minus occurredAt)",
    buckets=LAG_BUCKETS,
    registry=REGISTRY,
)
INGEST_BATCH_DURATION = Histogram(
    "mes_ingest_batch_duration_seconds", "Time to apply one edge batch", registry=REGISTRY
)
_DEFAULTS: list[object] = []


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    # Any token is a valid HTTP method: an unknown one is folded so a scanner cannot grow the label set.
    HTTP_DURATION.labels(method if method in METHODS else "OTHER", route, str(status)).observe(seconds)


def observe_batch(batch: EventBatch, ack: Ack, outcome: str, seconds: float) -> None:
    """One applied (or RETRY-answered) batch: its ack's statuses per kind, its duration, the events' lag."""
    INGEST_BATCHES.labels(outcome).inc()
    INGEST_BATCH_DURATION.observe(seconds)
    events = {e.event_id: e for e in batch.events}
    now = datetime.now(UTC)
    for r in ack.results:
        ev = events.get(r.event_id)
        INGEST_EVENTS.labels(ev.kind if ev else "UNKNOWN", r.status).inc()
        if ev is not None and r.status == "ACCEPTED":
            # A machine clock ahead of central's would give a negative lag: it counts as none.
            INGEST_LAG.observe(max(0.0, (now - ev.occurred_at).total_seconds()))


def observe_refused_batch() -> None:
    INGEST_BATCHES.labels("refused").inc()


@dataclass
class Figures:
    """What the database says at scrape time (central/services/metrics.py)."""

    outbox_depth: dict[str, int] = field(default_factory=dict)  # status → undelivered outbound events
    outbox_dead_letters: int = 0
    ingest_parked: int = 0
    edges_registered: int = 0
    edges_online: int = 0


class _FiguresCollector:
    """The database figures of one scrape, as gauge families (computed before, yielded here)."""

    def __init__(self, f: Figures) -> None:
        self.f = f

    def collect(self) -> Iterator[Metric]:
        f = self.f
        depth = GaugeMetricFamily(
            "mes_outbox_depth", "Outbound events not yet delivered, by status", labels=["status"]
        )
        for status, n in sorted(f.outbox_depth.items()):
            depth.add_metric([status], n)
        yield depth
        yield GaugeMetricFamily(
            "mes_outbox_dead_letters", "Outbound events that used up their attempts", f.outbox_dead_letters
        )
        yield GaugeMetricFamily(
            "mes_ingest_parked_events", "Edge events held WAITING for their unit", f.ingest_parked
        )
        yield GaugeMetricFamily("mes_edges_registered", "Registered edge agents", f.edges_registered)
        yield GaugeMetricFamily(
            "mes_edges_online", "Active edge agents ONLINE with a recent status", f.edges_online
        )


def _live_registry() -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        # Every worker's files merged; the process collectors would describe only the answering worker.
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return merged
    if not _DEFAULTS:
        _DEFAULTS.extend(
            [
                ProcessCollector(registry=REGISTRY),
                PlatformCollector(registry=REGISTRY),
                GCCollector(registry=REGISTRY),
            ]
        )
    return REGISTRY


def render(figures: Figures, accept: str | None) -> tuple[bytes, str]:
    """The exposition (text format, or OpenMetrics when the scraper asks for it) and its content type."""
    scrape = CollectorRegistry()
    scrape.register(_Scrape(_live_registry(), figures))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(scrape), content_type


class _Scrape:
    """This process's (or every worker's) instruments, then the database figures, as one collector."""

    def __init__(self, live: CollectorRegistry, figures: Figures) -> None:
        self.live, self.figures = live, figures

    def collect(self) -> Iterator[Metric]:
        yield from self.live.collect()
        yield from _FiguresCollector(self.figures).collect()
