"""Equipment drivers: I/O only (connect, read, reconnect); what a value means is decided in edge/rules.py."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.backoff import Backoff


class DeviceError(Exception):
    """A read could not be done (link down, timeout, refused request); the cause is in the message."""


@dataclass
class Reading:
    """Values of one read by signal name, with each one's source time when the protocol gives it."""

    values: dict[str, Any]
    at: datetime
    times: dict[str, datetime | None] = field(default_factory=dict)


def utcnow() -> datetime:
    return datetime.now(UTC)


class LinkHealth:
    """Connection state of one physical link; logs once on loss and once on recovery (not per retry)."""

    def __init__(self, name: str, log: logging.Logger, reconnect_min: float, reconnect_max: float) -> None:
        self.name = name
        self._log = log
        self.state = "CONNECTING"
        self.last_ok_at: datetime | None = None
        self.last_error: str | None = None
        self.connects = 0  # successful (re)connections, for status and tests
        self.backoff = Backoff(base=reconnect_min, cap=reconnect_max)
        self.next_attempt = 0.0  # monotonic time before which no reconnect is tried
        self._down_since: float | None = None

    def may_attempt(self) -> bool:
        return time.monotonic() >= self.next_attempt

    def ok(self) -> None:
        self.last_ok_at = utcnow()

    def connected(self) -> None:
        self.connects += 1
        if self._down_since is not None:
            self._log.warning(
                "%s: connection recovered after %.1f s", self.name, time.monotonic() - self._down_since
            )
        elif self.connects == 1:
            self._log.info("%s: connected", self.name)
        self._down_since = None
        self.state = "CONNECTED"
        self.last_error = None
        self.backoff.reset()
        self.ok()

    def failed(self, error: str) -> None:
        """A connect or a request failed: schedule the next attempt with backoff; log only the first."""
        self.last_error = error
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._log.warning(
                "%s: connection lost or unavailable: %s (retrying with backoff)", self.name, error
            )
        self.state = "DISCONNECTED"
        self.next_attempt = time.monotonic() + self.backoff.next_delay()

    def stopped(self) -> None:
        self.state = "STOPPED"
