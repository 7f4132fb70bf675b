"""mes-central: serve, migrate, seed, users, tokens."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from central.config import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _configure_logging(level: str, *, with_pid: bool = False) -> None:
    # Several server processes write to one journal: then every line names the process that wrote it.
    pid = " [%(process)d]" if with_pid else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s{pid} %(name)s: %(message)s")
    # aiohttp logs each request at INFO; keep it, but never the query strings with credentials.
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


# %Tf is seconds (0.012345s); %a is the peer: behind nginx, the proxy (the audit trail names the client).
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from central.api.app import create_app

    st = _settings(args)
    host = args.host or st.http_host
    port = args.port if args.port is not None else st.http_port
    if args.worker_index is not None:
        _configure_logging(st.log_level, with_pid=True)
        return _serve_worker(st, host, port)
    if args.workers > 1:
        _configure_logging(st.log_level, with_pid=True)
        return _serve_workers(args, st, host, port)
    _configure_logging(st.log_level)
    print(
        f"mes-central listening on http://{host}:{port}  (API docs: http://{host}:{port}/api/docs)",
        flush=True,
    )
    web.run_app(create_app(st), host=host, port=port, print=None, access_log_format=ACCESS_LOG_FORMAT)
    return 0


def check_scale_out(st: Settings, port: int) -> None:
    """Refuses settings under which N processes on one port would not work (ConfigError, exit code 2)."""
    if st.mqtt_url == "embedded":
        raise ConfigError(
            'serve --workers N > 1 cannot use the embedded MQTT broker (mqtt_url = "embedded" runs one '
            "amqtt broker inside one process): use an external broker (MES_MQTT_URL=mqtt://…) with "
            "MES_MQTT_SHARED_GROUP, or --workers 1"
        )
    if st.mqtt_url != "disabled" and not st.mqtt_shared_group:
        raise ConfigError(
            "serve --workers N > 1 with an MQTT broker needs a shared subscription: set mqtt_shared_group "
            "(MES_MQTT_SHARED_GROUP, e.g. mes-central), the same on every central process; without it "
            "every worker would receive and apply every edge batch"
        )
    if port == 0:
        raise ConfigError("serve --workers N > 1 needs a fixed port (http_port 0 gives each worker its own)")


async def _prepare_database(st: Settings) -> None:
    """What each process would do at start, done once by the parent: the workers start on a ready schema."""
    from central.db.engine import create_database
    from central.db.migrate import upgrade
    from central.services.bootstrap import ensure_admin

    db = create_database(st.database_url, pool_size=2)
    try:
        if st.migrate_on_start:
            await upgrade(db.engine)
        await ensure_admin(db.writer, st)
    finally:
        await db.dispose()


def _serve_workers(args: argparse.Namespace, st: Settings, host: str, port: int) -> int:
    import shutil
    import tempfile

    from central.supervisor import Supervisor

    check_scale_out(st, port)
    if st.is_sqlite:
        logging.getLogger("central").warning(
            "%d workers on SQLite: every write still goes through one database file, one at a time; "
            "use PostgreSQL to gain from several processes",
            args.workers,
        )
    asyncio.run(_prepare_database(st))
    # prometheus_client's multiprocess mode: each worker writes its samples here, /metrics sums them.
    # Fresh and private per start: samples of an earlier run's workers must not be summed in.
    metrics_dir = tempfile.mkdtemp(prefix="mes-central-metrics-")
    base_env = {**os.environ, "MES_MIGRATE_ON_START": "false", "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    config = ["--config", args.config] if args.config else []

    def command(i: int) -> list[str]:
        where = ["--host", host, "--port", str(port)]
        return [sys.executable, "-m", "central.cli", *config, "serve", *where, "--worker-index", str(i)]

    def env(i: int) -> dict[str, str]:
        if not st.mqtt_client_id:
            return base_env
        # One client id per connection: a broker disconnects the older of two clients sharing one.
        return {**base_env, "MES_MQTT_CLIENT_ID": f"{st.mqtt_client_id}-{i}"}

    def metrics_of_dead_worker(pid: int) -> None:
        try:
            from prometheus_client import multiprocess
        except ImportError:
            return
        multiprocess.mark_process_dead(pid, metrics_dir)

    supervisor = Supervisor(args.workers, command, env, on_exit=metrics_of_dead_worker)
    supervisor.install_signal_handlers()
    print(
        f"mes-central listening on http://{host}:{port} with {args.workers} worker processes  "
        f"(API docs: http://{host}:{port}/api/docs)",
        flush=True,
    )
    try:
        return supervisor.run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_worker(st: Settings, host: str, port: int) -> int:
    """One of `serve --workers N`: the usual server, on a port it shares (SO_REUSEPORT)."""
    from aiohttp import web

    from central.api.app import create_app

    app = create_app(st)
    app.cleanup_ctx.append(_exit_with_parent)
    web.run_app(app, host=host, port=port, reuse_port=True, print=None, access_log_format=ACCESS_LOG_FORMAT)
    return 0


async def _exit_with_parent(_app: Any) -> AsyncIterator[None]:
    """A worker whose parent died (kill -9) ends itself instead of holding the port as an orphan."""
    import signal

    parent = os.getppid()

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:  # re-parented: polled, as no signal tells a child its parent died
                break
        logging.getLogger("central").warning("the supervising process %d is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)  # run_app's handler: a graceful shutdown

    task = asyncio.create_task(watch(), name="watch-parent")
    yield
    task.cancel()


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


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return n


def cmd_archive(args: argparse.Namespace) -> int:
    from pathlib import Path

    from central.services.archive import archive_runs, purge_receipts

    st = _settings(args)
    days = args.older_than if args.older_than is not None else st.archive_after_days

    async def run(db: Any) -> Any:
        report = await archive_runs(
            db, older_than_days=days, out_dir=Path(args.out), dry_run=args.dry_run, limit=args.limit
        )
        purged = None
        if args.purge_receipts is not None and not args.dry_run:
            purged = await purge_receipts(db, older_than_days=args.purge_receipts)
        return report, purged

    report, purged = asyncio.run(_with_db(st, run))
    verb = "would archive" if args.dry_run else "archived"
    print(f"runs ended before {report.cutoff.isoformat()} ({days} days):")
    for o in report.outcomes:
        rows = sum(o.rows.values())
        note = f" [{o.reason}]" if o.reason else ""
        print(f"  {o.status:<13} {o.run_no}  rows={rows}  bytes={o.bytes}  {o.file or ''}{note}")
    done = report.done("WOULD_ARCHIVE" if args.dry_run else "ARCHIVED")
    refused = report.done("REFUSED")
    per_table = ", ".join(f"{t}={n}" for t, n in sorted(report.rows.items())) or "none"
    print(f"{verb} {len(done)} runs, refused {len(refused)}; rows: {per_table}")
    print(f"{report.bytes} bytes written in {report.seconds:.2f} s")
    if purged is not None:
        print(f"purged {purged}")
    return 1 if report.integrity_problem else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mes-central", description="SMT MES central server")
    p.add_argument("--config", help="TOML config file (default: $MES_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP server (migrates to head first)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT); N > 1 needs PostgreSQL to pay off and, "
        "with an MQTT broker, mqtt_shared_group",
    )
    s.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the parent of --workers N
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

    ar = sub.add_parser("archive", help="move closed runs older than N days to archive files (RETENTION.md)")
    ar.add_argument("--older-than", type=float, metavar="DAYS", help="default: archive_after_days setting")
    ar.add_argument("--out", default="var/archive", metavar="DIR", help="archive root (default var/archive)")
    ar.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    ar.add_argument("--limit", type=int, metavar="N", help="archive at most N runs in this invocation")
    ar.add_argument(
        "--purge-receipts",
        type=float,
        metavar="DAYS",
        help="also delete edge receipts and finished integration messages older than DAYS",
    )
    ar.set_defaults(fn=cmd_archive)
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
