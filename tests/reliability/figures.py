"""Sizes and figures of the reliability suite (quality-bars.md R1–R5, S1–S5).

`make test` runs every suite reduced; `make reliability` sets MES_RELIABILITY=full, runs them at the sizes of
quality-bars.md and writes the figures each test recorded to docs/RELIABILITY.md. A test asks `size(reduced,
full)` for its parameters and calls `record(...)` with what it measured; the figures are also printed in the
terminal summary and kept in var/reliability/<mode>.json.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("MES_RELIABILITY", "").lower() == "full"
MODE = "full" if FULL else "reduced"


def size(reduced: T, full: T) -> T:
    """The reduced parameter under `make test`, the full one under `make reliability`."""
    return full if FULL else reduced


@dataclass
class Entry:
    target: str  # "R1" … "S5"
    test: str
    title: str
    values: dict[str, Any]
    outcome: str = "running"
    seconds: float = 0.0
    run: str = ""  # when and on which commit the session that measured it started


@dataclass
class _Book:
    entries: dict[str, Entry] = field(default_factory=dict)  # by pytest node id


BOOK = _Book()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "?"


SESSION = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}"


def record(node_id: str, target: str, title: str, **values: Any) -> None:
    """Keep what one test measured (merged when a test records several times)."""
    entry = BOOK.entries.get(node_id)
    if entry is None:
        BOOK.entries[node_id] = Entry(target, node_id.split("::")[-1], title, dict(values), run=SESSION)
    else:
        entry.values.update(values)


def merged(earlier: list[dict[str, Any]]) -> dict[str, Entry]:
    """This session's entries over an earlier full run's (`make reliability -k R1` reruns one suite and
    keeps the others' figures, each row saying which run measured it)."""
    out = {e["test"]: Entry(**e) for e in earlier}
    out.update({e.test: e for e in BOOK.entries.values()})
    return out


def _machine() -> str:
    cpus = os.cpu_count() or 0
    system = f"{platform.system()} {platform.machine()}, {cpus} cores"
    return f"{system}, Python {platform.python_version()}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(entries: dict[str, Entry]) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability and security figures",
        "",
        f"Written by `make reliability` ({MODE} sizes) on {now}; {_machine()}; each row names the run",
        "(start, commit) that measured it. The targets are in `../shared/spec/quality-bars.md`; how each",
        "test injects its faults is said at the top of its file under `tests/reliability/`. Regenerate with",
        '`make reliability` (the reduced sizes run inside `make test`; `PYTEST_ARGS="-k r1"` reruns one',
        "suite and keeps the other rows).",
        "",
        "| target | test | outcome | seconds | run |",
        "|---|---|---|---|---|",
    ]
    ordered = sorted(entries.values(), key=lambda e: (e.target, e.test))
    for e in ordered:
        lines.append(f"| {e.target} | `{e.test}` | {e.outcome} | {e.seconds:,.1f} | {e.run or '?'} |")
    for e in ordered:
        lines += ["", f"## {e.target} — {e.title}", "", f"`{e.test}`: {e.outcome} (run {e.run or '?'})", ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in e.values.items()]
    return "\n".join(lines) + "\n"
