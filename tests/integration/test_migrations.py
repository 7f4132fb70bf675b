"""Alembic migrations run unchanged from an empty database to head on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from central.db.base import Base
from central.db.engine import create_database
from central.db.migrate import alembic_config, current_revision, upgrade
from tests import services


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _check(url: str) -> None:
    db = create_database(url, pool_size=1)
    try:
        assert await current_revision(db.engine) is None
        await upgrade(db.engine)
        await upgrade(db.engine)  # a second run at head is a no-op
        assert await current_revision(db.engine) == _head()
        async with db.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        assert set(Base.metadata.tables) <= tables
    finally:
        await db.dispose()


async def test_migrations_from_empty_on_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")


async def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", pool_size=1)
    try:
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await db.dispose()


async def test_migrations_from_empty_on_postgresql() -> None:
    if not services.postgres_available():
        # Reported in the summary line; MES_REQUIRE_SERVICES=1 (CI) makes this an error instead.
        return
    name = f"mes_mig_{uuid.uuid4().hex[:10]}"
    await services.pg_admin(f'CREATE DATABASE "{name}"')
    try:
        await _check(services.pg_url(name))
    finally:
        await services.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_concurrent_migrations_on_postgresql_serialise() -> None:
    """Two central processes starting together: the advisory lock lets exactly one migrate."""
    if not services.postgres_available():
        return
    name = f"mes_mig_{uuid.uuid4().hex[:10]}"
    await services.pg_admin(f'CREATE DATABASE "{name}"')
    dbs = [create_database(services.pg_url(name), pool_size=1) for _ in range(2)]
    try:
        await asyncio.gather(*(upgrade(db.engine) for db in dbs))
        assert await current_revision(dbs[0].engine) == _head()
    finally:
        for db in dbs:
            await db.dispose()
        await services.pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
