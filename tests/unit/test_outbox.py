"""The edge outbox: durable through SIGKILL, seq increasing across restarts, bounded, dead letters."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edge.outbox import NewEvent, Outbox, OutboxError

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def ev(
    event_id: str, kind: str = "INGEST", payload: dict | None = None, station: str | None = "ST-B-PRINT-01"
):
    return NewEvent(event_id, kind, T0, station, payload if payload is not None else {"sn": event_id})


async def open_ob(path: Path, *, max_events: int = 1_000_000, max_bytes: int = 1 << 30, edge: str = "edge-t"):
    return await Outbox.open(path, edge_id=edge, max_events=max_events, max_bytes=max_bytes)


def seqs_of(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, event_id FROM outbox ORDER BY seq").fetchall()


async def test_append_stores_events_with_strictly_increasing_seq_and_exact_fields(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        at = datetime(2026, 3, 1, 9, 0, 0, 987654, tzinfo=timezone(timedelta(hours=2)))
        assert await ob.append([NewEvent("a", "TRACK_IN", at, "ST-1", {"sn": "SN1", "n": [1, 2]})])
        assert await ob.append([ev("b"), ev("c", "EQUIPMENT_STATUS", {"status": "down"}, None)])
        rows = await ob.head(10)
        assert [r.event_id for r in rows] == ["a", "b", "c"]
        assert rows[0].seq < rows[1].seq < rows[2].seq
        # UTC with milliseconds, whatever offset the machine's clock gave.
        assert rows[0].occurred_at == "2026-03-01T07:00:00.987Z"
        assert rows[0].kind == "TRACK_IN" and rows[0].station_code == "ST-1"
        assert rows[0].payload == '{"sn":"SN1","n":[1,2]}' and rows[0].attempts == 0
        assert rows[2].station_code is None
        with sqlite3.connect(tmp_path / "o.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "dead_letters", "meta"} <= tables
    finally:
        await ob.close()


async def test_seq_keeps_increasing_across_restarts_even_when_all_was_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    ob = await open_ob(path)
    await ob.append([ev(f"e{i}") for i in range(5)])
    first = [r.seq for r in await ob.head(10)]
    await ob.settle(delivered=first)  # the outbox is empty now
    assert await ob.head(10) == []
    await ob.close()

    ob = await open_ob(path)
    try:
        await ob.append([ev("later")])
        (row,) = await ob.head(10)
        assert row.seq > max(first)
        assert await ob.max_seq() == row.seq
    finally:
        await ob.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from edge.outbox import NewEvent, Outbox

    async def main(path):
        ob = await Outbox.open(path, edge_id="edge-k", max_events=10**7, max_bytes=10**10)

        async def producer(k):
            i = 0
            while True:
                now = datetime.now(UTC)
                evs = [NewEvent(f"{k}-{i}-{j}", "INGEST", now, "ST", {"j": j}) for j in range(4)]
                assert await ob.append(evs)
                # Printed only once append() returned: these events were reported as stored.
                sys.stdout.write(" ".join(e.event_id for e in evs) + "\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(producer(k) for k in range(8)))

    asyncio.run(main(sys.argv[1]))
    """
)


def test_events_reported_stored_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, cwd=ROOT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 4000:
            line = proc.stdout.readline()
            assert line, f"writer died early (exit {proc.poll()})"
            acknowledged += line.split()
            assert time.monotonic() < deadline, "writer too slow"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: commits are in progress
        rest = proc.stdout.read()
        proc.wait(timeout=10)
    # Lines completed before the kill were acknowledged too; a cut-off last line was not.
    complete = rest if rest.endswith("\n") else rest.rsplit("\n", 1)[0]
    acknowledged += complete.split()
    assert proc.returncode == -signal.SIGKILL

    stored = seqs_of(path)
    ids = {e for _, e in stored}
    missing = [e for e in acknowledged if e not in ids]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    assert len(ids) == len(stored)

    async def after_restart() -> None:
        ob = await Outbox.open(path, edge_id="edge-k", max_events=10**7, max_bytes=10**10)
        try:
            stats = await ob.stats()
            assert stats.backlog == len(stored)  # the counters were committed with the rows
            await ob.append([ev("after-crash")])
            assert (await ob.max_seq()) > max(s for s, _ in stored)
        finally:
            await ob.close()

    asyncio.run(after_restart())


async def test_full_outbox_refuses_new_events_and_never_drops_stored_ones(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db", max_events=5)
    try:
        assert await ob.append([ev(f"e{i}") for i in range(4)])
        before = await ob.head(10)
        assert not await ob.append([ev("x1"), ev("x2")])  # 6 > 5: all refused, nothing half-stored
        assert await ob.head(10) == before
        stats = await ob.stats()
        assert stats.full and stats.backlog == 4
        assert await ob.append([ev("e4")])  # exactly at the bound
        assert not await ob.append([ev("e5")])
        assert (await ob.stats()).full
        # Space frees when central acks: accepting again.
        await ob.settle(delivered=[before[0].seq, before[1].seq])
        assert not (await ob.stats()).full
        assert await ob.append([ev("e5"), ev("e6")])
        assert [r.event_id for r in await ob.head(10)] == ["e2", "e3", "e4", "e5", "e6"]
    finally:
        await ob.close()


async def test_max_bytes_bounds_the_outbox_too(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db", max_bytes=64 * 1024)
    try:
        big = {"blob": "x" * 20_000}
        assert await ob.append([ev("a", payload=big), ev("b", payload=big), ev("c", payload=big)])
        assert not await ob.append([ev("d", payload=big)])
        stats = await ob.stats()
        assert stats.backlog == 3 and stats.full and stats.backlog_bytes > 60_000
        assert await ob.append([ev("small", payload={})])  # what still fits is taken
    finally:
        await ob.close()


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        await ob.append([ev("warm-up")])
        before = ob.commits
        results = await asyncio.gather(*(ob.append([ev(f"p{i}-{j}") for j in range(3)]) for i in range(200)))
        assert all(results)
        assert len(await ob.head(1000)) == 601
        # Group commit: 200 producers, far fewer fsynced transactions.
        assert ob.commits - before < 50
    finally:
        await ob.close()


async def test_a_pending_event_id_is_stored_once(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        assert await ob.append([ev("same"), ev("other")])
        assert await ob.append([ev("same")])  # a re-read of the same machine record
        assert [r.event_id for r in await ob.head(10)] == ["same", "other"]
        assert (await ob.stats()).backlog == 2
    finally:
        await ob.close()


async def test_events_off_the_wire_contract_are_refused_before_storage(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            await ob.append([NewEvent("n", "INGEST", datetime(2026, 1, 1), None, {})])
        with pytest.raises(ValueError, match="unknown kind"):
            await ob.append([ev("k", kind="TELEPORT")])
        with pytest.raises(ValueError, match="JSON"):
            await ob.append([ev("j", payload={"at": object()})])
        with pytest.raises(ValueError, match="event_id"):
            await ob.append([ev("")])
        assert await ob.head(10) == []
    finally:
        await ob.close()


async def test_settle_deletes_delivered_dead_letters_refused_and_counts_attempts(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        await ob.append([ev("ok"), ev("bad"), ev("later")])
        ok, bad, later = await ob.head(10)
        await ob.settle(
            delivered=[ok.seq],
            dead=[(bad.seq, "UNIT_NOT_FOUND", "no unit bad")],
            attempts=[(later.seq, "RETRY: database down")],
        )
        (left,) = await ob.head(10)
        assert left.event_id == "later" and left.attempts == 1
        (dl,) = await ob.dead_letters()
        assert (dl.event_id, dl.code, dl.message, dl.seq, dl.attempts) == (
            "bad",
            "UNIT_NOT_FOUND",
            "no unit bad",
            bad.seq,
            1,
        )
        stats = await ob.stats()
        assert (stats.backlog, stats.dead_letters, stats.delivered_total, stats.dead_lettered_total) == (
            1,
            1,
            1,
            1,
        )
    finally:
        await ob.close()


async def test_dead_letters_retry_with_a_new_seq_and_drop(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db", max_events=3)
    try:
        await ob.append([ev("a"), ev("b"), ev("c")])
        a, b, c = await ob.head(10)
        await ob.settle(dead=[(a.seq, "UNIT_NOT_FOUND", "x"), (b.seq, "STATION_MISMATCH", "y")])
        d1, _ = await ob.dead_letters()
        with pytest.raises(OutboxError, match="no dead letter with id 999"):
            await ob.retry_dead([d1.id, 999])
        assert len(await ob.dead_letters()) == 2  # all or nothing
        assert await ob.retry_dead([d1.id]) == 1
        rows = await ob.head(10)
        assert [r.event_id for r in rows] == ["c", "a"]
        assert rows[1].seq > c.seq  # re-queued behind everything, never reusing its old seq
        assert await ob.append([ev("d")])  # now at the bound of 3
        with pytest.raises(OutboxError, match="no room"):
            await ob.retry_dead(None)
        assert await ob.drop_dead(None) == 1
        assert await ob.dead_letters() == []
        assert await ob.drop_dead(None) == 0
    finally:
        await ob.close()


async def test_stats_report_backlog_oldest_pending_and_rates(tmp_path: Path) -> None:
    ob = await open_ob(tmp_path / "o.db")
    try:
        empty = await ob.stats()
        assert (empty.backlog, empty.oldest_pending_at, empty.rate_in, empty.rate_out) == (0, None, 0.0, 0.0)
        await ob.append([ev(f"e{i}") for i in range(10)])
        rows = await ob.head(10)
        await ob.settle(delivered=[r.seq for r in rows[:4]])
        s = await ob.stats()
        assert s.backlog == 6 and s.appended_total == 10 and s.delivered_total == 4
        assert s.oldest_pending_at is not None and s.oldest_pending_at.endswith("Z")
        assert s.rate_in > 0 and s.rate_out > 0 and s.rate_in > s.rate_out
    finally:
        await ob.close()


async def test_an_outbox_is_bound_to_its_edge(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    await (await open_ob(path, edge="edge-a")).close()
    with pytest.raises(OutboxError, match="edge 'edge-a', not 'edge-b'"):
        await open_ob(path, edge="edge-b")
    with pytest.raises(OutboxError, match="no outbox at"):
        await Outbox.open(
            tmp_path / "none.db", edge_id="edge-a", max_events=1, max_bytes=1 << 20, create=False
        )
