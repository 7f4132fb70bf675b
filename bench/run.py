"""`make bench`: each figure beside the ceiling measured in the same run on this machine.

Today it measures the REST platform (auth + envelope + session lookup on a real database) against a trivial
aiohttp JSON handler. The P1–P6 targets of quality-bars.md need the execution, ingest and edge parts;
their rows say so until those land (docs/ROADMAP.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

RESULTS = Path(__file__).parent / "results" / "latest.json"


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            async with http.get(url, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def _trivial() -> web.Application:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "data": {"status": "ok"}})

    app = web.Application()
    app.router.add_get("/x", handler)
    return app


async def main(quick: bool) -> int:
    from central.api.app import create_app
    from central.config import Settings
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.schemas.auth import UserCreate
    from central.services.bootstrap import ensure_preset_roles
    from central.services.uow import UnitOfWork
    from central.services.users import create_user

    seconds, conc = (3.0, 8) if quick else (15.0, 16)
    runner, base = await _serve(await _trivial())
    ceiling = await _load(f"{base}/x", {}, seconds, conc)
    await runner.cleanup()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        db = create_database(url)
        await upgrade(db.engine)
        async with UnitOfWork(db.writer) as uow:
            await ensure_preset_roles(uow.session)
            await create_user(
                uow,
                UserCreate.model_validate(
                    {
                        "email": "bench@example.com",
                        "name": "b",
                        "password": "Bench-pass1",
                        "roles": ["planner"],
                    }
                ),
            )
        runner, base = await _serve(
            create_app(Settings(database_url=url, migrate_on_start=False), database=db)
        )
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/auth/sign-in/email",
                json={"email": "bench@example.com", "password": "Bench-pass1"},
            ) as r,
        ):
            token = (await r.json())["data"]["token"]
        measured = await _load(
            f"{base}/api/permissions/me", {"Authorization": f"Bearer {token}"}, seconds, conc
        )
        await runner.cleanup()
        await db.dispose()

    rows: list[dict[str, Any]] = [
        {
            "metric": "authenticated read (GET /api/permissions/me, SQLite) req/s",
            "value": measured["rps"],
            "ceiling": ceiling["rps"],
            "ratio": measured["rps"] / ceiling["rps"],
            "target": None,
            "result": "INFO",
        },
        {
            "metric": "authenticated read p50 ms",
            "value": measured["p50_ms"],
            "ceiling": ceiling["p50_ms"],
            "ratio": measured["p50_ms"] / ceiling["p50_ms"],
            "target": None,
            "result": "INFO",
        },
        {
            "metric": "authenticated read p99 ms",
            "value": measured["p99_ms"],
            "ceiling": ceiling["p99_ms"],
            "ratio": measured["p99_ms"] / ceiling["p99_ms"],
            "target": None,
            "result": "INFO",
        },
    ]
    for pid in ("P1", "P2", "P3", "P4", "P5", "P6"):
        rows.append(
            {
                "metric": f"{pid} (quality-bars.md)",
                "value": None,
                "ceiling": None,
                "ratio": None,
                "target": "see quality-bars.md",
                "result": "NOT YET MEASURABLE",
            }
        )
    print(f"{'metric':60} | {'value':>10} | {'ceiling':>10} | {'ratio':>6} | target | result")

    def f(v: Any) -> str:
        return f"{v:10.2f}" if isinstance(v, float) else f"{'—':>10}"

    def ratio(v: Any) -> str:
        return f"{v:6.2f}" if isinstance(v, float) else f"{'—':>6}"

    for r in rows:
        print(
            f"{r['metric']:60} | {f(r['value'])} | {f(r['ceiling'])} | "
            f"{ratio(r['ratio'])} | "
            f"{r['target'] or '—'} | {r['result']}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "quick": quick,
                "machine": platform.platform(),
                "python": platform.python_version(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    raise SystemExit(asyncio.run(main(p.parse_args().quick)))
