"""mes-demo: the whole system on its embedded defaults — central on SQLite with the demo plant and an
embedded MQTT broker, the simulated automated line LINE-B (Modbus TCP PLCs, OPC UA testers) and an edge agent
forwarding its events — with live progress until Ctrl-C, or a summary after `--boards N`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from central.config import ConfigError, Settings, load_settings

STATIONS = ["ST-B-PRINT-01", "ST-B-SPI-01", "ST-B-MOUNT-01", "ST-B-REFLOW-01", "ST-B-AOI-01", "ST-B-ICT-01"]


async def _prepare(settings: Settings) -> str:
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.services.demo_seed import DemoSeedRefused, seed_demo
    from central.services.uow import UnitOfWork

    db = create_database(settings.database_url, pool_size=2)
    try:
        await upgrade(db.engine)
        try:
            async with UnitOfWork(db.writer) as uow:
                summary = await seed_demo(uow, settings)
            from central.cli import write_secret

            if summary.get("edgeApiKey"):
                write_secret("var/edge-line-b.key", summary["edgeApiKey"])
            return "demo plant loaded"
        except DemoSeedRefused:
            return "existing demo database reused"
    finally:
        await db.dispose()


def _banner(base: str, state: str, st: Settings, run_no: str | None, boards: int) -> str:
    line = f"  Line:     LINE-B simulated, run {run_no}: {boards} boards" if run_no else "  Line:     off"
    return f"""
  SMT MES demo — {state} ({st.database_url})
  API:      {base}   (docs: {base}/docs, health: {base}/health)
  Sign in:  curl -c /tmp/mes.cookies -H 'Content-Type: application/json' \\
              -d '{{"email":"planner@example.com","password":"Test123!"}}' {base}/auth/sign-in/email
            curl -b /tmp/mes.cookies {base}/runs/{run_no or "<runNo>"}
  Users:    admin@example.com / ChangeMe123!; planner, engineer, quality, material, operator,
            operator.aoi, trace @example.com / Test123!
{line}
  Stop with Ctrl+C.
"""


def _progress(demo: Any, run: dict[str, Any], stats: Any, rate: float) -> str:
    per = {s: 0 for s in STATIONS}
    for r in demo.sim.records():
        per[r["station"]] = per.get(r["station"], 0) + len(r.get("snList") or [r.get("sn")])
    boards = " ".join(f"{s.split('-')[2]} {per[s]}" for s in STATIONS)
    u = run.get("unitStats") or {}
    done = u.get("done", u.get("DONE", 0))
    return (
        f"  boards/station: {boards} | edge backlog {stats.backlog}, {rate:.1f} events/s"
        f" | central: {done} done, run {run.get('status')}"
    )


async def _summary(demo: Any) -> None:
    run = await demo.run_view()
    print(f"\n  Run {demo.run_no}: {run.get('status')}; units {run.get('unitStats')}")
    from central.demo_line import QUALITY, DemoError, _call, _session, _sign_in

    async with _session(demo.base_url) as http:
        await _sign_in(http, *QUALITY)
        try:
            oqc = await _call(http, "get", f"oqc/run/{demo.run_no}")
            print(f"  OQC: {oqc.get('status')}, sample {oqc.get('sampleQty')} unit(s), by the 5 % rule")
        except DemoError:
            print("  OQC: none (no sampling rule applied)")
    trace = await demo.trace(demo.sns[0])
    print(f"  Trace of {demo.sns[0]}: {len(trace.get('tracks', []))} tracks")
    for t in trace.get("tracks", []):
        print(f"    step {t.get('stepNo')} {t.get('stationCode')}: {t.get('result')} at {t.get('outAt')}")
    values, events = len(trace.get("dataValues", [])), len(trace.get("ingestEvents", []))
    print(f"    data values: {values}, ingest events: {events}")


async def _run(st: Settings, state: str, args: argparse.Namespace) -> int:
    from central.demo_line import DemoError, DemoLine

    boards = args.boards or 500
    demo = DemoLine(st, Path("var/demo"), boards=boards, takt=args.takt)
    demo.workdir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await demo.start_central()
        if args.no_line:
            print(_banner(demo.base_url, state, st, None, 0), flush=True)
            await stop.wait()
            return 0
        await demo.prepare_run()
        print(_banner(demo.base_url, state, st, demo.run_no, boards), flush=True)
        await demo.start_line()
        assert demo.agent is not None and demo.agent.outbox is not None
        last = (time.monotonic(), 0)
        quiet: tuple[Any, float] = (None, time.monotonic())
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.every)
            run = await demo.run_view()
            stats = await demo.agent.outbox.stats()
            now = time.monotonic()
            rate = (stats.delivered_total - last[1]) / max(now - last[0], 1e-3)
            last = (now, stats.delivered_total)
            print(_progress(demo, run, stats, rate), flush=True)
            if args.boards and run.get("status") not in ("AUTHORIZED", "IN_PROGRESS"):
                break
            u = run.get("unitStats") or {}
            if args.boards and stats.backlog == 0 and u.get("total") and u.get("total") == _terminal(u):
                break
            # A board the line failed stays OUT_FAILED: stop once the line is done and nothing moves any more.
            sim = demo.sim
            line_done = sim is not None and len(sim.done_boards) + len(sim.failed_boards) >= boards
            moved = (u.get("done"), stats.delivered_total) != quiet[0]
            quiet = (quiet[0], now) if not moved else ((u.get("done"), stats.delivered_total), now)
            if args.boards and line_done and stats.backlog == 0 and now - quiet[1] > 15:
                break
        await _summary(demo)
        if not args.boards:
            return 0
        u = (await demo.run_view()).get("unitStats") or {}
        ok = u.get("done") == args.boards
        print(f"  {'OK' if ok else 'INCOMPLETE'}: {u.get('done')} of {args.boards} units DONE", flush=True)
        return 0 if ok else 1
    except DemoError as exc:
        print(f"mes-demo: {exc}", file=sys.stderr)
        return 1
    finally:
        await demo.close()


def _terminal(u: dict[str, Any]) -> int:
    return sum(int(u.get(k, 0) or 0) for k in ("done", "scrapped", "DONE", "SCRAPPED"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mes-demo", description=__doc__)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--db", default="sqlite+aiosqlite:///./var/demo.db")
    p.add_argument(
        "--boards", type=int, default=0, help="exit with a summary after N boards (0: until Ctrl-C)"
    )
    p.add_argument("--takt", type=float, default=1.0, help="seconds per board per station")
    p.add_argument("--every", type=float, default=2.0, help="seconds between progress lines")
    p.add_argument("--no-line", action="store_true", help="central only (no simulated line, no edge agent)")
    args = p.parse_args(argv)
    try:
        st = load_settings(
            database_url=args.db,
            http_port=args.port,
            allow_demo_seed=True,
            mqtt_url="embedded",
            mqtt_embedded_port=0,
        )
    except ConfigError as exc:
        print(f"mes-demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The simulated testers serve OPC UA without security on 127.0.0.1: asyncua's warnings about it are noise.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    Path("var").mkdir(exist_ok=True)
    state = asyncio.run(_prepare(st))
    return asyncio.run(_run(st, state, args))


if __name__ == "__main__":
    sys.exit(main())
