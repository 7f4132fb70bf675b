"""Which real services this run can use (PostgreSQL, Mosquitto), and the fallback policy.

On a laptop without them the suite falls back (SQLite only, embedded broker); with
MES_REQUIRE_SERVICES=1 (set by .ci/run) a missing service is an error instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import asyncpg

PG_HOST = os.environ.get("MES_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MES_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MES_TEST_PG_USER", "postgres")
REQUIRE = os.environ.get("MES_REQUIRE_SERVICES", "") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@cache
def postgres_available() -> bool:
    ok = _reachable(PG_HOST, PG_PORT)
    if not ok and REQUIRE:
        raise RuntimeError(f"MES_REQUIRE_SERVICES=1 but PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}")
    return ok


async def pg_admin(sql: str) -> None:
    """One statement on the `postgres` database (CREATE/DROP DATABASE of the tests' own databases)."""
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_url(database: str) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@contextmanager
def pg_copy(template: str, prefix: str) -> Iterator[str]:
    """A database of its own, copied from a migrated template (named `prefix` + random), dropped afterwards;
    → its URL. For sync fixtures: it runs its own event loop."""
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield pg_url(name)
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if postgres_available() else ["sqlite"]
