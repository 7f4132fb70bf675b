"""P2 — the REST interlock (quality-bars.md): track-in + track-out pairs as a line-side station client sends
them, at 200 requests/s: p50 ≤ 5 ms, p99 ≤ 20 ms; and the maximum throughput ≥ 50 % of a trivial aiohttp JSON
handler measured in the same run (the ceiling).

Real HTTP against a real central on a migrated, seeded database; an operator signed in with a session, bound
to the station; each pair moves one unit of an authorized LINE-B run one step (every guard of domain.md §4.1
and §4.2 runs, and both writes commit).
"""

from __future__ import annotations

import itertools

import aiohttp
from sqlalchemy import select

from bench import plant
from bench.common import (
    Context,
    LoadResult,
    Row,
    closed_loop,
    database,
    open_loop,
    standalone,
    trivial_http_ceiling,
)
from central.db.models import Run, Station, WorkOrder

STATION = "ST-B-PRINT-01"
OPERATOR = "bench-operator@example.com"
PASSWORD = "Bench-operator-1"
RATE = 200.0  # requests/s: 100 pairs


async def _operator(c: plant.Central) -> None:
    from central.schemas.auth import UserCreate
    from central.services.uow import UnitOfWork
    from central.services.users import create_user

    async with UnitOfWork(c.db.writer) as uow:
        station_id = await uow.session.scalar(select(Station.id).where(Station.code == STATION))
        body = {"email": OPERATOR, "name": "bench", "password": PASSWORD, "roles": ["operator"]}
        await create_user(uow, UserCreate.model_validate({**body, "stationIds": [station_id]}))


async def measure(ctx: Context, backend: str) -> tuple[LoadResult, LoadResult, LoadResult, int]:
    seconds, burst = ctx.size(1.0, 30.0), ctx.size(1.0, 15.0)
    units = int(RATE / 2 * seconds) + ctx.size(300, 14_000)
    async with database(ctx, backend, "p2") as url, plant.central(url) as c:
        from central.demo_line import prepare_run

        await _operator(c)
        run_no, sns = await prepare_run(f"{c.base_url}/api", units, sn_prefix="P2-")
        async with c.db.reader() as db:
            wo_no = await db.scalar(
                select(WorkOrder.wo_no).join(Run, Run.wo_id == WorkOrder.id).where(Run.run_no == run_no)
            )
        queue = iter(sns)
        failures = itertools.count()
        async with aiohttp.ClientSession(
            base_url=c.base_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as http:
            r = await http.post("/api/auth/sign-in/email", json={"email": OPERATOR, "password": PASSWORD})
            assert r.status == 200, await r.text()

            async def pair() -> None:
                sn = next(queue)
                for path, body in (
                    ("track-in", {"sn": sn, "woNo": wo_no, "runNo": run_no}),
                    ("track-out", {"sn": sn, "runNo": run_no, "result": "PASS"}),
                ):
                    async with http.post(f"/api/stations/{STATION}/{path}", json=body) as resp:
                        await resp.read()
                        if resp.status != 200:
                            next(failures)

            alone = await closed_loop(pair, burst, concurrency=1)  # the service time, no queue
            paced = await open_loop(pair, RATE / 2, seconds)
            fastest = await closed_loop(pair, burst, concurrency=16)
        # A pair is two requests: the rates and latencies are per request.
        return _per_request(alone), _per_request(paced), _per_request(fastest), next(failures)


def _per_request(r: LoadResult) -> LoadResult:
    return LoadResult(r.requests * 2, r.seconds, [x / 2 for x in r.latencies_ms])


async def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    ceiling = await trivial_http_ceiling(ctx.size(1.5, 15.0), 16)
    backends = ["sqlite"] + (["postgresql"] if ctx.pg_available and not ctx.quick else [])
    for backend in backends:
        alone, paced, fastest, failed = await measure(ctx, backend)
        note = f"{failed} requests refused" if failed else ""
        rows += [
            Row(
                "P2",
                f"interlock p50, one client (service time), {backend}",
                alone.p50,
                "ms",
                ceiling=ceiling.p50,
                ceiling_what="trivial handler p50 ms",
                note=f"p99 {alone.p99:.1f} ms",
            ),
            Row(
                "P2",
                f"interlock p50 at {RATE:.0f} req/s, {backend}",
                paced.p50,
                "ms",
                ceiling=ceiling.p50,
                ceiling_what="trivial handler p50 ms",
                target="≤ 5 ms",
                passed=paced.p50 <= 5 and not failed,
                note=note,
            ),
            Row(
                "P2",
                f"interlock p99 at {RATE:.0f} req/s, {backend}",
                paced.p99,
                "ms",
                ceiling=ceiling.p99,
                ceiling_what="trivial handler p99 ms",
                target="≤ 20 ms",
                passed=paced.p99 <= 20 and not failed,
            ),
            Row(
                "P2",
                f"interlock max throughput, {backend}",
                fastest.rps,
                "req/s",
                ceiling=ceiling.rps,
                ceiling_what="trivial aiohttp handler req/s",
                target="ratio ≥ 0.5",
                passed=fastest.rps / ceiling.rps >= 0.5 and not failed,
            ),
        ]
    return rows


if __name__ == "__main__":
    standalone(run)
