"""The run archive file: gzip-compressed JSON lines, written under a temporary name and published without
ever replacing an existing file (docs/RETENTION.md).

Layout: a header line `{"kind": "header", ...}`, one `{"kind": "row", "table", "row"}` line per database
row, and a trailer `{"kind": "end", "tables": {table: fingerprint}}`. A file without its trailer is
incomplete and never matches the database.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

FORMAT = "mes-run-archive/1"


@dataclass
class Fingerprint:
    """Row count and id checksum of one table's rows; equal fingerprints = the same ids (in practice)."""

    count: int = 0
    id_sum: int = 0
    id_min: int | None = None
    id_max: int | None = None

    def add(self, row_id: int) -> None:
        self.count += 1
        self.id_sum += row_id
        self.id_min = row_id if self.id_min is None else min(self.id_min, row_id)
        self.id_max = row_id if self.id_max is None else max(self.id_max, row_id)

    def as_json(self) -> dict[str, Any]:
        return {"count": self.count, "idSum": self.id_sum, "idMin": self.id_min, "idMax": self.id_max}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Fingerprint:
        return cls(int(d["count"]), int(d["idSum"]), d.get("idMin"), d.get("idMax"))


Fingerprints = dict[str, Fingerprint]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot archive a value of type {type(value).__name__}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArchiveWriter:
    """Writes `path` via `<path>.tmp-<pid>`; `publish()` fsyncs and links it into place (never overwrites)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        self.written: Fingerprints = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(self.tmp, "wb")  # closed in publish() or __exit__
        # mtime=0: the same rows give the same bytes, so a file's sha256 depends on its content only.
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        self._line({"kind": "header", "format": FORMAT, **header})

    def _line(self, obj: dict[str, Any]) -> None:
        self._gz.write(self._encode(obj))

    def rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        fp = self.written.setdefault(table, Fingerprint())
        lines = []
        for row in rows:
            fp.add(int(row["id"]))
            lines.append(self._encode({"kind": "row", "table": table, "row": row}))
        self._gz.write(b"".join(lines))

    @staticmethod
    def _encode(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, default=_plain, separators=(",", ":")).encode("utf-8") + b"\n"

    def publish(self) -> None:
        """Trailer, flush, fsync, hard link to the final name (fails if it exists), tmp unlinked."""
        self._line({"kind": "end", "tables": {t: f.as_json() for t, f in self.written.items()}})
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        try:
            os.link(self.tmp, self.path)  # atomic and, unlike rename, refuses to replace an existing file
        finally:
            self.tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._gz.close()
            self._raw.close()
            self.tmp.unlink(missing_ok=True)


@dataclass
class ArchiveContents:
    header: dict[str, Any]
    tables: Fingerprints  # counted from the row lines
    trailer: Fingerprints | None  # None = the file has no trailer (incomplete)

    @property
    def complete(self) -> bool:
        return self.trailer is not None and _same(self.tables, self.trailer)


def _same(a: Fingerprints, b: Fingerprints) -> bool:
    keys = {k for k, f in a.items() if f.count} | {k for k, f in b.items() if f.count}
    return all(a.get(k, Fingerprint()) == b.get(k, Fingerprint()) for k in keys)


def same_rows(a: Fingerprints, b: Fingerprints) -> bool:
    """Equal per table, tables with no rows ignored."""
    return _same(a, b)


def read_archive(path: Path) -> ArchiveContents:
    """Reads the whole file back (the verification after writing and before a resumed delete)."""
    header: dict[str, Any] = {}
    tables: Fingerprints = {}
    trailer: Fingerprints | None = None
    with gzip.open(path, "rb") as f:
        for raw in f:
            line = json.loads(raw)
            kind = line.get("kind")
            if kind == "row":
                tables.setdefault(line["table"], Fingerprint()).add(int(line["row"]["id"]))
            elif kind == "header":
                header = line
            elif kind == "end":
                trailer = {t: Fingerprint.from_json(v) for t, v in line["tables"].items()}
    return ArchiveContents(header, tables, trailer)


def iter_rows(path: Path, table: str | None = None) -> Any:
    """Yields (table, row) of an archive file; the way trace readers look into archived runs."""
    with gzip.open(path, "rb") as f:
        for raw in f:
            line = json.loads(raw)
            if line.get("kind") == "row" and (table is None or line["table"] == table):
                yield line["table"], line["row"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
