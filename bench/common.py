"""What every benchmark program shares: the result row, the ceilings measured in the same run, the services.

A program is a module `bench/pN_*.py` with `async def run(ctx: Context) -> list[Row]`; `bench/run.py` runs
them all and prints one table. Each can also run alone: `python -m bench.p2_interlock --quick`.
Ceilings are measured by the program that needs them, in the same run, on the same machine, so a ratio
compares like with like on a shared 2-core box (quality-bars.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

PG_HOST = os.environ.get("MES_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MES_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("MES_BENCH_PG_USER", "postgres")
MQTT_HOST = os.environ.get("MES_BENCH_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("MES_BENCH_MQTT_PORT", "1883"))


@dataclass
class Row:
    """One line of the table. `passed` is None for an informational row (no target)."""

    target_id: str  # "P1" … "P6", or "" for context rows
    metric: str
    value: float | None
    unit: str
    ceiling: float | None = None
    ceiling_what: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def result(self) -> str:
        if self.value is None:
            return "NOT MEASURED"
        return "INFO" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "result": self.result}


@dataclass
class Context:
    quick: bool
    workdir: Path
    pg_available: bool
    mqtt_url: str  # a broker every program may use (the machine's Mosquitto, else an embedded one)
    notes: list[str] = field(default_factory=list)

    def size(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


# ---- services -------------------------------------------------------------------------------------------


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@asynccontextmanager
async def pg_database(prefix: str = "bench", template: str | None = None) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one program (a copy of `template` when given); → its SQLAlchemy URL.
    Dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await pg_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield pg_url(name)
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def database(ctx: Context, backend: str, name: str) -> AsyncIterator[str]:
    """A fresh database of `backend` for one measurement; → its SQLAlchemy URL."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{ctx.workdir / f'{name}.db'}"
    else:
        async with pg_database(f"bench_{name}") as url:
            yield url


@asynccontextmanager
async def context(quick: bool) -> AsyncIterator[Context]:
    from central.mqtt.broker import EmbeddedBroker

    broker: EmbeddedBroker | None = None
    notes: list[str] = []
    if reachable(MQTT_HOST, MQTT_PORT):
        mqtt_url = f"mqtt://{MQTT_HOST}:{MQTT_PORT}"
        notes.append(f"MQTT: Mosquitto at {MQTT_HOST}:{MQTT_PORT}")
    else:
        broker = EmbeddedBroker()
        await broker.start()
        mqtt_url = broker.url
        notes.append("MQTT: embedded amqtt broker (no Mosquitto reachable)")
    pg = reachable(PG_HOST, PG_PORT)
    notes.append(f"PostgreSQL: {f'{PG_HOST}:{PG_PORT}' if pg else 'not reachable, its rows skipped'}")
    with tempfile.TemporaryDirectory(prefix="mes-bench-") as tmp:
        try:
            yield Context(quick=quick, workdir=Path(tmp), pg_available=pg, mqtt_url=mqtt_url, notes=notes)
        finally:
            if broker is not None:
                await broker.stop()


# ---- measuring ------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]  # sorted

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)


async def closed_loop(call: Callable[[], Awaitable[None]], seconds: float, concurrency: int) -> LoadResult:
    """As fast as `concurrency` clients can go for `seconds`: the maximum throughput."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), time.perf_counter() - t0, sorted(latencies))


async def open_loop(call: Callable[[], Awaitable[None]], rate: float, seconds: float) -> LoadResult:
    """`rate` calls per second on a fixed schedule whatever the answers do (no coordinated omission: a late
    answer delays nothing, and latency counts from the scheduled start)."""
    latencies: list[float] = []
    n = int(rate * seconds)
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        start = t0 + i / rate
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        await call()
        latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(one(i) for i in range(n)))
    return LoadResult(n, time.perf_counter() - t0, sorted(latencies))


# ---- ceilings -------------------------------------------------------------------------------------------


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def trivial_http_ceiling(seconds: float, concurrency: int) -> LoadResult:
    """A trivial aiohttp JSON handler in this process, loaded like the real server is."""

    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "data": {"status": "ok"}})

    app = web.Application()
    app.router.add_get("/x", handler)
    runner, base = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:

            async def call() -> None:
                async with http.get(f"{base}/x") as r:
                    await r.read()

            return await closed_loop(call, seconds, concurrency)
    finally:
        await runner.cleanup()


def sqlite_bulk_insert_ceiling(path: Path, rows: int, batch: int = 500) -> float:
    """Rows/s of raw `executemany` inserts into a WAL SQLite file, one durable commit per `batch` rows: what
    the disk and the SQLite library allow before any of our code runs."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ceiling"
            " (id INTEGER PRIMARY KEY, k TEXT UNIQUE, at TEXT, v REAL, p TEXT)"
        )
        payload = '{"sn":"SN0000001","temp":245.1}'
        t0 = time.perf_counter()
        for start in range(0, rows, batch):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO ceiling (k, at, v, p) VALUES (?, ?, ?, ?)",
                [
                    (uuid.uuid4().hex, "2026-12-03T10:00:00Z", i * 0.5, payload)
                    for i in range(start, start + batch)
                ],
            )
            conn.execute("COMMIT")
        return rows / (time.perf_counter() - t0)
    finally:
        conn.close()


async def pg_bulk_insert_ceiling(rows: int, batch: int = 500) -> float:
    """The same on PostgreSQL through asyncpg (executemany, one commit per `batch` rows)."""
    import asyncpg

    async with pg_database("ceiling") as url:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(
                "CREATE TABLE ceiling"
                " (id bigserial PRIMARY KEY, k text UNIQUE, at timestamptz, v float8, p jsonb)"
            )
            payload = '{"sn":"SN0000001","temp":245.1}'
            t0 = time.perf_counter()
            for start in range(0, rows, batch):
                async with conn.transaction():
                    await conn.executemany(
                        "INSERT INTO ceiling (k, at, v, p) VALUES ($1, now(), $2, $3::jsonb)",
                        [(uuid.uuid4().hex, i * 0.5, payload) for i in range(start, start + batch)],
                    )
            return rows / (time.perf_counter() - t0)
        finally:
            await conn.close()


async def mqtt_qos1_ceiling(mqtt_url: str, messages: int, inflight: int = 100) -> tuple[float, float]:
    """Raw paho QoS 1 round trips through the broker: one client publishes, another subscribed client
    receives, `inflight` messages outstanding at most. → (messages/s delivered, median publish→receive
    latency ms)."""
    from urllib.parse import urlsplit

    import paho.mqtt.client as mqtt

    parts = urlsplit(mqtt_url)
    loop = asyncio.get_running_loop()
    topic = f"bench/ceiling/{uuid.uuid4().hex[:8]}"
    got: list[float] = []
    done = asyncio.Event()
    subscribed = asyncio.Event()

    window = asyncio.Semaphore(inflight)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got.append((time.perf_counter() - float(msg.payload.split(b"|")[0])) * 1000)
        loop.call_soon_threadsafe(window.release)
        if len(got) >= messages:
            loop.call_soon_threadsafe(done.set)

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = on_message
    sub.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(inflight)
    for c in (sub, pub):
        c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        c.loop_start()
    try:
        sub.subscribe(topic, qos=1)
        await asyncio.wait_for(subscribed.wait(), 10)
        body = b"x" * 400  # about one edge event
        t0 = time.perf_counter()
        for _ in range(messages):
            # A window of messages in flight, as a real publisher keeps: a broker drops QoS 1 messages past
            # a subscriber's queue limit (Mosquitto's default max_queued_messages is 1000).
            await window.acquire()
            pub.publish(topic, f"{time.perf_counter()}|".encode() + body, qos=1)
        await asyncio.wait_for(done.wait(), 120)
        rate = messages / (time.perf_counter() - t0)
        return rate, statistics.median(got)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()


# ---- the table ------------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def table(rows: list[Row]) -> str:
    head = ("target", "metric", "value", "ceiling", "ratio", "goal", "result")
    body = [
        (
            r.target_id,
            r.metric,
            f"{fmt(r.value)} {r.unit}".strip(),
            f"{fmt(r.ceiling)} ({r.ceiling_what})" if r.ceiling is not None else "—",
            fmt(r.ratio, 3),
            r.target or "—",
            r.result,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(b) for b in body)])


def standalone(run: Callable[[Context], Awaitable[list[Row]]]) -> None:
    """`python -m bench.pN_x [--quick]`: one program alone, same table."""
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    quick = p.parse_args().quick

    async def main() -> None:
        async with context(quick) as ctx:
            rows = await run(ctx)
            print("\n".join(ctx.notes))
            print(table(rows))

    asyncio.run(main())
