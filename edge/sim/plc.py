"""A simulated station PLC: a pymodbus TCP server over a register model (layout.py), with fault injection."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.drivers.decode import encode
from edge.sim import layout
from edge.sim.config import SimStation

log = logging.getLogger("edge.sim.plc")

FC_READ_HOLDING = 3
FC_WRITES = (6, 16, 23)


class SimPlc:
    """Registers live in `hr` (the machine's truth); the server shows them, except registers frozen."""

    def __init__(self, station: SimStation) -> None:
        self.station = station
        self.kind = station.kind
        self.buffer = station.buffer
        self.stride = layout.stride(self.kind)
        size = layout.BASE + max(1, self.buffer) * self.stride
        self.hr = [0] * size
        self.frozen: dict[int, int] = {}
        self.counter = 0
        self.port = station.port
        self.requests = 0
        self._server: ModbusTcpServer | None = None
        self.hr[layout.STATUS] = layout.STATUS_RUN

    # --- server -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint(self) -> str:
        return f"{self.station.host}:{self.port}"

    async def start(self) -> None:
        """Serve on the configured port (or a free one, kept for restarts so clients find it again)."""
        if self._server is not None:
            return
        device = SimDevice(
            id=self.station.unit_id,
            simdata=(
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=len(self.hr), values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        server = ModbusTcpServer(device, address=(self.station.host, self.port))
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._server = server

    async def stop(self) -> None:
        """The PLC stops answering (power off / cable pulled); it keeps its memory."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
            await asyncio.sleep(0)

    def drop_connections(self) -> int:
        """Close every client connection (a switch hiccup); the server keeps listening."""
        if self._server is None:
            return 0
        conns = list(self._server.active_connections.values())
        for c in conns:
            c.close()
        return len(conns)

    async def _action(
        self, fc: int, start: int, address: int, count: int, regs: list[int], values: Any
    ) -> None:
        self.requests += 1
        if fc == FC_READ_HOLDING:
            for a in range(address, address + count):
                regs[a - start] = self.frozen.get(a, self.hr[a])
        elif fc in FC_WRITES and values is not None:
            for i, v in enumerate(values):
                self.hr[address + i] = int(v)
        return None

    # --- machine ----------------------------------------------------------------------------------

    def freeze_counter(self, on: bool) -> None:
        """Clients keep seeing the counter's current value while the machine goes on counting."""
        if on:
            for a in (layout.COUNTER, layout.COUNTER + 1):
                self.frozen[a] = self.hr[a]
        else:
            self.frozen.clear()

    def set_status(self, status: int) -> None:
        self.hr[layout.STATUS] = status

    def _put(self, base: int, values: dict[str, Any]) -> None:
        for name, (offset, type_, length) in layout.fields(self.kind).items():
            if name not in values:
                continue
            regs = encode(values[name], type_, length=length)
            self.hr[base + offset : base + offset + len(regs)] = regs

    def write_record(self, values: dict[str, Any]) -> int:
        """Store a finished record (buffer slot, then last record), then count it — the order a PLC uses so a
        reader that sees the new count finds the record complete. Returns the record's number."""
        n = self.counter + 1
        blank = {name: ("" if t == "string" else 0) for name, (_o, t, _l) in layout.fields(self.kind).items()}
        record = {**blank, **values}
        if self.buffer:
            self._put(layout.BASE + (n % self.buffer) * self.stride, record)
        self._put(layout.LAST, record)
        self.counter = n
        self.hr[layout.COUNTER : layout.COUNTER + 2] = encode(n & 0xFFFFFFFF, "uint32")
        return n
