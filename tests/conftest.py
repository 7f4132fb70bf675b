"""Shared fixtures: a fresh migrated database per test on every available backend, and a live app."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from central.api.app import create_app
from central.config import Settings
from central.db.engine import Database, create_database
from central.db.migrate import upgrade
from tests import services
from tests.client import Api

# The whole-system fixtures (seeded SQLite, broker process, Stack) shared by tests/e2e and tests/reliability.
pytest_plugins = ["tests.e2e.fixtures"]

_TEMPLATE_PG = f"mes_tpl_{os.getpid()}"
_USED: set[str] = set()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", services.backends(), scope="session")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    used = ", ".join(sorted(_USED)) or "none"
    pg = "PostgreSQL" if services.postgres_available() else "no PostgreSQL (fallback: SQLite only)"
    terminalreporter.write_line(f"database backends used: {used}; {pg}")
    from tests import brokers, shared_broker

    shared = ", ".join(sorted(shared_broker.USED)) or "none"
    terminalreporter.write_line(f"{brokers.summary_line()}; shared broker: {shared}")


async def _migrate(url: str) -> None:
    db = create_database(url, pool_size=1)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    asyncio.run(services.pg_admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE_PG}"'))
    asyncio.run(services.pg_admin(f'CREATE DATABASE "{_TEMPLATE_PG}"'))
    asyncio.run(_migrate(services.pg_url(_TEMPLATE_PG)))
    yield _TEMPLATE_PG
    asyncio.run(services.pg_admin(f'DROP DATABASE IF EXISTS "{_TEMPLATE_PG}" WITH (FORCE)'))


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated, empty database for one test (copied from a template migrated once)."""
    _USED.add(backend)
    if backend == "sqlite":
        target = tmp_path / "mes.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    with services.pg_copy(request.getfixturevalue("pg_template"), "mes_t_") as url:
        yield url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=db_url, migrate_on_start=False, allow_demo_seed=True)


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = create_database(settings.database_url, pool_size=5)
    yield db
    await db.dispose()


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings, database: Database) -> TestClient:
    return await aiohttp_client(create_app(settings, database=database))


@pytest.fixture
async def api(client: TestClient) -> Api:
    return Api(client)


@pytest.fixture
def make_user(database: Database) -> Any:
    """Creates a user with roles and bindings straight through the service layer."""
    from pydantic import SecretStr

    from central.schemas.auth import UserCreate
    from central.services.bootstrap import ensure_preset_roles
    from central.services.uow import UnitOfWork
    from central.services.users import create_user

    async def make(
        email: str,
        *roles: str,
        password: str = "Test123!",
        line_ids: list[int] | None = None,
        station_ids: list[int] | None = None,
    ) -> dict[str, Any]:
        async with UnitOfWork(database.writer) as uow:
            await ensure_preset_roles(uow.session)
            return await create_user(
                uow,
                UserCreate(
                    email=email,
                    name=email.split("@")[0],
                    password=SecretStr(password),
                    roles=list(roles),
                    line_ids=line_ids or [],
                    station_ids=station_ids or [],
                ),
            )

    return make
