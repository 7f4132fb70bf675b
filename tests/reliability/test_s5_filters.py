"""S5 — sort and filter parameters are allow-listed and never string-built SQL.

How: the demo plant is loaded into a fresh database (SQLite and PostgreSQL) and a user holding every
permission walks every list endpoint of the route table (GET endpoints whose query schema is a `ListQuery`,
i.e. has `sort`, `search` and filters) over real HTTP. It sends hostile sort fields (SQL fragments, unknown
fields, unicode, over-long strings: each must be 422 VALIDATION_FAILED naming `query.sort`) and hostile values
in every filter (quotes, `%`, `_`, backslash, NUL, 10 kB: never a 5xx, always the envelope), checks that a `%`
or `_` in `search` is matched literally (no row comes back that does not contain it), and that every table and
row count is intact afterwards. A source check walks the syntax trees of the request-facing packages for
SQL built from strings (f-strings, `+`, `%`, `.format` given to text()/execute()/exec_driver_sql()).
"""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, inspect, select

from central.api.app import all_endpoints
from central.api.registry import Endpoint
from central.config import Settings
from central.db.engine import Database
from central.db.models import Line, Material, Station, User
from central.domain.permissions import PERMISSIONS
from central.schemas.auth import RoleCreate
from central.schemas.base import ListQuery
from central.services import users
from central.services.demo_seed import seed_demo
from central.services.uow import UnitOfWork
from tests.client import Api
from tests.reliability.conftest import Recorder
from tests.reliability.figures import ROOT

WHO = "s5@example.com"
BAD_SORTS = [
    "createdAt;DROP TABLE lines",
    "name desc, (select 1)",
    "createdAt.asc;--",
    "' OR 1=1 --",
    "(SELECT password_hash FROM users)",
    "createdAt.sideways",
    "1",
    "noSuchField",
    "名前.asc",
    "createdAt\x00",
    "x" * 199,
    "x" * 5000,
]
BAD_VALUES = ["'", '"', "%", "_", "\\", "' OR '1'='1", "%' OR 1=1 --", "a_b%c", "名前", "\x00", "z" * 10_240]
# Packages that handle requests; db/ keeps its internal DDL and transaction-mode statements.
SCANNED = ["central/services", "central/api", "central/integration", "central/mqtt"]
SQL_CALLS = {"text", "exec_driver_sql", "execute", "literal_column"}


def _list_endpoints() -> list[Endpoint]:
    return [
        ep
        for ep in all_endpoints()
        if ep.method == "GET" and ep.query is not None and issubclass(ep.query, ListQuery)
    ]


def _text_filters(ep: Endpoint) -> list[str]:
    """Query fields other than paging and sort, by their wire (camelCase) name."""
    assert ep.query is not None
    schema = ep.query.model_json_schema(by_alias=True)
    return [name for name in schema["properties"] if name not in ("page", "pageSize", "sort")]


async def _tables_and_counts(database: Database) -> tuple[set[str], dict[str, int]]:
    async with database.engine.connect() as conn:
        tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    counts = {}
    async with database.reader() as s:
        for model in (Line, Station, Material, User):
            counts[model.__tablename__] = await s.scalar(select(func.count()).select_from(model)) or 0
    return tables, counts


async def _prepare(database: Database, settings: Settings, make_user: Any) -> None:
    async with UnitOfWork(database.writer) as uow:
        await seed_demo(uow, settings)
    async with UnitOfWork(database.writer) as uow:
        await users.create_role(
            uow, RoleCreate(code="s5_all", name="All", permissions=sorted(PERMISSIONS), data_scope="ALL")
        )
    await make_user(WHO, "s5_all")


def _path(ep: Endpoint, line_id: int, run_no: str) -> str:
    return ep.path.replace("{lineId}", str(line_id)).replace("{runNo}", run_no)


async def test_sort_and_filters_are_allow_listed(
    api: Api, database: Database, settings: Settings, make_user: Any, record_figures: Recorder
) -> None:
    started = time.monotonic()
    await _prepare(database, settings, make_user)
    before = await _tables_and_counts(database)
    async with database.reader() as s:
        line_id = await s.scalar(select(Line.id).where(Line.code == "LINE-A"))
    runs = (await api.get("/runs", WHO)).data["items"]
    assert line_id is not None and runs, "the demo plant has LINE-A and runs"
    run_no = runs[0]["runNo"]

    endpoints = _list_endpoints()
    assert len(endpoints) >= 25, [ep.path for ep in endpoints]
    sorts_sent = filters_sent = searches_checked = rows_seen = 0
    problems: list[str] = []
    for ep in endpoints:
        path = _path(ep, line_id, run_no)
        baseline = await api.get(path, WHO)
        assert baseline.status == 200, (path, baseline.body)

        for bad in BAD_SORTS:
            sorts_sent += 1
            r = await api.get(path, WHO, params={"sort": bad})
            ok = r.status == 422 and r.body["error"]["code"] == "VALIDATION_FAILED"
            loc = ok and any(
                d.get("loc", [])[:2] == ["query", "sort"] for d in r.body["error"].get("details") or []
            )
            if not (ok and loc):
                problems.append(f"sort {bad[:40]!r} on {path}: {r.status} {str(r.body)[:200]}")

        for name in _text_filters(ep):
            for value in BAD_VALUES:
                filters_sent += 1
                r = await api.get(path, WHO, params={name: value})
                if r.status >= 500 or not isinstance(r.body, dict) or "ok" not in r.body:
                    problems.append(f"{name}={value[:40]!r} on {path}: {r.status} {str(r.body)[:200]}")

        # LIKE wildcards in search are literal: every row returned must contain the character itself.
        for term in ("%", "_"):
            r = await api.get(path, WHO, params={"search": term, "pageSize": 100})
            if r.status != 200:
                problems.append(f"search={term!r} on {path}: {r.status} {str(r.body)[:200]}")
                continue
            searches_checked += 1
            for item in r.data["items"]:
                rows_seen += 1
                if term not in repr(item):
                    problems.append(f"search={term!r} on {path} returned a row without it: {str(item)[:200]}")

    after = await _tables_and_counts(database)
    record_figures(
        "S5",
        "Sort and filter allow-lists fuzzed on every list endpoint",
        list_endpoints=len(endpoints),
        hostile_sorts_sent=sorts_sent,
        hostile_filter_values_sent=filters_sent,
        literal_search_checks=searches_checked,
        rows_checked_for_wildcard_leaks=rows_seen,
        problems=len(problems),
        tables_before=len(before[0]),
        tables_after=len(after[0]),
        seconds=round(time.monotonic() - started, 1),
    )
    assert after == before, "tables or rows changed by read-only list calls"
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])


def _string_built(node: ast.expr) -> str | None:
    if isinstance(node, ast.JoinedStr):
        return "f-string"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return "string concatenation or %-formatting"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return "str.format"
    return None


def _sql_built_from_strings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in SQL_CALLS and (how := _string_built(node.args[0])):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}() of a {how}")
    return found


def test_no_sql_is_built_from_strings(record_figures: Recorder) -> None:
    files = sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py"))
    found = [hit for p in files for hit in _sql_built_from_strings(p)]
    # The check itself must see what it looks for, or it proves nothing.
    probe = ROOT / "var" / "s5_probe.py"
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(
        'from sqlalchemy import text\nq = text(f"SELECT * FROM t ORDER BY {x}")\n'
        "r = conn.execute('SELECT %s' % y)\nz = text('a {}'.format(w))\n"
    )
    try:
        assert len(_sql_built_from_strings(probe)) == 3
    finally:
        probe.unlink()
    sources = sum(1 for p in files if re.search(r"\b(select|text|execute)\(", p.read_text(encoding="utf-8")))
    record_figures(
        "S5",
        "Sort and filter allow-lists fuzzed on every list endpoint",
        source_files_scanned=len(files),
        files_issuing_sql=sources,
        sql_built_from_strings=len(found),
    )
    assert not found, "\n".join(found)
