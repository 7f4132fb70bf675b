"""Fixtures of the tests that run the whole edge system (tests/e2e and tests/reliability): a seeded SQLite
database, a broker process, the Stack of central + simulated line + agent. Imported by name where used."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests import services
from tests.brokers import Broker
from tests.e2e.edge_system import ROOT, Stack


@pytest.fixture(scope="module")
def seeded_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated and seeded once by `mes-central migrate` + `seed demo`; copied per test."""
    path = tmp_path_factory.mktemp("seeded") / "mes.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
    env.update(MES_DATABASE_URL=f"sqlite+aiosqlite:///{path}", MES_ALLOW_DEMO_SEED="true")
    key_file = str(path.parent / "edge.key")
    for args in (["migrate"], ["seed", "demo", "--edge-key-file", key_file]):
        done = subprocess.run(
            [sys.executable, "-m", "central.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    return path


@pytest.fixture
def sqlite_url(seeded_sqlite: Path, tmp_path: Path) -> str:
    target = tmp_path / "mes.db"
    shutil.copyfile(seeded_sqlite, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(tmp_path / "broker")
    await asyncio.to_thread(b.start)
    yield b
    await asyncio.to_thread(b.stop)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        print(s.logs())  # shown by pytest when the test failed
        await s.close()


@pytest.fixture
def shared_pg(request: pytest.FixtureRequest) -> Iterator[str]:
    """A PostgreSQL database of its own (migrated, from the session template) for several processes."""
    if not services.postgres_available():  # MES_REQUIRE_SERVICES=1 (CI) raises instead of landing here
        pytest.skip("several central processes share one PostgreSQL database: PostgreSQL is not reachable")
    with services.pg_copy(request.getfixturevalue("pg_template"), "mes_sh_") as url:
        yield url


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[Broker]:
    """A Mosquitto of the test's own: MQTT v5 shared subscriptions (the embedded broker has none)."""
    b = Broker(tmp_path / "broker")
    if b.kind != "mosquitto":  # MES_REQUIRE_SERVICES=1 (CI) raises in Broker() instead of landing here
        pytest.skip("MQTT v5 shared subscriptions need Mosquitto, which is not installed")
    await asyncio.to_thread(b.start)
    yield b
    await asyncio.to_thread(b.stop)
