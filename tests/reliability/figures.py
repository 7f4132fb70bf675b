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


@dataclass
class _Book:
    entries: dict[str, Entry] = field(default_factory=dict)  # by pytest node id


BOOK = _Book()


def record(node_id: str, target: str, title: str, **values: Any) -> None:
    """Keep what one test measured (merged when a test records several times)."""
    entry = BOOK.entries.get(node_id)
    if entry is None:
        BOOK.entries[node_id] = Entry(target, node_id.split("::")[-1], title, dict(values))
    else:
        entry.values.update(values)


def _machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = "?"
    system = f"{platform.system()} {platform.machine()}, {cpus} cores"
    return f"{system}, Python {platform.python_version()}, commit {commit}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render() -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Reliability and security figures",
        "",
        f"Written by `make reliability` ({MODE} sizes) on {now}; {_machine()}.",
        "The targets are in `../shared/spec/quality-bars.md`; how each test injects its faults is said at",
        "the top of its file under `tests/reliability/`. Regenerate with `make reliability` (the reduced",
        "sizes run inside `make test`).",
        "",
        "| target | test | outcome | seconds |",
        "|---|---|---|---|",
    ]
    ordered = sorted(BOOK.entries.values(), key=lambda e: (e.target, e.test))
    for e in ordered:
        lines.append(f"| {e.target} | `{e.test}` | {e.outcome} | {e.seconds:,.1f} |")
    for e in ordered:
        lines += ["", f"## {e.target} — {e.title}", "", f"`{e.test}`: {e.outcome}", ""]
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in e.values.items()]
    return "\n".join(lines) + "\n"
