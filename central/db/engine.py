"""Engine and session factories for SQLite (WAL, foreign keys) and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


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


def create_database(url: str, *, pool_size: int = 10, echo: bool = False) -> Database:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["pool_size"] = max(pool_size, 2)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # A server restart or failover leaves dead pooled connections; ping on checkout replaces them.
        kwargs["pool_pre_ping"] = True
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
    engine = create_async_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_setup(engine)
        writer_bind = engine.execution_options(sqlite_begin="IMMEDIATE")
    else:
        writer_bind = engine
    return Database(
        engine=engine,
        writer=async_sessionmaker(writer_bind, expire_on_commit=False),
        reader=async_sessionmaker(engine, expire_on_commit=False),
    )
