"""mes-demo: central on SQLite with the demo plant, ready to sign in to (the whole system once edge lands)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from central.config import ConfigError, load_settings


async def _prepare(url: str, settings: object) -> str:
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.services.demo_seed import DemoSeedRefused, seed_demo
    from central.services.uow import UnitOfWork

    db = create_database(url, pool_size=2)
    try:
        await upgrade(db.engine)
        try:
            async with UnitOfWork(db.writer) as uow:
                summary = await seed_demo(uow, settings)  # type: ignore[arg-type]
            from central.cli import write_secret

            if summary.get("edgeApiKey"):
                write_secret("var/edge-line-b.key", summary["edgeApiKey"])
            return "demo plant loaded"
        except DemoSeedRefused:
            return "existing demo database reused"
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mes-demo", description="Run central with the demo plant on SQLite")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--db", default="sqlite+aiosqlite:///./var/demo.db")
    args = p.parse_args(argv)
    try:
        st = load_settings(database_url=args.db, http_port=args.port, allow_demo_seed=True)
    except ConfigError as exc:
        print(f"mes-demo: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=st.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = asyncio.run(_prepare(st.database_url, st))
    base = f"http://{st.http_host}:{st.http_port}"
    print(
        f"""
  SMT MES demo — {state} ({st.database_url})
  API:      {base}/api   (docs: {base}/api/docs, health: {base}/api/health)
  Sign in:  curl -c /tmp/mes.cookies -H 'Content-Type: application/json' \\
              -d '{{"email":"planner@example.com","password":"Test123!"}}' {base}/api/auth/sign-in/email
            curl -b /tmp/mes.cookies {base}/api/permissions/me
  Users:    admin@example.com / ChangeMe123!; planner, engineer, quality, material, operator,
            operator.aoi, trace @example.com / Test123!
  Stop with Ctrl+C.
""",
        flush=True,
    )
    from aiohttp import web

    from central.api.app import create_app

    web.run_app(create_app(st), host=st.http_host, port=st.http_port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
