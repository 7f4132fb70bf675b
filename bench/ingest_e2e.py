"""The end-to-end ingest path P1 and P3 measure: a prefilled edge outbox → a real `mes-edge run` (child
process) → the broker → central's consumer (this process) → commit → ack → the edge deletes the events.

Progress is read from central's receipts (one per applied event), so the figure is what central committed,
not what was sent.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from bench import plant
from central.db.models import EdgeEventReceipt
from edge.outbox import NewEvent, Outbox


def new_events(sns: list[str], start: int = 0) -> list[NewEvent]:
    now = datetime.now(UTC)
    out = []
    for i, sn in enumerate(sns):
        ev = plant.auto_event(start + i + 1, sn, value=240.0 + (i % 10), at=now)
        out.append(NewEvent(ev["eventId"], "INGEST", now, "ST-AUTO-01", ev["payload"]))
    return out


async def fill_outbox(path: Path, events: list[NewEvent]) -> None:
    ob = await Outbox.open(path, edge_id=plant.EDGE_ID, max_events=2_000_000, max_bytes=4 * 1024**3)
    try:
        for i in range(0, len(events), 5000):
            assert await ob.append(events[i : i + 5000])
    finally:
        await ob.close()


def edge_config(workdir: Path, mqtt_url: str, prefix: str) -> Path:
    cfg = workdir / "edge.toml"
    cfg.write_text(
        f'edge_id = "{plant.EDGE_ID}"\nline_code = "LINE-ING"\nlog_level = "WARNING"\n'
        f'[outbox]\npath = "{workdir / "outbox.db"}"\nmax_events = 2000000\nmax_bytes = 4294967296\n'
        f'[mqtt]\nurl = "{mqtt_url}"\ntopic_prefix = "{prefix}"\n'
        "[forwarder]\nack_timeout = 60\n"
    )
    return cfg


@dataclass
class EdgeProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, cfg: Path) -> EdgeProcess:
        log = cfg.with_suffix(".log")
        exe = Path(sys.executable).with_name("mes-edge")
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(cfg)],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(proc, log)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def applied(c: plant.Central, prefix: str = "") -> int:
    """Events central committed (receipts), those whose eventId starts with `prefix`."""
    stmt = select(func.count()).select_from(EdgeEventReceipt)
    if prefix:
        stmt = stmt.where(EdgeEventReceipt.event_id.startswith(prefix, autoescape=True))
    async with c.db.reader() as s:
        return int(await s.scalar(stmt) or 0)


@dataclass
class Drain:
    events: int  # applied
    seconds: float  # first batch committed → last batch committed
    complete: bool
    rated: int | None = None  # the events applied within `seconds` (all but the first batch's)

    @property
    def rate(self) -> float:
        n = self.events if self.rated is None else self.rated
        return n / self.seconds if self.seconds > 0 else 0.0


async def drain(c: plant.Central, target: int, limit: float, poll: float = 0.25, prefix: str = "") -> Drain:
    """Waits until `target` more receipts (of eventIds starting with `prefix`) exist, or `limit` seconds pass.

    The rate is over the applying time, read from the receipts central wrote rather than from this polling
    loop: from the commit of the first batch to the commit of the last, counting the events after the first
    batch (a poll every 0.25 s would blur a short run)."""
    base = await applied(c, prefix)
    started = time.perf_counter()
    t_end = started + limit
    done = 0
    while time.perf_counter() < t_end:
        done = await applied(c, prefix) - base
        if done >= target:
            break
        await asyncio.sleep(poll)
    r = EdgeEventReceipt
    like = r.event_id.startswith(prefix, autoescape=True)
    async with c.db.reader() as s:
        first_at, last_at = (
            await s.execute(select(func.min(r.applied_at), func.max(r.applied_at)).where(like))
        ).one()
        first_batch = await s.scalar(select(r.batch_id).where(like).order_by(r.applied_at).limit(1))
        in_first = await s.scalar(select(func.count()).where(like, r.batch_id == first_batch))
    if first_at is not None and last_at is not None and last_at > first_at:
        seconds = (last_at - first_at).total_seconds()
        return Drain(done, seconds, done >= target, rated=done - int(in_first or 0))
    return Drain(done, time.perf_counter() - started, done >= target)  # one batch: wall time from the start


def topic_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:6]}"
