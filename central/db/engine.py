"""Engine and session factories for SQLite (WAL, foreign keys) and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_only

# PostgreSQL over a network that may go silent (pulled cable, dead host): without client-side limits a request
# waits for the kernel's TCP timeout (~15 min) instead of answering 503 (quality-bars.md R3). A URL query
# (`?timeout=…&command_timeout=…`) overrides these defaults.
PG_CONNECT_TIMEOUT_S = 5.0  # opening a connection, authentication included
# Any one statement. Far above what the product's statements take, but a bound: an in-flight query whose
# server vanished fails (503 / MQTT RETRY) instead of holding its request or the edge's worker forever.
PG_COMMAND_TIMEOUT_S = 60.0
PG_PING_TIMEOUT_S = 2.0  # the checkout ping: an idle server answers it in milliseconds


@dataclass(frozen=True)
class Database:
    engine: AsyncEngine
    # Writers start SQLite transactions with BEGIN IMMEDIATE so two writers never deadlock on the
    # read→write lock upgrade; readers use a deferred BEGIN and never block writers under WAL.
    writer: async_sessionmaker[AsyncSession]
    reader: async_sessionmaker[AsyncSession]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_setup(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so we can emit BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _pg_setup(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _ping(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        # SQLAlchemy's pool_pre_ping, with a time limit it lacks: its ping waits as long as the statement
        # timeout. A closed connection (server restarted) is replaced transparently; one that does not answer
        # is dropped and the request fails at once (TimeoutError → 503) rather than waiting to reconnect.
        conn = record.driver_connection
        try:
            await_only(conn.fetchrow(";", timeout=PG_PING_TIMEOUT_S))
        except TimeoutError:
            # Aborted here: the pool's invalidation would first wait 2 s more for a polite close.
            conn.terminate()
            raise
        except Exception as err:
            raise exc.DisconnectionError(f"pooled connection unusable: {type(err).__name__}") from err


def create_database(url: str, *, pool_size: int = 10, echo: bool = False) -> Database:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["pool_size"] = max(pool_size, 2)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # A server restart or failover leaves dead pooled connections; `_pg_setup` pings them on checkout.
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        query = parsed.query
        kwargs["connect_args"] = {
            "timeout": float(query.get("timeout", PG_CONNECT_TIMEOUT_S)),  # type: ignore[arg-type]
            "command_timeout": float(query.get("command_timeout", PG_COMMAND_TIMEOUT_S)),  # type: ignore[arg-type]
        }
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_setup(engine)
        writer_bind = engine.execution_options(sqlite_begin="IMMEDIATE")
    else:
        _pg_setup(engine)
        writer_bind = engine
    return Database(
        engine=engine,
        writer=async_sessionmaker(writer_bind, expire_on_commit=False),
        reader=async_sessionmaker(engine, expire_on_commit=False),
    )
