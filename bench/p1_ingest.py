"""P1 — transactional ingest end to end (quality-bars.md): AUTO events from a real edge agent's outbox through
the broker into central (full validation, commit, ack, the edge deletes them), sustained; on SQLite and on
PostgreSQL. Target ≥ 5,000 events/s. Ceiling: a raw bulk insert into the same database (same run); the raw
MQTT QoS 1 rate through the same broker is printed beside it.

Sustained: a short calibration sizes the main run to last about 60 s (quick: a few seconds), so a slow build
does not run for hours and a fast one is still measured over a full minute.
"""

from __future__ import annotations

import time

from bench import ingest_e2e as e2e
from bench import plant
from bench.common import (
    Context,
    Row,
    database,
    mqtt_qos1_ceiling,
    pg_bulk_insert_ceiling,
    sqlite_bulk_insert_ceiling,
    standalone,
)

TARGET = 5000.0
MAX_EVENTS = 400_000


async def measure(ctx: Context, backend: str, seconds: float) -> tuple[e2e.Drain, int]:
    prefix = e2e.topic_prefix()
    workdir = ctx.workdir / f"p1-{backend}"
    workdir.mkdir()
    async with (
        database(ctx, backend, "p1") as url,
        plant.central(url, mqtt_url=ctx.mqtt_url, mqtt_topic_prefix=prefix) as c,
    ):
        cfg = e2e.edge_config(workdir, ctx.mqtt_url, prefix)
        if ctx.quick:
            n, start = 600, 0
        else:
            # Calibration: how fast is this build here? Then a main run of about `seconds`.
            probe = 3000
            _, sns = await c.ingest_run(probe, prefix="C-")
            await e2e.fill_outbox(workdir / "outbox.db", e2e.new_events(sns))
            edge = e2e.EdgeProcess.start(cfg)
            t0 = time.perf_counter()
            try:
                await e2e.drain(c, probe, limit=600)
            finally:
                edge.stop()
            n = int(min(MAX_EVENTS, max(probe, probe / (time.perf_counter() - t0) * seconds)))
            start = probe
        _, sns = await c.ingest_run(n, prefix="M-")
        await e2e.fill_outbox(workdir / "outbox.db", e2e.new_events(sns, start=start))
        edge = e2e.EdgeProcess.start(cfg)
        try:
            main = await e2e.drain(c, n, limit=seconds * 3 + 60, prefix="bench-M-")
        finally:
            edge.stop()
        return main, n


async def run(ctx: Context) -> list[Row]:
    seconds = ctx.size(4.0, 60.0)
    rows: list[Row] = []
    mqtt_rate, _ = await mqtt_qos1_ceiling(ctx.mqtt_url, ctx.size(2_000, 50_000))
    backends = ["sqlite", "postgresql"] if ctx.pg_available else ["sqlite"]
    for backend in backends:
        if backend == "sqlite":
            ceiling = sqlite_bulk_insert_ceiling(ctx.workdir / "ceiling.db", ctx.size(20_000, 200_000))
        else:
            ceiling = await pg_bulk_insert_ceiling(ctx.size(20_000, 200_000))
        result, n = await measure(ctx, backend, seconds)
        rows.append(
            Row(
                "P1",
                f"ingest end to end, {backend} ({result.events:,} AUTO events, {result.seconds:.1f} s)",
                result.rate,
                "events/s",
                ceiling=ceiling,
                ceiling_what=f"raw bulk insert rows/s, {backend}",
                target=f"≥ {TARGET:,.0f} events/s",
                passed=result.complete and result.rate >= TARGET,
                note="" if result.complete else f"only {result.events} of {n} applied in time",
            )
        )
    rows.append(
        Row(
            "P1",
            "context: raw MQTT QoS 1 messages/s through the same broker",
            mqtt_rate,
            "msg/s",
            note="one event per message; the edge sends batches of up to 500 events",
        )
    )
    return rows


if __name__ == "__main__":
    standalone(run)
