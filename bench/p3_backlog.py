"""P3 — backlog drain (quality-bars.md): an edge outbox holding 500,000 events (≈ 1 h of a 100-line site)
after an outage is drained in ≤ 120 s, while live events produced meanwhile keep a p99 end-to-end latency
(machine time → committed at central) ≤ 1 s.

A real `mes-edge run` starts on the filled outbox; live AUTO events are stored into the same outbox file by
this process (as a device-side producer would) at `LIVE_RATE` while it drains. The forwarder gives live events
half of every batch (edge.md). The drain is watched for at most `LIMIT` s: a build too slow to drain the whole
backlog in time is reported with the share it drained and its rate, not waited for.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import select

from bench import ingest_e2e as e2e
from bench import plant
from bench.common import Context, Row, percentile, standalone
from central.db.models import EdgeEventReceipt
from edge.outbox import Outbox

TARGET_SECONDS = 120.0
LIVE_RATE = 20.0  # events/s from the line while the backlog drains
LIMIT = 150.0
REACHABLE = 150_000  # events a build at 1,000 events/s drains within LIMIT


async def _produce(path: str, sns: list[str], rate: float, stop: asyncio.Event) -> list[str]:
    """Live events into the agent's outbox at `rate`/s; → their eventIds."""
    ob = await Outbox.open(path, edge_id=plant.EDGE_ID, max_events=2_000_000, max_bytes=4 * 1024**3)
    ids: list[str] = []
    try:
        t0 = time.perf_counter()
        for i, sn in enumerate(sns):
            if stop.is_set():
                break
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            (ev,) = e2e.new_events([sn], start=10_000_000 + i)
            await ob.append([ev])
            ids.append(ev.event_id)
    finally:
        await ob.close()
    return ids


async def run(ctx: Context) -> list[Row]:
    backlog = ctx.size(500, 500_000)
    live_n = int(LIVE_RATE * LIMIT)
    workdir = ctx.workdir / "p3"
    workdir.mkdir()
    prefix = e2e.topic_prefix()
    url = f"sqlite+aiosqlite:///{workdir / 'central.db'}"
    async with plant.central(url, mqtt_url=ctx.mqtt_url, mqtt_topic_prefix=prefix) as c:
        # Units for the part of the backlog this build can reach within LIMIT (generating 500,000 units over
        # REST would take longer than the drain itself); the rest refer to units that do not exist, which a
        # build fast enough to reach them would see refused: the row then FAILs with its count, not silently.
        _, sns = await c.ingest_run(min(backlog, REACHABLE), prefix="BL-")
        sns += [f"BL-NONE-{i}" for i in range(backlog - len(sns))]
        _, live_sns = await c.ingest_run(live_n, prefix="LV-")
        outbox = workdir / "outbox.db"
        await e2e.fill_outbox(outbox, e2e.new_events(sns))
        edge = e2e.EdgeProcess.start(e2e.edge_config(workdir, ctx.mqtt_url, prefix))
        stop = asyncio.Event()
        producer = asyncio.create_task(_produce(str(outbox), live_sns, LIVE_RATE, stop))
        try:
            t0 = time.perf_counter()
            drained = await e2e.drain(c, backlog, limit=LIMIT, prefix="bench-BL-")
            seconds = time.perf_counter() - t0
        finally:
            stop.set()
            live_ids = await producer
            await asyncio.sleep(ctx.size(1.5, 3.0))  # the live events stored last get their chance
            edge.stop()
        async with c.db.reader() as s:
            rows = (
                await s.execute(
                    select(EdgeEventReceipt.occurred_at, EdgeEventReceipt.applied_at).where(
                        EdgeEventReceipt.event_id.in_(live_ids)
                    )
                )
            ).all()
    lat = sorted((a - o).total_seconds() * 1000 for o, a in rows)
    missing = len(live_ids) - len(lat)
    backlog_applied = drained.events
    rate = backlog_applied / seconds if seconds else 0.0
    projected = backlog / rate if rate else float("inf")
    complete = backlog_applied >= backlog
    return [
        Row(
            "P3",
            f"backlog of {backlog:,} drained (sqlite), projected s",
            seconds if complete else projected,
            "s",
            target=f"≤ {TARGET_SECONDS:.0f} s",
            passed=complete and seconds <= TARGET_SECONDS,
            note=""
            if complete
            else f"{backlog_applied:,} drained in {seconds:.0f} s at {rate:,.0f}/s; projected",
        ),
        Row(
            "P3",
            f"live events p99 latency during the drain ({len(lat)} events at {LIVE_RATE:.0f}/s)",
            percentile(lat, 99) if lat else None,
            "ms",
            target="≤ 1000 ms",
            passed=bool(lat) and percentile(lat, 99) <= 1000 and not missing,
            note=f"{missing} live events not applied by the end" if missing else "",
        ),
    ]


if __name__ == "__main__":
    standalone(run)
