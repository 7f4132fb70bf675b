"""Modbus driver against a real pymodbus server: decoding, reconnect with backoff, polls never overlapping."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.acquisition import Acquisition
from edge.device_config import ModbusDevice, RuleConfig
from edge.drivers import DeviceError
from edge.drivers.modbus import ModbusDriver, ModbusLink
from edge.rules import NewEvent

DT = AsyncModbusTcpClient.DATATYPE
FC_WRITE_REGS, FC_INPUT_REGS, FC_WRITE_COILS, FC_DISCRETE = 16, 4, 15, 2


class RegisterServer:
    """A real pymodbus server (one or more unit ids) that records when each request starts and ends."""

    def __init__(self, unit_ids: tuple[int, ...] = (1,), delay: float = 0.0) -> None:
        self.unit_ids = unit_ids
        self.delay = delay
        self.port = 0
        self.spans: list[tuple[float, float]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.server: ModbusTcpServer | None = None

    async def _action(self, fc: int, start: int, addr: int, count: int, regs: list[int], values: Any) -> None:
        t0 = time.monotonic()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay and values is None:
                await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
            self.spans.append((t0, time.monotonic()))

    def _device(self, uid: int) -> SimDevice:
        bits = [SimData(0, count=64, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=uid,
            simdata=(
                bits,
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                [SimData(0, count=300, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=300, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def start(self) -> None:
        server = ModbusTcpServer([self._device(u) for u in self.unit_ids], address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def put(self, fc: int, addr: int, values: list[int] | list[bool], unit: int = 1) -> None:
        assert self.server is not None
        await self.server.context.async_setValues(unit, fc, addr, values)

    def requests_between(self, t0: float, t1: float) -> int:
        return sum(1 for s, _e in self.spans if t0 <= s < t1)


@pytest.fixture
async def server() -> AsyncIterator[RegisterServer]:
    srv = RegisterServer()
    await srv.start()
    yield srv
    await srv.stop()


def device(port: int, signals: list[dict[str, Any]], **over: Any) -> ModbusDevice:
    base: dict[str, Any] = {
        "id": "plc",
        "protocol": "modbus",
        "endpoint": f"127.0.0.1:{port}",
        "timeout": 0.5,
        "poll_interval": 0.05,
        "reconnect_min": 0.1,
        "reconnect_max": 0.4,
        "signals": signals,
    }
    return ModbusDevice.model_validate({**base, **over})


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        res = check()
        if isinstance(res, Awaitable):
            res = await res
        if res:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


# --- decoding -------------------------------------------------------------------------------------

SAMPLES: list[tuple[str, Any, Any]] = [
    ("int16", -1234, DT.INT16),
    ("uint16", 54321, DT.UINT16),
    ("int32", -123456789, DT.INT32),
    ("uint32", 3_000_000_000, DT.UINT32),
    ("int64", -9_000_000_000_000, DT.INT64),
    ("uint64", 18_000_000_000_000_000_000, DT.UINT64),
    ("float32", 245.5, DT.FLOAT32),
    ("float64", -3.141592653589793, DT.FLOAT64),
]


def _swap_bytes(regs: list[int]) -> list[int]:
    return [((r & 0xFF) << 8) | (r >> 8) for r in regs]


async def test_decodes_every_type_in_every_byte_and_word_order(server: RegisterServer) -> None:
    # Registers are written with pymodbus's own encoder (word order) plus a byte swap, then read back.
    signals: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    addr = 0
    for type_, value, dt in SAMPLES:
        for word in ("big", "little"):
            for byte in ("big", "little"):
                regs = AsyncModbusTcpClient.convert_to_registers(value, dt, word_order=word)
                if byte == "little":
                    regs = _swap_bytes(regs)
                await server.put(FC_WRITE_REGS, addr, regs)
                name = f"{type_}_{byte}_{word}"
                signals.append(
                    {"name": name, "address": addr, "type": type_, "byte_order": byte, "word_order": word}
                )
                expected[name] = value
                addr += len(regs)
    text = AsyncModbusTcpClient.convert_to_registers("SN-RUN-B-0001-0042", DT.STRING)
    await server.put(FC_WRITE_REGS, 250, text + [0] * (16 - len(text)))
    await server.put(
        FC_WRITE_REGS, 270, _swap_bytes(AsyncModbusTcpClient.convert_to_registers("SN-9", DT.STRING))
    )
    await server.put(FC_WRITE_REGS, 280, [2453, 7])
    await server.put(FC_INPUT_REGS, 10, AsyncModbusTcpClient.convert_to_registers(-7.25, DT.FLOAT32))
    await server.put(FC_WRITE_COILS, 3, [True, False, True])
    await server.put(FC_DISCRETE, 5, [True])
    signals += [
        {"name": "sn", "address": 250, "type": "string", "length": 16},
        {"name": "sn_swapped", "address": 270, "type": "string", "length": 2, "byte_order": "little"},
        {"name": "temp", "address": 280, "type": "uint16", "scale": 0.1},
        {"name": "flag_word", "address": 281, "type": "bool"},
        {"name": "ir", "table": "input", "address": 10, "type": "float32"},
        {"name": "coil3", "table": "coil", "address": 3, "type": "bool"},
        {"name": "coil4", "table": "coil", "address": 4, "type": "bool"},
        {"name": "coil5", "table": "coil", "address": 5, "type": "bool"},
        {"name": "di5", "table": "discrete_input", "address": 5, "type": "bool"},
        {"name": "di6", "table": "discrete_input", "address": 6, "type": "bool"},
    ]
    expected |= {
        "sn": "SN-RUN-B-0001-0042",
        "sn_swapped": "SN-9",
        "temp": 245.3,
        "flag_word": True,
        "ir": -7.25,
        "coil3": True,
        "coil4": False,
        "coil5": True,
        "di5": True,
        "di6": False,
    }
    dev = device(server.port, signals)
    drv = ModbusDriver(dev, ModbusLink(dev))
    try:
        reading = await drv.read([s["name"] for s in signals])
        assert reading.values == expected
        # 32 numbers, a string, … in few requests: adjacent registers are read together.
        assert drv.link.requests <= 6
    finally:
        await drv.close()


async def test_a_refused_request_is_an_error_of_the_device_not_of_the_link(server: RegisterServer) -> None:
    dev = device(server.port, [{"name": "ok", "address": 0}, {"name": "beyond", "address": 5000}])
    drv = ModbusDriver(dev, ModbusLink(dev))
    try:
        with pytest.raises(DeviceError, match="refused holding 5000"):
            await drv.read(["beyond"])
        assert drv.state == "ERROR" and drv.link.health.state == "CONNECTED"
        await drv.read(["ok"])
        assert drv.state == "CONNECTED" and drv.error is None
    finally:
        await drv.close()


# --- reconnect ------------------------------------------------------------------------------------


async def test_reconnects_after_the_server_restarts_logging_once_each_way(
    server: RegisterServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.modbus")
    dev = device(server.port, [{"name": "counter", "address": 1, "type": "uint32"}])
    drv = ModbusDriver(dev, ModbusLink(dev))
    try:
        await server.put(FC_WRITE_REGS, 1, [0, 7])
        assert (await drv.read(["counter"])).values == {"counter": 7}
        await server.stop()
        with pytest.raises(DeviceError):
            await drv.read(["counter"])
        assert drv.state == "DISCONNECTED"
        for _ in range(20):  # polls while the PLC is away: refused at once, no log flood
            with pytest.raises(DeviceError):
                await drv.read(["counter"])
        await server.start()
        await server.put(FC_WRITE_REGS, 1, [0, 8])

        async def back() -> bool:
            try:
                return (await drv.read(["counter"])).values == {"counter": 8}
            except DeviceError:
                return False

        await eventually(back)
        assert drv.state == "CONNECTED" and drv.link.health.connects == 2
        msgs = [r.getMessage() for r in caplog.records if r.name == "edge.modbus"]
        assert sum("connection lost" in m for m in msgs) == 1
        assert sum("connection recovered" in m for m in msgs) == 1
    finally:
        await drv.close()


async def test_reconnect_attempts_back_off_exponentially_and_are_capped() -> None:
    # A port that accepts and drops every connection (a PLC rebooting behind a switch): each attempt is seen.
    attempts: list[float] = []

    def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        w.close()

    flaky = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = flaky.sockets[0].getsockname()[1]
    dev = device(port, [{"name": "counter", "address": 1}], timeout=0.2, reconnect_min=0.1, reconnect_max=0.4)
    drv = ModbusDriver(dev, ModbusLink(dev))
    end = time.monotonic() + 3.0
    reads = 0
    try:
        while time.monotonic() < end:
            reads += 1
            with pytest.raises(DeviceError):
                await drv.read(["counter"])
            await asyncio.sleep(0.02)
    finally:
        await drv.close()
        flaky.close()
        await flaky.wait_closed()
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) >= 3 and reads > 2 * len(attempts)  # most polls did not hammer the device
    # Delays grow (0.05–0.1, 0.05–0.2, …) and never exceed the cap (+ the 0.2 s request timeout + a poll).
    assert max(gaps) <= 0.4 + 0.2 + 0.1
    assert drv.state == "STOPPED" or drv.link.health.state in ("DISCONNECTED", "STOPPED")


# --- polling through Acquisition ------------------------------------------------------------------


def counter_rule(name: str = "count", dev: str = "plc") -> RuleConfig:
    return RuleConfig.model_validate(
        {
            "name": name,
            "device": dev,
            "trigger": {"kind": "counter", "signal": "counter"},
            "ingest_type": "AUTO",
            "station_code": "ST-B-PRINT-01",
            "fields": {"sn": "sn"},
        }
    )


async def test_polls_never_overlap_and_do_not_burst_after_a_slow_device() -> None:
    srv = RegisterServer(unit_ids=(1, 2), delay=0.25)
    await srv.start()
    sigs = [
        {"name": "counter", "address": 1, "type": "uint32"},
        {"name": "sn", "address": 10, "type": "string", "length": 8},
    ]
    # Two devices behind one gateway (same host:port, unit 1 and 2): one connection, one lock.
    d1 = device(srv.port, sigs, id="plc", unit_id=1, timeout=2.0)
    d2 = device(srv.port, sigs, id="plc2", unit_id=2, timeout=2.0)
    events: list[NewEvent] = []

    async def sink(evs: list[NewEvent]) -> bool:
        events.extend(evs)
        return True

    acq = Acquisition(
        SimpleNamespace(devices=[d1, d2], rules=[counter_rule(), counter_rule("count2", "plc2")]), sink
    )
    stop = asyncio.Event()
    task = asyncio.create_task(acq.run(stop))
    try:
        t0 = time.monotonic()
        await asyncio.sleep(1.5)  # each poll takes 0.25 s at a 0.05 s interval
        slow = srv.requests_between(t0, time.monotonic())
        srv.delay = 0.0
        t1 = time.monotonic()
        await asyncio.sleep(0.5)
        fast = srv.requests_between(t1 + 0.3, time.monotonic())  # after any queue would have drained
    finally:
        stop.set()
        await task
        await srv.stop()
    assert srv.max_inflight == 1  # the gateway never sees two requests at once
    assert slow <= 1.5 / 0.25 + 2  # one poll at a time: no pile-up of ticks
    assert fast <= 2 * (0.2 / 0.05) + 4  # back to one poll per interval per device, no catch-up burst
    starts = sorted(srv.spans)
    assert all(b[0] >= a[1] - 1e-3 for a, b in itertools.pairwise(starts))


async def test_counter_increments_become_events_and_device_states_follow_the_link() -> None:
    srv = RegisterServer()
    await srv.start()
    sigs = [
        {"name": "counter", "address": 1, "type": "uint32"},
        {"name": "sn", "address": 10, "type": "string", "length": 8},
    ]
    dev = device(srv.port, sigs)
    events: list[NewEvent] = []

    async def sink(evs: list[NewEvent]) -> bool:
        events.extend(evs)
        return True

    acq = Acquisition(SimpleNamespace(devices=[dev], rules=[counter_rule()]), sink)
    stop = asyncio.Event()
    task = asyncio.create_task(acq.run(stop))
    try:
        await eventually(lambda: acq.device_states()[0].state == "CONNECTED")
        for n in (1, 2):
            await srv.put(
                FC_WRITE_REGS, 10, AsyncModbusTcpClient.convert_to_registers(f"SN-{n:04d}", DT.STRING)
            )
            await srv.put(FC_WRITE_REGS, 1, [0, n])
            await eventually(lambda n=n: len(events) == n)
        assert [e.payload["payload"]["sn"] for e in events] == ["SN-0001", "SN-0002"]
        await srv.stop()
        await eventually(lambda: acq.device_states()[0].state == "DISCONNECTED")
        assert acq.device_states()[0].last_error
    finally:
        stop.set()
        await task
        await srv.stop()
    assert acq.device_states()[0].state == "STOPPED"
