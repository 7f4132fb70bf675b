"""Device acquisition: drivers → rules → the outbox sink (edge.md "Drivers and rules").

One task per device, so a slow or dead machine never delays another, and a device's polls never overlap.
A change is committed (its trigger's last value remembered and saved) only after the sink has stored its
events; when the sink refuses (outbox full) the same events are offered again later and the device is not
read meanwhile: nothing is dropped, and a machine with a record buffer is caught up afterwards. EventIds are
derived from the records, so offering or re-reading a record again yields the same ids (central dedupes).

Catch-up in machine order. After a start the devices read back, each on its own, the records they made while
the agent was away; a board's records at two stations would then reach the outbox (whose seq order central
applies) in the order the devices happened to answer, and a later station's record could come first and be
refused (STATION_MISMATCH). So the first events of every device are held until each device has made its first
reading (or `catchup_limit` has passed, for a machine that does not answer), then stored together, ordered by
the machines' times.

Live reordering. The same race exists while running: the devices answer with different delays (a poll, an
OPC UA publishing interval), so a board's record at a later station can be read a moment before its record
at the earlier station. The first record read opens a window of `reorder_window` seconds; every record read
meanwhile joins it, and the window's records are stored together in the machines' time order. A device whose
records wait in a window is not read meanwhile (its trigger state moves only once they are stored, so a crash
loses nothing); its record buffer covers the pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.device_config import ModbusDevice, OpcuaDevice, RuleConfig, check_references
from edge.drivers import DeviceError, Reading
from edge.drivers.modbus import ModbusDriver, ModbusLink
from edge.drivers.opcua import EventNotice, EventWatch, OpcuaDriver
from edge.rules import NewEvent, build_events, detect
from shared.events import DeviceStatus

log = logging.getLogger("edge.acquisition")

Sink = Callable[[list[NewEvent]], Awaitable[bool]]
Driver = ModbusDriver | OpcuaDriver
MAX_WARNINGS = 200
# How long the start-up catch-up waits for a device that does not answer before storing the others' records.
CATCHUP_LIMIT = 15.0
# Buffered records of an OPC UA device read in one request when catching up.
RECORDS_PER_READ = 50


@dataclass
class _Device:
    config: ModbusDevice | OpcuaDevice
    driver: Driver
    rules: list[RuleConfig]
    watch: list[str]  # trigger signals
    inline: list[str]  # record signals read with every poll (Modbus rules without a buffer: one snapshot)
    pending: list[NewEvent] = field(default_factory=list)
    pending_last: dict[str, Any] = field(default_factory=dict)
    pending_warnings: list[str] = field(default_factory=list)
    crashed: str | None = None
    seen: set[str] = field(default_factory=set)  # signals read since the agent started


class Acquisition:
    """Runs every configured device; `sink(events)` stores events and returns False when it cannot (full)."""

    def __init__(
        self,
        config: Any,
        sink: Sink,
        *,
        state_path: Path | None = None,
        retry_delay: float = 0.5,
        catchup_limit: float = CATCHUP_LIMIT,
        reorder_window: float = 0.0,
    ) -> None:
        devices: list[ModbusDevice | OpcuaDevice] = list(config.devices)
        rules: list[RuleConfig] = list(config.rules)
        errors = check_references(devices, rules)
        if errors:
            raise ValueError("invalid devices/rules:\n" + "\n".join(errors))
        self._sink = sink
        self._state_path = state_path
        self._retry_delay = retry_delay
        self._warnings: deque[str] = deque(maxlen=MAX_WARNINGS)
        self._last: dict[str, Any] = self._load_state()
        self._save_lock = asyncio.Lock()
        self._dirty = False  # trigger values changed since the state file was last written
        self.events_out = 0
        self._running = False
        self._catchup_limit = catchup_limit
        self._catching_up = False
        self._first_read: set[str] = set()
        self._held: list[tuple[list[NewEvent], asyncio.Future[bool]]] = []
        self._store_task: asyncio.Task[None] | None = None
        self._window = reorder_window
        self._window_task: asyncio.Task[None] | None = None
        links: dict[tuple[str, int], ModbusLink] = {}
        self._devices: list[_Device] = []
        for d in devices:
            mine = [r for r in rules if r.device == d.id]
            driver: Driver
            if isinstance(d, ModbusDevice):
                link = links.setdefault((d.host, d.port), ModbusLink(d))
                driver = ModbusDriver(d, link)
            else:
                driver = OpcuaDriver(d)
            watch = list(dict.fromkeys(r.trigger.signal for r in mine if r.trigger.signal))
            inline: list[str] = []
            if isinstance(d, ModbusDevice):
                for r in mine:
                    if not r.has_record_buffer:
                        inline += [s for s in r.record_signals() if s not in watch and s not in inline]
            self._devices.append(_Device(d, driver, mine, watch, inline))

    # --- public -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire until `stop` is set; then close every connection."""
        self._running = True
        self._catching_up, self._first_read, self._held = bool(self._devices), set(), []
        for dev in self._devices:
            dev.seen = set()
        tasks = [
            asyncio.create_task(self._supervise(dev), name=f"device {dev.config.id}") for dev in self._devices
        ]
        tasks.append(asyncio.create_task(self._catchup_deadline(), name="catch-up deadline"))
        try:
            await stop.wait()
        finally:
            pending = set(tasks)
            while pending:
                # Python 3.11's asyncio.wait_for (used inside pymodbus and asyncua) can swallow a cancellation
                # that lands as its inner future completes; so cancel again until every device task has ended.
                for t in pending:
                    t.cancel()
                _done, pending = await asyncio.wait(pending, timeout=0.5)
            for store in (self._store_task, self._window_task):
                if store is not None:
                    # Merged events being stored finish first: the outbox closes after this returns.
                    await asyncio.gather(store, return_exceptions=True)
            for dev in self._devices:
                with contextlib.suppress(Exception):
                    await dev.driver.close()
            self._running = False

    def device_states(self) -> list[DeviceStatus]:
        out: list[DeviceStatus] = []
        for dev in self._devices:
            drv = dev.driver
            health = drv.link.health if isinstance(drv, ModbusDriver) else drv.health
            state = "STOPPED" if not self._running else ("ERROR" if dev.crashed else drv.state)
            out.append(
                DeviceStatus(
                    id=dev.config.id,
                    state=state,
                    last_ok_at=health.last_ok_at,
                    last_error=dev.crashed or drv.error,
                )
            )
        return out

    def warnings(self) -> list[str]:
        """Recent warnings (GAP, COUNTER_RESET, RESULT_UNMAPPED, …), oldest first, for the status message."""
        return list(self._warnings)

    def held(self) -> int:
        """Events produced but not yet accepted by the sink (outbox full)."""
        return sum(len(d.pending) for d in self._devices)

    # --- loops ------------------------------------------------------------------------------------

    async def _supervise(self, dev: _Device) -> None:
        # A bug in one device's handling must not silently stop acquisition: log it loudly and start over.
        while True:
            try:
                if isinstance(dev.driver, OpcuaDriver):
                    await self._subscription_loop(dev, dev.driver)
                else:
                    await self._poll_loop(dev, dev.driver)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                dev.crashed = f"{type(exc).__name__}: {exc}"
                log.exception("device %s: acquisition failed; restarting in 5 s", dev.config.id)
                await asyncio.sleep(5)
                dev.crashed = None

    async def _poll_loop(self, dev: _Device, driver: ModbusDriver) -> None:
        interval = dev.config.poll_interval
        next_at = time.monotonic()
        # A device without rules is still read (its first signal), so its status tells whether it answers.
        names = dev.watch + dev.inline or [dev.config.signals[0].name]
        while True:
            await self._flush(dev)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Scheduled from the previous tick, but never catching up in a burst after a slow poll.
            next_at = max(next_at + interval, time.monotonic())
            try:
                reading = await driver.read(names)
            except DeviceError:
                continue
            await self._process(dev, reading)

    async def _subscription_loop(self, dev: _Device, driver: OpcuaDriver) -> None:
        events = [
            EventWatch(r.name, r.trigger.node or "i=2253", r.trigger.event_type)
            for r in dev.rules
            if r.trigger.kind == "node_event"
        ]
        driver.watch(dev.watch, events)
        while True:
            await self._flush(dev)
            update = await driver.next_update()
            await self._process(dev, update)

    # --- rules → events ---------------------------------------------------------------------------

    async def _process(self, dev: _Device, update: Reading | EventNotice) -> None:
        events: list[NewEvent] = []
        warnings: list[str] = []
        new_last: dict[str, Any] = {}
        try:
            for rule in dev.rules:
                key = f"{dev.config.id}/{rule.name}"
                if isinstance(update, EventNotice):
                    if rule.name not in update.rules:
                        continue
                    det = detect(rule, None, update.event_id)
                    observed = update.at
                    base: dict[str, Any] = {}
                else:
                    sig = rule.trigger.signal
                    if rule.trigger.kind == "node_event" or sig not in update.values:
                        continue
                    det = detect(rule, self._last.get(key), update.values[sig])
                    observed = update.times.get(sig) or update.at
                    base = update.values
                    if det.last != self._last.get(key):
                        new_last[key] = det.last
                warnings += det.warnings
                prefetched = await self._records(dev, rule, det.keys) if det.from_buffer else {}
                for k in det.keys:
                    if k in prefetched:
                        values = {**base, **prefetched[k]}
                    else:
                        values = await self._record(dev, rule, k if det.from_buffer else None, base)
                    built = build_events(rule, dev.config.id, k, values, observed)
                    events += built.events
                    warnings += built.warnings
        except DeviceError as exc:
            # The record could not be read completely: forget this change; the next reading finds it again
            # (the trigger's last value was not moved), and the re-read record gets the same eventIds.
            log.debug("device %s: record read failed (%s); will retry", dev.config.id, exc)
            return
        if not isinstance(update, EventNotice):
            dev.seen.update(update.values)
        if not events:
            if dev.seen.issuperset(dev.watch):
                self._read_once(dev)
            self._commit(dev, new_last, warnings)
            await self._save()
            return
        dev.pending, dev.pending_last, dev.pending_warnings = events, new_last, warnings
        await self._flush(dev)

    async def _records(self, dev: _Device, rule: RuleConfig, keys: list[int]) -> dict[int, dict[str, Any]]:
        """Several buffered records of an OPC UA device, read together (RECORDS_PER_READ per request)."""
        buf = rule.record_buffer
        if not isinstance(dev.driver, OpcuaDriver) or buf is None or len(keys) < 2:
            return {}
        names = rule.record_signals()
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(keys), RECORDS_PER_READ):
            chunk = keys[i : i + RECORDS_PER_READ]
            readings = await dev.driver.read_slots(names, [k % buf.size for k in chunk])
            out.update({k: r.values for k, r in zip(chunk, readings, strict=True)})
        return out

    async def _record(
        self, dev: _Device, rule: RuleConfig, counter: int | None, base: dict[str, Any]
    ) -> dict[str, Any]:
        names = rule.record_signals()
        if counter is not None and rule.record_buffer:
            buf = rule.record_buffer
            rec = await dev.driver.read(names, slot=counter % buf.size, stride=buf.stride)
            return {**base, **rec.values}
        if all(n in base for n in names):
            return dict(base)
        rec = await dev.driver.read(names)
        return {**base, **rec.values}

    async def _flush(self, dev: _Device) -> None:
        """Hand held events to the sink until it takes them; the device is not read in the meantime."""
        told = False
        while dev.pending:
            try:
                ok = await self._store(dev, dev.pending)
            except Exception:
                log.exception(
                    "device %s: the sink failed; %d event(s) kept, retrying", dev.config.id, len(dev.pending)
                )
                ok = False
            if ok:
                self.events_out += len(dev.pending)
                self._commit(dev, dev.pending_last, dev.pending_warnings)
                dev.pending, dev.pending_last, dev.pending_warnings = [], {}, []
                await self._save()
                if told:
                    log.warning("device %s: the outbox took the held events; acquiring again", dev.config.id)
                return
            if not told:
                log.warning(
                    "device %s: outbox full, holding %d event(s) and pausing reads",
                    dev.config.id,
                    len(dev.pending),
                )
                told = True
            await asyncio.sleep(self._retry_delay)

    # --- start-up catch-up in machine order -------------------------------------------------------------

    async def _store(self, dev: _Device, events: list[NewEvent]) -> bool:
        if not self._catching_up and self._window <= 0:
            return await self._sink(events)
        # Held, not stored: the device's trigger state moves only once the merged events are in the outbox.
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._held.append((events, done))
        if self._catching_up:
            self._read_once(dev)
        elif self._window_task is None:
            self._window_task = asyncio.get_running_loop().create_task(self._close_window(), name="reorder")
        return await done

    async def _close_window(self) -> None:
        try:
            await asyncio.sleep(self._window)
        finally:
            # Taken at once (even when stopping), so nothing joins a window that is being stored.
            held, self._held = self._held, []
            self._window_task = None
        if held:
            await self._store_held(held)

    def _read_once(self, dev: _Device) -> None:
        """The device's first complete reading since the start is in (its catch-up events, if any, held)."""
        if self._catching_up:
            self._first_read.add(dev.config.id)
            self._release_if_caught_up()

    def _release_if_caught_up(self, force: bool = False) -> None:
        if not self._catching_up or not (force or len(self._first_read) == len(self._devices)):
            return
        self._catching_up = False
        held, self._held = self._held, []
        if held:
            self._store_task = asyncio.get_running_loop().create_task(
                self._store_held(held), name="catch-up store"
            )

    async def _store_held(self, held: list[tuple[list[NewEvent], asyncio.Future[bool]]]) -> None:
        # sorted() is stable: a device's own events keep their order where the machines' times are equal.
        merged = sorted((e for events, _ in held for e in events), key=lambda e: e.occurred_at)
        try:
            ok: bool | BaseException = await self._sink(merged)
        except Exception as exc:
            ok = exc
        for _, done in held:
            if done.done():  # its device task was cancelled (the agent stops)
                continue
            if isinstance(ok, BaseException):
                done.set_exception(ok)
            else:
                done.set_result(ok)

    async def _catchup_deadline(self) -> None:
        await asyncio.sleep(self._catchup_limit)
        if self._catching_up:
            missing = sorted(d.config.id for d in self._devices if d.config.id not in self._first_read)
            log.warning("catch-up: no reading from %s yet; storing the other devices' records", missing)
            self._release_if_caught_up(force=True)

    def _commit(self, dev: _Device, new_last: dict[str, Any], warnings: list[str]) -> None:
        self._last.update(new_last)
        for w in warnings:
            log.warning("%s", w)
            self._warnings.append(w)
        self._dirty = self._dirty or bool(new_last)

    # --- persisted trigger state ------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        # Saved so a restarted agent resumes from the last record it stored instead of re-baselining (which
        # would skip records made while it was down); with a record buffer they are then read back.
        if self._state_path is None or not self._state_path.exists():
            return {}
        try:
            data = json.loads(self._state_path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            log.warning(
                "acquisition state %s unreadable (%s); starting from current values", self._state_path, exc
            )
            return {}
        last = data.get("last") if isinstance(data, dict) else None
        return dict(last) if isinstance(last, dict) else {}

    async def _save(self) -> None:
        if self._state_path is None or not self._dirty:
            return
        async with self._save_lock:
            if not self._dirty:
                return
            self._dirty = False
            blob = json.dumps({"version": 1, "last": self._last}, default=str, sort_keys=True)
            await asyncio.to_thread(_write_atomically, self._state_path, blob)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
