"""`mes-central serve --workers N`: one parent process keeping N server processes alive on one port.

The parent migrates and bootstraps the database once, then runs N copies of `mes-central serve` (hidden
`--worker-index` flag) that each bind the same host:port with SO_REUSEPORT, so the kernel spreads new
connections between them. Every worker is an ordinary central process: all shared state is in the
database (docs/DEPLOYMENT.md "Scale-out"), so nothing here coordinates requests.

The parent only supervises: SIGTERM/SIGINT are forwarded to the workers and waited for; a worker that dies
on its own is started again after a back-off, and a slot whose worker keeps dying young makes the parent
stop the others and exit non-zero, so systemd's `Restart=on-failure` (or an operator) sees the failure
instead of a server quietly running on fewer processes.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("central.supervisor")


@dataclass(frozen=True)
class Policy:
    backoff_base: float = 1.0  # seconds before the first restart of a slot; doubles per crash in a row
    backoff_max: float = 30.0
    # A worker that ran this long was healthy: its slot's count of crashes in a row starts again from zero.
    stable_after: float = 30.0
    # More crashes in a row than this, each within `stable_after` of its start: give up, exit non-zero.
    max_quick_crashes: int = 5
    stop_grace: float = 20.0  # below systemd's TimeoutStopSec=30s, so the workers are never SIGKILLed by it
    poll: float = 0.1


@dataclass
class _Slot:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    crashes: int = 0  # in a row, each before `stable_after`
    restart_at: float = 0.0
    pids: list[int] = field(default_factory=list)  # every worker this slot ran, for the log and tests


class Supervisor:
    """Runs `command(i)` with `env(i)` for i in 0..n-1 until stop() is called or a slot gives up."""

    def __init__(
        self,
        n: int,
        command: Callable[[int], list[str]],
        env: Callable[[int], dict[str, str]],
        policy: Policy | None = None,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.slots = [_Slot(i) for i in range(n)]
        self._command = command
        self._env = env
        self._on_exit = on_exit  # called with the pid of every worker that ended (metrics clean-up)
        self._stop_signal: int | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Asks for a shutdown; safe to call from a signal handler (it only sets a field)."""
        if self._stop_signal is None:
            self._stop_signal = sig

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.stop(signum))

    def run(self) -> int:
        """Supervises until stopped (→ 0) or until a slot keeps crashing (→ 1); the workers are ended."""
        failed = False
        for slot in self.slots:
            self._start(slot)
        while self._stop_signal is None and not failed:
            now = time.monotonic()
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is not None:
                    failed = self._crashed(slot, now) or failed
                elif slot.proc is None and now >= slot.restart_at:
                    self._start(slot)
            time.sleep(self.policy.poll)
        self._end_all(self._stop_signal or signal.SIGTERM)
        log.info("all workers stopped")
        return 1 if failed else 0

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(self._command(slot.index), env=self._env(slot.index))
        slot.started = time.monotonic()
        slot.pids.append(slot.proc.pid)
        log.info("worker %d started (pid %d)", slot.index, slot.proc.pid)

    def _crashed(self, slot: _Slot, now: float) -> bool:
        """A worker ended although nobody asked it to: schedule its restart. True = give up."""
        assert slot.proc is not None
        pid, rc, ran = slot.proc.pid, slot.proc.returncode, now - slot.started
        slot.proc = None
        self._ended(pid)
        slot.crashes = 1 if ran >= self.policy.stable_after else slot.crashes + 1
        how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
        if slot.crashes > self.policy.max_quick_crashes:
            log.error(
                "worker %d (pid %d) ended with %s after %.1f s, %d times in a row: giving up",
                slot.index,
                pid,
                how,
                ran,
                slot.crashes,
            )
            return True
        delay = min(self.policy.backoff_max, self.policy.backoff_base * 2 ** (slot.crashes - 1))
        slot.restart_at = now + delay
        log.warning(
            "worker %d (pid %d) ended with %s after %.1f s; restarting it in %.1f s",
            slot.index,
            pid,
            how,
            ran,
            delay,
        )
        return False

    def _end_all(self, sig: int) -> None:
        live = [s.proc for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        deadline = time.monotonic() + self.policy.stop_grace
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                grace = self.policy.stop_grace
                log.error("worker pid %d did not stop within %.0f s: killed", proc.pid, grace)
                proc.kill()
                proc.wait()
        for slot in self.slots:
            if slot.proc is not None:
                self._ended(slot.proc.pid)
                slot.proc = None

    def _ended(self, pid: int) -> None:
        if self._on_exit is not None:
            self._on_exit(pid)
