"""The durable store-and-forward outbox (edge.md "Outbox"): SQLite WAL, synchronous=FULL, group commit.

An event is acknowledged to its producer only once its transaction is on disk, so whatever `append()`
returned True for survives `kill -9` and power loss. `seq` comes from an AUTOINCREMENT key: strictly
increasing per agent, never reused, even after every row was delivered and the process restarted. All SQLite
work runs on one thread; other processes (the `mes-edge` CLI) may open the same file: WAL and the busy timeout
keep them out of each other's way.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson

from shared.events import EVENT_KINDS

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
# Fixed per-row overhead counted against max_bytes beside the JSON text (keys, seq, bookkeeping columns).
ROW_OVERHEAD = 96
_RATE_WINDOW = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    station_code TEXT,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    station_code TEXT,
    payload TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    code TEXT NOT NULL,
    message TEXT,
    dead_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
"""
_COUNTERS = ("backlog_events", "backlog_bytes", "appended_total", "delivered_total", "dead_lettered_total")
_KINDS = frozenset(EVENT_KINDS)
_INSERT = (
    "INSERT OR IGNORE INTO outbox (event_id, kind, occurred_at, station_code, payload, size, stored_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# One group commit in progress: the appends it holds (rows, producer's future) and its result per append.
_Commit = tuple[list[tuple[list["_Row"], asyncio.Future[bool]]], asyncio.Future[list[bool]]]
_EVENT_COLS = "seq, event_id, kind, occurred_at, station_code, payload, size, stored_at, attempts"


class OutboxError(Exception):
    """The outbox cannot do what was asked (wrong file, unknown dead letter, no room): says why."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a device produced, before the outbox has given it a seq."""

    event_id: str
    kind: str
    occurred_at: datetime
    station_code: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A pending event as the forwarder reads it; `payload` is the stored JSON text, sent as is."""

    seq: int
    event_id: str
    kind: str
    occurred_at: str
    station_code: str | None
    payload: str
    size: int
    stored_at: str
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    seq: int
    event_id: str
    kind: str
    occurred_at: str
    station_code: str | None
    payload: str
    attempts: int
    code: str
    message: str | None
    dead_at: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    backlog_bytes: int
    oldest_pending_at: str | None
    dead_letters: int
    full: bool
    max_events: int
    max_bytes: int
    appended_total: int
    delivered_total: int
    dead_lettered_total: int
    rate_in: float
    rate_out: float


def utc_text(dt: datetime) -> str:
    """UTC with milliseconds and a Z, the wire format of every time (api.md)."""
    u = dt.astimezone(UTC)
    # Runs once per stored event: orjson formats a datetime about 3× faster than isoformat(). Its text is
    # "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" in quotes; milliseconds are cut, not rounded, as isoformat does.
    raw = orjson.dumps(u, option=orjson.OPT_UTC_Z)
    if len(raw) == 29:
        return raw[1:24].decode() + "Z"
    if len(raw) == 22:
        return raw[1:20].decode() + ".000Z"
    return u.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_text() -> str:
    return utc_text(datetime.now(UTC))


class _Row(NamedTuple):
    # A tuple, not a frozen dataclass: one is made per stored event, and a tuple is several times cheaper.
    event_id: str
    kind: str
    occurred_at: str
    station_code: str | None
    payload: str
    size: int

    def params(self, stored_at: str) -> tuple[Any, ...]:
        """The values of _INSERT."""
        return (*self, stored_at)


def _row(ev: NewEvent) -> _Row:
    """Checks one event against the wire contract (EdgeEvent) before it is stored: stored means sendable."""
    if not isinstance(ev.event_id, str) or not 1 <= len(ev.event_id) <= 128:
        raise ValueError(f"event_id must be a string of 1…128 characters, got {ev.event_id!r}")
    if ev.kind not in _KINDS:
        raise ValueError(f"event {ev.event_id}: unknown kind {ev.kind!r} (one of {', '.join(EVENT_KINDS)})")
    if not isinstance(ev.occurred_at, datetime) or ev.occurred_at.tzinfo is None:
        raise ValueError(f"event {ev.event_id}: occurred_at must be a timezone-aware datetime")
    if ev.station_code is not None and not (isinstance(ev.station_code, str) and len(ev.station_code) <= 64):
        raise ValueError(f"event {ev.event_id}: station_code must be a string of at most 64 characters")
    if not isinstance(ev.payload, dict):
        raise ValueError(f"event {ev.event_id}: payload must be a JSON object")
    try:
        payload = orjson.dumps(ev.payload).decode()
    except TypeError as exc:
        raise ValueError(f"event {ev.event_id}: payload is not JSON-serialisable: {exc}") from None
    occurred = utc_text(ev.occurred_at)
    size = len(payload) + len(ev.event_id) + len(ev.kind) + len(ev.station_code or "") + ROW_OVERHEAD
    return _Row(ev.event_id, ev.kind, occurred, ev.station_code, payload, size)


class Outbox:
    """One agent's outbox file. Open with `await Outbox.open(...)`, close with `await close()`."""

    def __init__(self, path: Path, edge_id: str, max_events: int, max_bytes: int) -> None:
        self.path = path
        self.edge_id = edge_id
        self.max_events = max_events
        self.max_bytes = max_bytes
        # Set on every stored append, so the forwarder wakes without polling; and when full/not full flips.
        self.appended = asyncio.Event()
        self.fill_changed = asyncio.Event()
        self.commits = 0
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[tuple[list[_Row], asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._full = False
        self._samples: deque[tuple[float, int, int]] = deque()

    # ---- lifecycle ----------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: Path | str, *, edge_id: str, max_events: int, max_bytes: int, create: bool = True
    ) -> Outbox:
        """Opens (or creates) the outbox; refuses a file that belongs to another edge."""
        ob = cls(Path(path), edge_id, max_events, max_bytes)
        try:
            await ob._run(ob._open_sync, create)
        except BaseException:
            ob._exec.shutdown(wait=False)
            raise
        return ob

    def _open_sync(self, create: bool) -> None:
        if not create and not self.path.is_file():
            raise OutboxError(f"no outbox at {self.path} (has the agent run with this config yet?)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: the file system does not support SQLite WAL (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                now = now_text()
                rows = [("schema_version", SCHEMA_VERSION), ("edge_id", self.edge_id), ("created_at", now)]
                rows += [(k, 0) for k in _COUNTERS]
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
            elif meta.get("edge_id") != self.edge_id:
                raise OutboxError(
                    f"{self.path} holds the outbox of edge {meta.get('edge_id')!r}, not {self.edge_id!r}: "
                    "two agents must never share an outbox (check outbox.path and edge_id)"
                )
            elif int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
                raise OutboxError(
                    f"{self.path} was written by a newer mes-edge (schema {meta['schema_version']})"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        """Waits for appends in progress, then closes the file."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._exec.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError("the outbox is closed")
        return self._conn

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Runs fn in one IMMEDIATE transaction (on the outbox thread)."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return result

    # ---- append (group commit) ----------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> bool:
        """Stores the events durably; False (nothing stored) when they do not fit within the bounds.

        Calls arriving while a commit is in progress are committed together in the next transaction, so under
        load one fsync serves many producers; an append waits for at most the commit in progress plus its own.
        An eventId already pending is stored once (a re-read of the same machine record is not a new event).
        """
        rows = [_row(ev) for ev in events]
        if not rows:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, fut))
        if self._flusher is None or self._flusher.done():
            # No commit in progress: this one starts now, on the outbox thread, while the producers behind it
            # keep running (and queue for the next commit) instead of waiting for the flusher's first turn.
            self._flusher = asyncio.create_task(self._flush(self._commit_pending()), name="outbox-flush")
        # Not shielded: a cancelled producer cancels only its own future, which _flush then skips; its rows
        # are stored or not with the group either way (a shield would cost a future per append for nothing).
        return await fut

    def _commit_pending(self) -> _Commit:
        """Starts the transaction of every pending append on the outbox thread; → (group, its result)."""
        group, self._pending = self._pending, []
        job = asyncio.get_running_loop().run_in_executor(
            self._exec, self._write, lambda c: self._insert(c, [rows for rows, _ in group])
        )
        return group, job

    async def _flush(self, commit: _Commit) -> None:
        while True:
            group, job = commit
            try:
                stored: list[bool] | Exception = await job
            except Exception as exc:  # the producers own the failure: each of them gets it
                stored = exc
            # The appends queued meanwhile go to disk at once, before this group's producers are answered:
            # they then make their next events while that commit runs (one fsync in flight, never idle).
            following = self._commit_pending() if self._pending else None
            if isinstance(stored, Exception):
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(OutboxError(f"outbox write failed: {stored}"))
            else:
                for (_, fut), ok in zip(group, stored, strict=True):
                    if not fut.done():
                        fut.set_result(ok)
                self._note_fill(all(stored))
                if any(stored):
                    self.appended.set()
            if following is None:
                return
            commit = following

    def _insert(self, conn: sqlite3.Connection, groups: list[list[_Row]]) -> list[bool]:
        events, nbytes = _counters(conn, "backlog_events", "backlog_bytes")
        stored_at = now_text()
        every = [r for rows in groups for r in rows]
        total = sum(r.size for r in every)
        if events + len(every) <= self.max_events and nbytes + total <= self.max_bytes:
            # Every group fits even if no row is a duplicate, so each is accepted, as the loop below would:
            # one executemany instead of a statement per row (the common case, and the hot path under load).
            top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            cur = conn.executemany(_INSERT, [r.params(stored_at) for r in every])
            added, added_bytes = cur.rowcount, total
            if added != len(every):  # some were pending already (ignored): sum what this transaction stored
                added_bytes = conn.execute(
                    "SELECT coalesce(sum(size), 0) FROM outbox WHERE seq > ?", (top[0] if top else 0,)
                ).fetchone()[0]
            _bump(conn, backlog_events=added, backlog_bytes=added_bytes, appended_total=added)
            return [True] * len(groups)
        out: list[bool] = []
        refusing = False
        added = added_bytes = 0
        for rows in groups:
            need = sum(r.size for r in rows)
            # Once one producer is refused, later ones in this group are too: none overtakes a refused batch.
            if refusing or events + len(rows) > self.max_events or nbytes + need > self.max_bytes:
                refusing = True
                out.append(False)
                continue
            for r in rows:
                cur = conn.execute(_INSERT, r.params(stored_at))
                if cur.rowcount:
                    events += 1
                    nbytes += r.size
                    added += 1
                    added_bytes += r.size
            out.append(True)
        _bump(conn, backlog_events=added, backlog_bytes=added_bytes, appended_total=added)
        return out

    def _note_fill(self, fits: bool) -> None:
        if not fits and not self._full:
            self._full = True
            self.fill_changed.set()
            log.warning(
                "outbox full (max_events=%d, max_bytes=%d): refusing new events until central acks some",
                self.max_events,
                self.max_bytes,
            )
        elif fits and self._full:
            self._full = False
            self.fill_changed.set()
            log.info("outbox has space again: accepting new events")

    # ---- forwarder side -----------------------------------------------------------------------------------

    async def head(self, limit: int) -> list[StoredEvent]:
        """The oldest pending events, in seq order."""
        return await self._run(self._select, "ORDER BY seq LIMIT ?", (limit,))

    async def newer(self, after_seq: int, kinds: Sequence[str], limit: int) -> list[StoredEvent]:
        """Pending events of the given kinds with seq > after_seq, oldest first."""
        marks = ",".join("?" * len(kinds))
        where = f"WHERE seq > ? AND kind IN ({marks}) ORDER BY seq LIMIT ?"
        return await self._run(self._select, where, (after_seq, *kinds, limit))

    def _select(self, where: str, params: tuple[Any, ...]) -> list[StoredEvent]:
        rows = self._db().execute(f"SELECT {_EVENT_COLS} FROM outbox {where}", params).fetchall()
        return [StoredEvent(*r) for r in rows]

    async def max_seq(self) -> int:
        """The highest seq ever assigned (0 for a new outbox)."""

        def q() -> int:
            row = self._db().execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            return int(row[0]) if row else 0

        return await self._run(q)

    async def settle(
        self,
        delivered: Sequence[int] = (),
        dead: Sequence[tuple[int, str, str | None]] = (),
        attempts: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Applies one ack in one transaction: delete delivered seqs, move `dead` (seq, code, message) to the
        dead letters, count an attempt with its error on `attempts` (seq, error) that stay queued."""
        if not (delivered or dead or attempts):
            return
        await self._run(self._write, lambda c: self._settle(c, delivered, dead, attempts))
        if self._full and await self._has_space():
            self._note_fill(True)

    def _settle(
        self,
        conn: sqlite3.Connection,
        delivered: Sequence[int],
        dead: Sequence[tuple[int, str, str | None]],
        attempts: Sequence[tuple[int, str]],
    ) -> None:
        gone = gone_bytes = 0
        now = now_text()
        for seq, code, message in dead:
            cur = conn.execute(
                "INSERT INTO dead_letters (seq, event_id, kind, occurred_at, station_code, payload, size, "
                "stored_at, attempts, code, message, dead_at) SELECT seq, event_id, kind, occurred_at, "
                "station_code, payload, size, stored_at, attempts + 1, ?, ?, ? FROM outbox WHERE seq = ?",
                (code, message, now, seq),
            )
            if cur.rowcount:
                size = conn.execute("DELETE FROM outbox WHERE seq = ? RETURNING size", (seq,)).fetchone()[0]
                gone += 1
                gone_bytes += size
        n_dead = gone
        n_delivered = 0
        for seq in delivered:
            row = conn.execute("DELETE FROM outbox WHERE seq = ? RETURNING size", (seq,)).fetchone()
            if row:
                n_delivered += 1
                gone_bytes += row[0]
        gone += n_delivered
        conn.executemany(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
            [(err[:500], seq) for seq, err in attempts],
        )
        _bump(
            conn,
            backlog_events=-gone,
            backlog_bytes=-gone_bytes,
            delivered_total=n_delivered,
            dead_lettered_total=n_dead,
        )

    async def _has_space(self) -> bool:
        events, nbytes = await self._run(lambda: _counters(self._db(), "backlog_events", "backlog_bytes"))
        return events < self.max_events and nbytes < self.max_bytes

    # ---- dead letters -------------------------------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        def q() -> list[DeadLetter]:
            rows = self._db().execute(
                "SELECT id, seq, event_id, kind, occurred_at, station_code, payload, attempts, code, "
                "message, dead_at FROM dead_letters ORDER BY id LIMIT ?",
                (limit,),
            )
            return [DeadLetter(*r) for r in rows.fetchall()]

        return await self._run(q)

    async def retry_dead(self, ids: Sequence[int] | None) -> int:
        """Re-queues dead letters (all when ids is None) as new events with a new seq; all or nothing."""
        n = await self._run(self._write, lambda c: self._retry(c, ids))
        if n:
            self.appended.set()
        return n

    def _retry(self, conn: sqlite3.Connection, ids: Sequence[int] | None) -> int:
        rows = _pick_dead(conn, ids, "id, event_id, kind, occurred_at, station_code, payload, size")
        events, nbytes = _counters(conn, "backlog_events", "backlog_bytes")
        need = sum(r[6] for r in rows)
        if events + len(rows) > self.max_events or nbytes + need > self.max_bytes:
            raise OutboxError(
                f"the outbox has no room for {len(rows)} more events "
                f"({events}/{self.max_events} events, {nbytes}/{self.max_bytes} bytes)"
            )
        added = added_bytes = 0
        now = now_text()
        for id_, event_id, kind, occurred_at, station_code, payload, size in rows:
            cur = conn.execute(
                "INSERT OR IGNORE INTO outbox (event_id, kind, occurred_at, station_code, payload, size, "
                "stored_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    kind,
                    occurred_at,
                    station_code,
                    payload,
                    size,
                    now,
                    f"re-queued dead letter #{id_}",
                ),
            )
            if cur.rowcount:
                added += 1
                added_bytes += size
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (id_,))
        _bump(conn, backlog_events=added, backlog_bytes=added_bytes, appended_total=added)
        return len(rows)

    async def drop_dead(self, ids: Sequence[int] | None) -> int:
        """Deletes dead letters for good (all when ids is None); all or nothing."""

        def drop(conn: sqlite3.Connection) -> int:
            rows = _pick_dead(conn, ids, "id")
            conn.executemany("DELETE FROM dead_letters WHERE id = ?", rows)
            return len(rows)

        return await self._run(self._write, drop)

    # ---- stats and meta -----------------------------------------------------------------------------------

    async def stats(self) -> OutboxStats:
        """Backlog, oldest pending, dead letters, fill state and rates in/out over the last ~10 s of calls."""

        def q() -> tuple[int, ...] | Any:
            conn = self._db()
            counters = _counters(conn, *_COUNTERS)
            oldest = conn.execute("SELECT stored_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            return counters, oldest[0] if oldest else None, dead

        (events, nbytes, appended, delivered, dead_total), oldest, dead = await self._run(q)
        rate_in, rate_out = self._rates(appended, delivered)
        at_capacity = events >= self.max_events or nbytes >= self.max_bytes
        return OutboxStats(
            backlog=events,
            backlog_bytes=nbytes,
            oldest_pending_at=oldest,
            dead_letters=dead,
            full=self._full or at_capacity,
            max_events=self.max_events,
            max_bytes=self.max_bytes,
            appended_total=appended,
            delivered_total=delivered,
            dead_lettered_total=dead_total,
            rate_in=rate_in,
            rate_out=rate_out,
        )

    def _rates(self, appended: int, delivered: int) -> tuple[float, float]:
        now = time.monotonic()
        self._samples.append((now, appended, delivered))
        while len(self._samples) > 2 and now - self._samples[1][0] >= _RATE_WINDOW:
            self._samples.popleft()
        t0, a0, d0 = self._samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (appended - a0) / dt, (delivered - d0) / dt

    async def put_meta(self, key: str, value: Any) -> None:
        await self._run(
            self._write,
            lambda c: c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)),
        )

    async def get_meta(self, key: str) -> Any:
        def q() -> Any:
            row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else None

        return await self._run(q)


def _counters(conn: sqlite3.Connection, *keys: str) -> tuple[int, ...]:
    marks = ",".join("?" * len(keys))
    found = dict(conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys).fetchall())
    return tuple(int(found.get(k) or 0) for k in keys)


def _bump(conn: sqlite3.Connection, **deltas: int) -> None:
    conn.executemany(
        "UPDATE meta SET value = value + ? WHERE key = ?", [(d, k) for k, d in deltas.items() if d]
    )


def _pick_dead(conn: sqlite3.Connection, ids: Sequence[int] | None, cols: str) -> list[tuple[Any, ...]]:
    if ids is None:
        return conn.execute(f"SELECT {cols} FROM dead_letters ORDER BY id").fetchall()
    rows = []
    missing = []
    for id_ in dict.fromkeys(ids):
        row = conn.execute(f"SELECT {cols} FROM dead_letters WHERE id = ?", (id_,)).fetchone()
        if row is None:
            missing.append(str(id_))
        else:
            rows.append(row)
    if missing:
        raise OutboxError(f"no dead letter with id {', '.join(missing)} (nothing changed)")
    return rows
