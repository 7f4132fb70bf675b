"""mes-central: serve, migrate, seed, users, tokens."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from central.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiohttp logs each request at INFO; keep it, but never the query strings with credentials.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from central.api.app import create_app

    st = _settings(args)
    _configure_logging(st.log_level)
    host = args.host or st.http_host
    port = args.port if args.port is not None else st.http_port
    print(
        f"mes-central listening on http://{host}:{port}  (API docs: http://{host}:{port}/api/docs)",
        flush=True,
    )
    web.run_app(create_app(st), host=host, port=port, print=None, access_log_format='%a "%r" %s %b %Tfms')
    return 0


async def _with_db(st: Settings, fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from central.db.engine import create_database
    from central.db.migrate import upgrade

    db = create_database(st.database_url, pool_size=2)
    try:
        await upgrade(db.engine)
        return await fn(db)
    finally:
        await db.dispose()


def cmd_migrate(args: argparse.Namespace) -> int:
    from central.db.migrate import current_revision

    st = _settings(args)

    async def run(db: Any) -> None:
        print(f"database at revision {await current_revision(db.engine)}")

    asyncio.run(_with_db(st, run))
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from central.services.demo_seed import seed_demo
    from central.services.uow import UnitOfWork

    st = _settings(args)

    async def run(db: Any) -> Any:
        async with UnitOfWork(db.writer) as uow:
            return await seed_demo(uow, st, force=args.force)

    summary = asyncio.run(_with_db(st, run))
    key = summary.pop("edgeApiKey", None)
    print(f"demo plant loaded: {summary}")
    if key:
        print(f"edge API key for edge-line-b written to {write_secret(args.edge_key_file, key)} (mode 0600)")
    return 0


def write_secret(path: str, secret: str) -> str:
    """Writes a secret to a file only its owner can read (never to stdout or logs)."""
    from pathlib import Path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch(mode=0o600, exist_ok=True)
    p.chmod(0o600)
    p.write_text(secret + "\n", encoding="utf-8")
    return str(p)


def cmd_users_create(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from central.schemas.auth import UserCreate
    from central.services.bootstrap import ensure_preset_roles
    from central.services.uow import UnitOfWork
    from central.services.users import create_user

    st = _settings(args)
    password = args.password or os.environ.get("MES_NEW_USER_PASSWORD") or getpass.getpass("Password: ")
    body = UserCreate(
        email=args.email,
        name=args.name or args.email.split("@")[0],
        password=SecretStr(password),
        roles=args.role,
        line_ids=args.line_id or [],
        station_ids=args.station_id or [],
    )

    async def run(db: Any) -> Any:
        async with UnitOfWork(db.writer) as uow:
            await ensure_preset_roles(uow.session)
            return await create_user(uow, body)

    out = asyncio.run(_with_db(st, run))
    print(f"user {out['email']} created (id {out['id']}, roles {', '.join(out['roles'])})")
    return 0


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from central.schemas.auth import ApiKeyCreate
    from central.services.bootstrap import ensure_preset_roles
    from central.services.uow import UnitOfWork
    from central.services.users import create_api_key_for

    st = _settings(args)

    async def run(db: Any) -> Any:
        async with UnitOfWork(db.writer) as uow:
            await ensure_preset_roles(uow.session)
            return await create_api_key_for(uow, ApiKeyCreate(name=args.name, role=args.role))

    row, key = asyncio.run(_with_db(st, run))
    print(f"API key {row.name!r} (id {row.id}) — shown once, store it now:", file=sys.stderr)
    print(key)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mes-central", description="SMT MES central server")
    p.add_argument("--config", help="TOML config file (default: $MES_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP server (migrates to head first)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(fn=cmd_serve)

    sub.add_parser("migrate", help="bring the database schema to the newest version").set_defaults(
        fn=cmd_migrate
    )

    sd = sub.add_parser("seed", help="load a data set")
    sd.add_argument("dataset", choices=["demo"])
    sd.add_argument("--force", action="store_true", help="load even if production data exists")
    sd.add_argument(
        "--edge-key-file", default="var/edge-line-b.key", help="where the edge agent's API key goes"
    )
    sd.set_defaults(fn=cmd_seed)

    u = sub.add_parser("users", help="manage users").add_subparsers(dest="users_cmd", required=True)
    uc = u.add_parser("create", help="create a user")
    uc.add_argument("--email", required=True)
    uc.add_argument("--name")
    uc.add_argument("--password", help="default: $MES_NEW_USER_PASSWORD or a prompt")
    uc.add_argument("--role", action="append", default=[], help="role code (repeatable)")
    uc.add_argument("--line-id", type=int, action="append")
    uc.add_argument("--station-id", type=int, action="append")
    uc.set_defaults(fn=cmd_users_create)

    t = sub.add_parser("tokens", help="manage API keys").add_subparsers(dest="tokens_cmd", required=True)
    tc = t.add_parser("create", help="create an API key for a machine")
    tc.add_argument("--name", required=True)
    tc.add_argument("--role", required=True)
    tc.set_defaults(fn=cmd_tokens_create)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"mes-central: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from central.domain.errors import MesError

        if isinstance(exc, MesError):
            print(f"mes-central: {exc.code}: {exc.message}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
