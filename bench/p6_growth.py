"""P6: cost per ingested event within ±20 % from 10 thousand to 10 million rows (quality-bars.md).

The same work at two database sizes (bench/gen.py histories: 10,000 and 10,000,000 tracks; quick: 10,000 and
100,000): an authorized AUTO run on LINE-ING, then batches of 500 edge events applied in-process by the MQTT
consumer's Applier (one transaction per batch, as central applies an edge batch). Cost = wall time per
event. Ceiling: the raw bulk insert rate of the same backend (ms per row), measured in the same run.

The small history is copied for each measurement (PostgreSQL `CREATE DATABASE … TEMPLATE`, a file copy on
SQLite) so the cache stays small; the 10M one is too big to copy and takes the events itself (they add 0.2 %).

The EXPLAIN of every statement of one trace request and one ingest batch on the large database goes to
var/bench/p6-explain-<backend>.txt; a sequential scan of a large table there is a missing index, named in
the row's note.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from bench import gen, plant
from bench.common import (
    Context,
    Row,
    pg_bulk_insert_ceiling,
    pg_database,
    sqlite_bulk_insert_ceiling,
    standalone,
)
from bench.p5_trace import _sign_in
from central.mqtt.apply import Applier
from shared.events import EventBatch

BATCH = 500
WARM_UP = 50  # events of a first, unmeasured batch: actor cache, statement caches, pool
SMALL = 10_000
TOLERANCE = 0.20
# A sequential scan of a table this large is a missing index (smaller ones are cheaper scanned, and the
# planner rightly does; an empty table says nothing about the index it will need).
LARGE_TABLE_ROWS = 10_000


@contextlib.asynccontextmanager
async def working_copy(backend: str, tracks: int, ctx: Context) -> AsyncIterator[str]:
    """A database holding the generated history of `tracks` tracks that this program may write to."""
    cached = gen.cached_url(backend, tracks)
    await gen.ensure(cached, tracks)
    if tracks >= 1_000_000:
        yield cached  # too big to copy: the events go into the cache (module docstring)
        return
    if backend == "postgresql":
        async with pg_database("bench_p6", template=make_url(cached).database) as url:
            yield url
    else:
        path = ctx.workdir / f"p6-{tracks}.db"
        shutil.copyfile(str(make_url(cached).database), path)
        try:
            yield f"sqlite+aiosqlite:///{path}"
        finally:
            path.unlink(missing_ok=True)


def _batch(events: list[dict[str, Any]]) -> EventBatch:
    return EventBatch.model_validate(
        {
            "schemaVersion": 1,
            "edgeId": plant.EDGE_ID,
            "batchId": f"p6-{uuid.uuid4().hex[:12]}",
            "sentAt": datetime.now(UTC).isoformat(),
            "events": events,
        }
    )


class Statements:
    """Every SELECT/UPDATE the engine runs while `on`, with its parameters, for EXPLAIN."""

    def __init__(self, engine: Any) -> None:
        self.on = False
        self.seen: dict[str, tuple[str, Any]] = {}
        event.listen(engine.sync_engine, "before_cursor_execute", self._hook)

    def _hook(self, _c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, many: bool) -> None:
        head = statement.lstrip().split(None, 1)[0].upper()
        if self.on and not many and head in ("SELECT", "UPDATE", "DELETE"):
            self.seen.setdefault(statement, (statement, parameters))


async def _explain(c: plant.Central, stmts: Statements, backend: str) -> tuple[list[str], str]:
    """→ (sequential scans of large tables, the whole report)."""
    scans: list[str] = []
    report: list[str] = []
    prefix = "EXPLAIN " if backend == "postgresql" else "EXPLAIN QUERY PLAN "
    sizes: dict[str, int] = {}
    async with c.db.engine.connect() as conn:

        async def large(table: str) -> bool:
            if table not in sizes:
                sizes[table] = (await conn.execute(text(f'SELECT COUNT(*) FROM "{table}"'))).scalar_one()
            return sizes[table] >= LARGE_TABLE_ROWS

        for statement, params in stmts.seen.values():
            try:
                plan = (await conn.exec_driver_sql(prefix + statement, params)).all()
            except Exception as exc:  # a statement that cannot be explained alone is reported, not fatal
                report.append(f"{statement}\n  (not explained: {exc.__class__.__name__})\n")
                await conn.rollback()
                continue
            lines = [str(r[0]) if backend == "postgresql" else str(r[-1]) for r in plan]
            report.append(statement + "\n" + "\n".join(f"  {ln}" for ln in lines) + "\n")
            for ln in lines:
                table = _seq_scanned(ln, backend)
                if table and await large(table):
                    scans.append(f"{table} ({sizes[table]:,} rows): {' '.join(statement.split())[:160]}")
        await conn.rollback()
    return scans, "\n".join(report)


def _seq_scanned(line: str, backend: str) -> str | None:
    words = line.replace("->", " ").split()
    if backend == "postgresql":
        if "Seq Scan on" in line:
            return words[words.index("Scan") + 2]
        return None
    # SQLite: "SCAN t" (no index) versus "SCAN t USING [COVERING] INDEX …" / "SEARCH t USING …"
    if words and words[0] == "SCAN" and "USING" not in words and len(words) > 1:
        return words[1]
    return None


async def measure(ctx: Context, backend: str, tracks: int, batches: int, explain: bool) -> dict[str, Any]:
    """ms per event over `batches` batches of BATCH AUTO events (after a warm-up batch of WARM_UP)."""
    async with working_copy(backend, tracks, ctx) as url, plant.central(url, seed=False) as c:
        _, sns = await c.ingest_run(WARM_UP + batches * BATCH, prefix=f"P6{uuid.uuid4().hex[:6].upper()}-")
        applier = Applier(c.db, c.settings)
        stmts = Statements(c.db.engine)
        seq = int(time.time() * 1000)  # edge seqs only need to grow
        elapsed = 0.0
        rejected: list[str] = []
        chunks = [sns[:WARM_UP]] + [
            sns[WARM_UP + b * BATCH : WARM_UP + (b + 1) * BATCH] for b in range(batches)
        ]
        for b, chunk in enumerate(chunks):
            events = [plant.auto_event(seq + i, sn) for i, sn in enumerate(chunk)]
            seq += len(chunk)
            stmts.on = explain and b == 1
            t0 = time.perf_counter()
            ack = await applier.apply(_batch(events))
            if b:
                elapsed += time.perf_counter() - t0
            rejected += [f"{r.code}" for r in ack.results if r.status != "ACCEPTED"][:3]
        stmts.on = False
        out: dict[str, Any] = {"ms_per_event": elapsed * 1000 / (batches * BATCH), "rejected": rejected}
        if explain:
            # One trace request's statements too: P5 reads the same tables.
            stmts.on = True
            token = await _sign_in(c.base_url)
            plan = gen.read_plan(gen.cached_url(backend, tracks))
            assert plan is not None
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
                http.get(f"{c.base_url}/api/trace/units/{gen.sample_sns(plan, 1)[0]}") as r,
            ):
                await r.read()
            stmts.on = False
            out["scans"], report = await _explain(c, stmts, backend)
            path = gen.VAR / f"p6-explain-{backend}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report)
            out["explain_file"] = path
            out["statements"] = len(stmts.seen)
        async with c.db.engine.connect() as conn:
            out["tracks"] = (await conn.execute(text("SELECT COUNT(*) FROM tracks"))).scalar_one()
        return out


async def ceiling_ms_per_row(ctx: Context, backend: str) -> float:
    rows = ctx.size(2_000, 20_000)
    if backend == "postgresql":
        rate = await pg_bulk_insert_ceiling(rows)
    else:
        rate = sqlite_bulk_insert_ceiling(Path(ctx.workdir) / "p6-ceiling.db", rows)
    return 1000.0 / rate


async def run(ctx: Context) -> list[Row]:
    large = ctx.size(100_000, 10_000_000)  # quick: the history P5 generated (cached)
    batches = ctx.size(1, 20)
    backends = ["postgresql"] if ctx.pg_available else ["sqlite"]
    sqlite_plan = gen.read_plan(gen.cached_url("sqlite", large))
    if not ctx.quick and ctx.pg_available and sqlite_plan is not None and sqlite_plan.complete:
        backends.append("sqlite")
    rows: list[Row] = []
    for backend in backends:
        name = "PG" if backend == "postgresql" else "SQLite"
        ceiling = await ceiling_ms_per_row(ctx, backend)
        small = await measure(ctx, backend, SMALL, batches, explain=False)
        big = await measure(ctx, backend, large, batches, explain=True)
        ratio = big["ms_per_event"] / small["ms_per_event"]
        bad = small["rejected"] + big["rejected"]
        common = {"ceiling": ceiling, "ceiling_what": f"raw bulk insert, {name}"}
        rows += [
            Row(
                "P6", f"ingest cost at {SMALL:,} tracks ({name})", small["ms_per_event"], "ms/event", **common
            ),
            Row(
                "P6",
                f"ingest cost at {large:,} tracks ({name})",
                big["ms_per_event"],
                "ms/event",
                **common,
                note=f"{batches} batches of {BATCH}; database then {big['tracks']:,} tracks",
            ),
            Row(
                "P6",
                f"growth {large:,} / {SMALL:,} tracks ({name})",
                ratio,
                "×",
                target="within ±20 %",
                passed=not bad and abs(ratio - 1) <= TOLERANCE,
                note=f"REJECTED: {', '.join(bad[:3])}" if bad else "",
            ),
            Row(
                "P6",
                f"seq scans of large tables, trace + ingest ({name}, {large:,} tracks)",
                float(len(big["scans"])),
                "queries",
                target="0",
                passed=not big["scans"],
                note=f"{big['statements']} statements explained, {big['explain_file']}"
                + (f"; {' | '.join(big['scans'])}" if big["scans"] else ""),
            ),
        ]
    return rows


if __name__ == "__main__":
    standalone(run)
