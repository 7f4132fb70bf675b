"""P5: `GET /api/trace/units/{sn}` on 10 million tracks, p99 ≤ 50 ms (quality-bars.md).

The history comes from bench/gen.py, cached by size (PostgreSQL `mes_bench_gen_<tracks>`, SQLite
var/bench/gen-<tracks>.db) and generated again only when missing or of another schema revision. A real
central serves it; a planner (trace:read) asks for units drawn uniformly over the whole history: first at a
fixed 10 requests/s (open loop: the latency a user sees), then as fast as `concurrency` clients go
(throughput).
Ceiling: the trivial aiohttp handler, loaded the same way in the same run.
Quick mode: 100,000 tracks, PostgreSQL only (SQLite when PostgreSQL is not reachable).
"""

from __future__ import annotations

import itertools
import time

import aiohttp

from bench import gen, plant
from bench.common import Context, Row, closed_loop, open_loop, standalone, trivial_http_ceiling
from central.config import Settings

TARGET_P99_MS = 50.0
PLANNER = "planner@example.com"


async def _sign_in(base_url: str) -> str:
    password = Settings().seed_test_password.get_secret_value()
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/api/auth/sign-in/email", json={"email": PLANNER, "password": password}) as r,
    ):
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"sign-in as {PLANNER} → {r.status}: {body.get('error')}")
        return str(body["data"]["token"])


def backends(ctx: Context, tracks: int) -> list[str]:
    """PostgreSQL (the production backend at this size) when reachable; SQLite in quick mode only without
    PostgreSQL, in full mode when its 10M file was generated (`python -m bench.gen`, long on SQLite)."""
    out = ["postgresql"] if ctx.pg_available else []
    sqlite_plan = gen.read_plan(gen.cached_url("sqlite", tracks))
    if not out or (not ctx.quick and sqlite_plan is not None and sqlite_plan.complete):
        out.append("sqlite")
    return out


async def measure(
    ctx: Context, backend: str, tracks: int, ceiling_rps: float, ceiling_p99: float
) -> list[Row]:
    # Trace is a person looking a board up: 10 lookups/s is a busy quality office, and keeps the open loop
    # under the server's capacity on a shared 2-core box, so p99 is the query's latency, not a queue's.
    rate, seconds, concurrency = ctx.size((10.0, 3.0, 8), (10.0, 30.0, 16))
    url = gen.cached_url(backend, tracks)
    t0 = time.perf_counter()
    plan = await gen.ensure(url, tracks)
    prepared = time.perf_counter() - t0
    size = f"{tracks / 1e6:g}M tracks" if tracks >= 1_000_000 else f"{tracks:,} tracks"
    label = f"{'PG' if backend == 'postgresql' else 'SQLite'}, {size}"
    sns = gen.sample_sns(plan, 5_000)
    errors: list[str] = []
    async with plant.central(url, seed=False) as c:
        headers = {"Authorization": f"Bearer {await _sign_in(c.base_url)}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            pick = itertools.cycle(sns)

            async def call() -> None:
                sn = next(pick)
                async with http.get(f"{c.base_url}/api/trace/units/{sn}", params={"mode": "run"}) as r:
                    body = await r.read()
                    if r.status != 200 and len(errors) < 3:
                        errors.append(f"{sn} → {r.status} {body[:120]!r}")

            for _ in range(30):  # warm-up: connections, statement caches
                await call()
            latency = await open_loop(call, rate, seconds)
            load = await closed_loop(call, seconds, concurrency)
    note = f"{latency.requests} requests at {rate:g}/s; database ready in {prepared:.1f} s"
    if errors:
        note += f"; ERRORS: {'; '.join(errors)}"
    ok = not errors
    return [
        Row(
            "P5",
            f"trace p99 ({label}, open loop)",
            latency.p99,
            "ms",
            ceiling=ceiling_p99,
            ceiling_what="trivial handler p99",
            target=f"p99 ≤ {TARGET_P99_MS:g} ms",
            passed=ok and latency.p99 <= TARGET_P99_MS,
            note=note,
        ),
        Row("P5", f"trace p50 ({label}, open loop)", latency.p50, "ms", note=note),
        Row(
            "P5",
            f"trace max throughput ({label}, {concurrency} clients)",
            load.rps,
            "req/s",
            ceiling=ceiling_rps,
            ceiling_what="trivial handler",
            note=f"p99 under that load {load.p99:.1f} ms",
        ),
    ]


async def run(ctx: Context) -> list[Row]:
    tracks = ctx.size(100_000, 10_000_000)
    seconds, concurrency = ctx.size((2.0, 8), (10.0, 16))
    ceiling = await trivial_http_ceiling(seconds, concurrency)
    rows: list[Row] = []
    for backend in backends(ctx, tracks):
        rows += await measure(ctx, backend, tracks, ceiling.rps, ceiling.p99)
    return rows


if __name__ == "__main__":
    standalone(run)
