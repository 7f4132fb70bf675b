"""Figures of the reliability suite: each test records what it measured; the session writes them out."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest

from tests.reliability import figures

Recorder = Callable[..., None]


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> Recorder:
    """`record_figures("R5", "title", payloads=…, refused=…)` keeps the figures of this test."""

    def rec(target: str, title: str, **values: Any) -> None:
        figures.record(request.node.nodeid, target, title, **values)

    return rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    entry = figures.BOOK.entries.get(item.nodeid)
    if entry is None:
        return
    if report.when == "call":
        entry.outcome = report.outcome
        entry.seconds = report.duration
    elif report.failed:  # setup or teardown error
        entry.outcome = f"error in {report.when}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not figures.BOOK.entries:
        return
    terminalreporter.section(f"reliability figures ({figures.MODE} sizes)")
    for e in sorted(figures.BOOK.entries.values(), key=lambda e: (e.target, e.test)):
        shown = ", ".join(f"{k}={figures._fmt(v)}" for k, v in e.values.items())
        terminalreporter.write_line(f"{e.target} {e.test} [{e.outcome}]: {shown}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not figures.BOOK.entries:
        return
    path = figures.ROOT / "var" / "reliability" / f"{figures.MODE}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(path.read_text()) if figures.FULL and path.exists() else []
    entries = figures.merged(earlier)
    path.write_text(json.dumps([asdict(e) for e in entries.values()], indent=2, default=str))
    if figures.FULL:
        (figures.ROOT / "docs" / "RELIABILITY.md").write_text(figures.render(entries))
