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
    events: int
    seconds: float  # first applied → last applied
    complete: bool

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def drain(c: plant.Central, target: int, limit: float, poll: float = 0.25, prefix: str = "") -> Drain:
    """Waits until `target` more receipts (of eventIds starting with `prefix`) exist, or `limit` seconds pass;
    the rate is over the applying time (first to last)."""
    base = await applied(c, prefix)
    first: float | None = None
    t_end = time.perf_counter() + limit
    done = 0
    while time.perf_counter() < t_end:
        done = await applied(c, prefix) - base
        if done and first is None:
            first = time.perf_counter() - poll / 2
        if done >= target:
            break
        await asyncio.sleep(poll)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    return Drain(done, elapsed, done >= target)


def topic_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:6]}"
