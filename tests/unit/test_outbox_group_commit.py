"""The outbox's hot path (P4): pipelined group commit, one executemany per commit, fast time text.

What changed for speed must not change what is stored or counted: these pin the outcomes the per-row path
gave (duplicates ignored and not counted, refusals per producer near the bounds, failures and cancellations
confined to their producers).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from edge.outbox import NewEvent, Outbox, utc_text

T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def ev(event_id: str, blob: str = "") -> NewEvent:
    return NewEvent(event_id, "INGEST", T0, "ST-1", {"sn": event_id, "blob": blob})


async def open_ob(path: Path, **bounds: int) -> Outbox:
    return await Outbox.open(
        path,
        edge_id="edge-t",
        max_events=bounds.get("max_events", 1_000_000),
        max_bytes=bounds.get("max_bytes", 1 << 30),
    )


def on_disk(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        n, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
    return int(n), int(size)


async def test_duplicates_in_a_group_commit_are_stored_once_and_counted_once(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        assert await ob.append([ev("a"), ev("b", "x" * 100)])
        # One commit: a pending id again, an id twice within one append, and the same id from two producers.
        results = await asyncio.gather(
            ob.append([ev("a"), ev("c")]),
            ob.append([ev("d", "y" * 50), ev("d", "y" * 50)]),
            ob.append([ev("e")]),
            ob.append([ev("e"), ev("b", "x" * 100)]),
        )
        assert results == [True, True, True, True]
        stats = await ob.stats()
        n, size = on_disk(tmp_path / "o.db")
        assert n == 5 and [r.event_id for r in await ob.head(10)] == ["a", "b", "c", "d", "e"]
        assert (stats.backlog, stats.backlog_bytes, stats.appended_total) == (n, size, n)
    finally:
        await ob.close()


async def test_near_the_bound_producers_are_refused_in_order_and_counters_stay_exact(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db", max_events=5)
    try:
        assert await ob.append([ev("w0"), ev("w1")])
        # 2 + 2 fits, 2 more does not: the third producer is refused and so is every one after it in the
        # same commit, even one that would fit alone (none overtakes a refused batch).
        results = await asyncio.gather(
            ob.append([ev("p0"), ev("p1")]), ob.append([ev("q0"), ev("q1")]), ob.append([ev("r0")])
        )
        assert results == [True, False, False]
        stats = await ob.stats()
        n, size = on_disk(tmp_path / "o.db")
        assert (stats.backlog, stats.backlog_bytes) == (n, size) == (4, size)
        assert stats.full
    finally:
        await ob.close()


async def test_appends_arriving_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        await ob.append([ev("warm-up")])
        before = ob.commits
        first = asyncio.ensure_future(ob.append([ev("first")]))
        await asyncio.sleep(0)  # its commit has started on the outbox thread
        rest = [asyncio.ensure_future(ob.append([ev(f"p{i}")])) for i in range(50)]
        assert await first and all(await asyncio.gather(*rest))
        # The first commit did not wait for the others, and the 50 that queued behind it needed one more.
        assert ob.commits - before == 2
        assert [r.event_id for r in await ob.head(100)][:2] == ["warm-up", "first"]
        assert on_disk(tmp_path / "o.db")[0] == 52
    finally:
        await ob.close()


async def test_a_cancelled_producer_does_not_disturb_the_others(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        tasks = [asyncio.ensure_future(ob.append([ev(f"p{i}"), ev(f"p{i}-b")])) for i in range(20)]
        await asyncio.sleep(0)
        tasks[7].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[7], asyncio.CancelledError)
        assert all(r is True for i, r in enumerate(done) if i != 7)
        ids = {r.event_id for r in await ob.head(100)}
        assert {f"p{i}" for i in range(20) if i != 7} <= ids
        # Its rows went with its group or not at all: never one event of the two.
        assert ({"p7", "p7-b"} <= ids) or not ({"p7", "p7-b"} & ids)
        assert await ob.append([ev("after")])
        stats = await ob.stats()
        assert (stats.backlog, stats.backlog_bytes) == on_disk(tmp_path / "o.db")
    finally:
        await ob.close()


async def test_a_failed_commit_fails_its_producers_and_the_outbox_goes_on(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        assert await ob.append([ev("a")])
        # Another connection holds the write lock past the busy timeout: that commit fails as a whole.
        blocker = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
        await ob._run(lambda: ob._db().execute("PRAGMA busy_timeout=50"))  # not 30 s in a test
        blocker.execute("BEGIN IMMEDIATE")
        try:
            results = await asyncio.gather(ob.append([ev("b")]), ob.append([ev("c")]), return_exceptions=True)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert all(isinstance(r, Exception) and "outbox write failed" in str(r) for r in results)
        assert await ob.append([ev("d")])
        assert [r.event_id for r in await ob.head(10)] == ["a", "d"]
        stats = await ob.stats()
        assert (stats.backlog, stats.backlog_bytes) == on_disk(tmp_path / "o.db")
    finally:
        await ob.close()


def test_utc_text_matches_isoformat_for_any_offset_and_precision() -> None:
    rng = random.Random(7)
    samples = [
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, 999, tzinfo=UTC),  # below a millisecond
        datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC),  # cut, not rounded
        datetime(1, 1, 1, 12, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    for _ in range(2000):
        tz = rng.choice([UTC, timezone(timedelta(minutes=rng.randint(-14 * 60, 14 * 60)))])
        us = rng.choice([0, rng.randint(0, 999_999), 1000 * rng.randint(0, 999)])
        samples.append(
            datetime(2000 + rng.randint(0, 99), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                     rng.randint(0, 59), rng.randint(0, 59), us, tzinfo=tz)
        )  # fmt: skip
    for dt in samples:
        want = dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert utc_text(dt) == want, dt
