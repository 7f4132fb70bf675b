"""P4, the edge (quality-bars.md): outbox store rate, outbox memory, polling CPU; each beside its ceiling.

1. Durable store rate: many producers call `Outbox.append` the way acquisition does (one event per call, or a
   record's few events together), each awaiting its append, so every counted event is on disk
   (synchronous=FULL). Ceiling: raw `executemany` into SQLite on the same disk (sqlite_bulk_insert_ceiling).
2. Memory: a child process (the agent's outbox alone, not this harness) stores 1,000,000 events (quick:
   30,000), then reads and settles batches as the forwarder does (`head`/`newer`/`batches.select`/`settle`);
   its peak RSS is the figure. Beside it, the RSS of the same child before it stored anything (the floor).
3. Polling CPU: 10 simulated Modbus TCP devices × 50 holding registers in one child process, the agent's
   acquisition (drivers → rules → outbox; no forwarder) polling them at 10 Hz in another, whose own CPU time
   over wall time is the figure. Ceiling for context: a bare pymodbus client child doing the same reads.

Children are this module run with `--child MODE JSON`; each prints one JSON line with its figures.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Context, Row, sqlite_bulk_insert_ceiling, standalone
from edge.outbox import NewEvent

ROOT = Path(__file__).resolve().parents[1]
STORE_TARGET = 20_000  # events/s
RSS_TARGET_MB = 100.0
CPU_TARGET = 0.10  # of one core
DEVICES = 10
REGISTERS = 50
POLL_HZ = 10.0
WARM_UP = 0.8  # seconds a polling child runs before it measures (connects, first readings)


# ---- shared helpers -----------------------------------------------------------------------------------


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc (getrusage has only the peak)."""
    cur = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:  # not Linux: the peak is all there is
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cur = peak
    return cur, peak


def _ingest(i: int, producer: int = 0, at: datetime | None = None) -> Any:
    """An AUTO ingest event about the size edge/rules.py makes for an SMT station (≈250 bytes of JSON)."""
    return NewEvent(
        event_id=f"bench-{producer}-{i}",
        kind="INGEST",
        occurred_at=at or datetime.now(UTC),
        station_code="SMT-PLACE-01",
        payload={
            "eventType": "AUTO",
            "payload": {
                "stationCode": "SMT-PLACE-01",
                "sn": f"SN{producer:03d}{i:08d}",
                "result": "PASS",
                "measurements": [{"name": "cycleTime", "value": 31.5, "unit": "s"}],
            },
        },
    )


async def _child(mode: str, args: dict[str, Any], seconds_limit: float = 600.0) -> dict[str, Any]:
    """Runs `python -m bench.p4_edge --child MODE ARGS` and returns its JSON line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.p4_edge",
        "--child",
        mode,
        json.dumps(args),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"p4 child {mode} did not finish within {seconds_limit:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"p4 child {mode} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


# ---- 1. durable store rate ----------------------------------------------------------------------------


async def _store_rate(ctx: Context) -> list[Row]:
    from edge.outbox import Outbox

    seconds = ctx.size(2.0, 10.0)
    producers = 200  # device tasks / rules storing at once: half one event per call, half 2–5 together
    path = ctx.workdir / "p4-rate.sqlite"
    ob = await Outbox.open(path, edge_id="bench-edge", max_events=10**8, max_bytes=10**12)
    stored = 0
    calls = 0
    stop_at = 0.0

    async def producer(p: int) -> None:
        nonlocal stored, calls
        group = 1 if p % 2 else 2 + p % 4
        i = 0
        while time.perf_counter() < stop_at:
            at = datetime.now(UTC)  # one reading's events share the machine's time
            events = [_ingest(i + k, p, at) for k in range(group)]
            i += group
            if not await ob.append(events):
                raise RuntimeError("the bench outbox refused events")
            stored += group
            calls += 1

    try:
        stop_at = time.perf_counter() + 0.3  # warm-up: file grown, code paths hot
        await asyncio.gather(*(producer(p) for p in range(producers)))
        base_stored, base_calls, base_commits = stored, calls, ob.commits
        t0, cpu0 = time.perf_counter(), time.process_time()
        stop_at = t0 + seconds
        await asyncio.gather(*(producer(1000 + p) for p in range(producers)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await ob.close()
    n = stored - base_stored
    commits = ob.commits - base_commits
    # Every awaited append is durable: the file holds exactly what was acknowledged.
    with sqlite3.connect(path) as conn:
        on_disk = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    if on_disk != stored:
        raise RuntimeError(f"outbox holds {on_disk} events, {stored} were acknowledged")
    rate = n / elapsed
    ceiling = await asyncio.to_thread(
        sqlite_bulk_insert_ceiling, ctx.workdir / "p4-ceiling.sqlite", ctx.size(20_000, 100_000)
    )
    return [
        Row(
            "P4",
            "edge outbox: events stored durably (synchronous=FULL)",
            rate,
            "ev/s",
            ceiling,
            "raw SQLite executemany, 500/commit",
            "≥ 20,000 ev/s",
            rate >= STORE_TARGET,
            f"{producers} producers, {(calls - base_calls) / elapsed:,.0f} appends/s, "
            f"{n / max(commits, 1):.0f} events/commit, {cpu / max(n, 1) * 1e6:.1f} µs CPU/event "
            "(bench's event making included)",
        )
    ]


# ---- 2. memory ------------------------------------------------------------------------------------------


async def _memory(ctx: Context) -> list[Row]:
    events = ctx.size(30_000, 1_000_000)
    got = await _child(
        "memory",
        {"dir": str(ctx.workdir / "p4-mem"), "events": events, "read_seconds": ctx.size(0.3, 5.0)},
    )
    scaled = " (quick: 30,000 events; the target is for 1,000,000)" if ctx.quick else ""
    peak = float(got["peak_mb"])
    return [
        Row(
            "P4",
            f"edge RSS with {events:,} events stored and read{scaled}",
            peak,
            "MB",
            None,
            "",
            "≤ 100 MB",
            peak <= RSS_TARGET_MB,
            f"stored {got['stored_mb']:.1f} MB, reading {got['reading_mb']:.1f} MB, "
            f"{got['batches']} batches read and settled; store {got['store_rate']:,.0f} ev/s",
        ),
        Row(
            "",
            "edge RSS, same process before storing (floor)",
            float(got["floor_mb"]),
            "MB",
            note="Python, the edge's imports and an open empty outbox",
        ),
    ]


def _memory_child(args: dict[str, Any]) -> dict[str, Any]:
    from edge import batches
    from edge.forwarder import LIVE_KINDS
    from edge.outbox import Outbox

    events: int = args["events"]
    folder = Path(args["dir"])
    samples: list[float] = []

    async def main() -> dict[str, Any]:
        ob = await Outbox.open(
            folder / "outbox.sqlite", edge_id="bench-edge", max_events=1_000_000, max_bytes=1024**3
        )
        try:
            floor_mb = _rss_mb()[0]
            t0 = time.perf_counter()

            async def store(p: int) -> None:  # a few producers with big groups: the store is not measured
                for start in range(p * 1000, events, 4000):
                    at = datetime.now(UTC)
                    batch = [_ingest(i, p, at) for i in range(start, min(start + 1000, events))]
                    if not await ob.append(batch):
                        raise RuntimeError("outbox refused events")

            await asyncio.gather(*(store(p) for p in range(4)))
            store_rate = events / max(time.perf_counter() - t0, 1e-9)
            stored_mb = _rss_mb()[0]
            env = batches.Envelope("bench-edge", "L1")
            mark = await ob.max_seq() // 2  # half of the backlog counts as live: newer() has work to do
            n = 0
            stop = time.perf_counter() + args["read_seconds"]
            while time.perf_counter() < stop:
                head = await ob.head(500)
                if not head:
                    break
                live = await ob.newer(max(mark, head[-1].seq), LIVE_KINDS, 250)
                sel = batches.select(
                    env,
                    head,
                    live,
                    live_mark=mark,
                    max_events=500,
                    max_bytes=256 * 1024,
                    head_exhausted=len(head) < 500,
                )
                mark = sel.live_mark
                assert sel.batch is not None
                await ob.settle(delivered=[e.seq for e in sel.batch.events])
                n += 1
                samples.append(_rss_mb()[0])
            return {
                "floor_mb": floor_mb,
                "stored_mb": stored_mb,
                "reading_mb": max(samples, default=stored_mb),
                "peak_mb": _rss_mb()[1],
                "batches": n,
                "store_rate": store_rate,
            }
        finally:
            await ob.close()

    return asyncio.run(main())


# ---- 3. polling CPU ----------------------------------------------------------------------------------


@asynccontextmanager
async def _modbus_sim() -> AsyncIterator[asyncio.Future[list[int]]]:
    """The simulated devices in their own process (their CPU is not the agent's); → their ports, once up.
    Started early so its start-up overlaps other work."""
    sim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.p4_edge",
        "--child",
        "modbus-sim",
        json.dumps({"devices": DEVICES, "registers": REGISTERS}),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,  # pymodbus talks when clients hang up
    )

    async def ports() -> list[int]:
        assert sim.stdout is not None
        line = await asyncio.wait_for(sim.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the simulated Modbus devices did not start")
        return list(json.loads(line)["ports"])

    up = asyncio.ensure_future(ports())
    try:
        yield up
    finally:
        up.cancel()
        if sim.stdin is not None:
            sim.stdin.close()
        try:
            await asyncio.wait_for(sim.wait(), 10)
        except TimeoutError:
            sim.kill()
            await sim.wait()


async def _polling(ctx: Context, ports: list[int]) -> list[Row]:
    seconds = ctx.size(2.5, 20.0)
    common = {"ports": ports, "registers": REGISTERS, "seconds": seconds, "hz": POLL_HZ}
    # Both measure their own CPU time, so they may run side by side (2 cores, ≈10 % each).
    agent, bare = await asyncio.gather(
        _child("poll-agent", {**common, "dir": str(ctx.workdir / "p4-poll")}),
        _child("poll-bare", common),
    )
    load = agent["cpu"] / agent["wall"]
    want = DEVICES * POLL_HZ
    return [
        Row(
            "P4",
            f"edge polling {DEVICES} devices × {REGISTERS} registers at {POLL_HZ:.0f} Hz: CPU",
            load * 100,
            "% core",
            bare["cpu"] / bare["wall"] * 100,
            "bare pymodbus client, same reads",
            "≤ 10 % of one core",
            load <= CPU_TARGET and agent["polls"] / agent["wall"] >= 0.9 * want,
            f"{agent['polls'] / agent['wall']:.0f} polls/s (want {want:.0f}), "
            f"{agent['events']} events stored, over {agent['wall']:.1f} s; "
            f"bare client {bare['polls'] / bare['wall']:.0f} reads/s",
        )
    ]


def _modbus_sim_child(args: dict[str, Any]) -> None:
    """DEVICES pymodbus TCP servers in this process; each device's counter (register 0) counts a board a
    second and the other registers move with it. Prints the ports, serves until stdin closes."""
    import logging

    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    n, size = args["devices"], args["registers"]

    async def main() -> None:
        memories = [[0] * size for _ in range(n)]
        servers = []

        def action(hr: list[int]) -> Any:
            async def fill(
                fc: int, start: int, address: int, count: int, regs: list[int], values: Any
            ) -> None:
                if fc == 3:
                    regs[address - start : address - start + count] = hr[address : address + count]

            return fill

        for hr in memories:
            device = SimDevice(
                id=1,
                simdata=(
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                    [SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
                ),
                action=action(hr),
            )
            server = ModbusTcpServer(device, address=("127.0.0.1", 0))
            await server.serve_forever(background=True)
            servers.append(server)
        ports = [s.transport.sockets[0].getsockname()[1] for s in servers]  # type: ignore[union-attr]
        print(json.dumps({"ports": ports}), flush=True)

        async def boards() -> None:
            while True:
                await asyncio.sleep(1.0)
                for hr in memories:
                    hr[0] = (hr[0] + 1) & 0xFFFF
                    for i in range(1, size):
                        hr[i] = (hr[0] * 7 + i) & 0xFFFF

        ticker = asyncio.create_task(boards())
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
        ticker.cancel()
        for s in servers:
            await s.shutdown()

    asyncio.run(main())


@dataclass
class _PollConfig:
    devices: list[Any]
    rules: list[Any]


def _poll_config(ports: list[int], registers: int, hz: float) -> _PollConfig:
    """Per device: 50 uint16 holding registers; a counter rule on register 0 whose DEVICE_DATA event carries
    the other 49 as measurements, read with every poll (no record buffer): one 50-register request a poll."""
    from edge.device_config import Measurement, ModbusDevice, ModbusSignal, RuleConfig, Trigger

    devices, rules = [], []
    for d, port in enumerate(ports):
        dev_id = f"plc{d:02d}"
        signals = [ModbusSignal(name=f"r{i}", address=i) for i in range(registers)]
        devices.append(
            ModbusDevice(
                protocol="modbus",
                id=dev_id,
                endpoint=f"127.0.0.1:{port}",
                poll_interval=1.0 / hz,
                signals=signals,
            )
        )
        rules.append(
            RuleConfig(
                name=f"{dev_id}-data",
                device=dev_id,
                trigger=Trigger(kind="counter", signal="r0"),
                event="DEVICE_DATA",
                station_code=f"ST-{d:02d}",
                measurements=[Measurement(name=f"m{i}", signal=f"r{i}") for i in range(1, registers)],
            )
        )
    return _PollConfig(devices, rules)


def _poll_agent_child(args: dict[str, Any]) -> dict[str, Any]:
    from edge.acquisition import Acquisition
    from edge.drivers.modbus import ModbusDriver
    from edge.outbox import Outbox

    folder = Path(args["dir"])

    async def main() -> dict[str, Any]:
        ob = await Outbox.open(
            folder / "outbox.sqlite", edge_id="bench-edge", max_events=1_000_000, max_bytes=1024**3
        )
        acq = Acquisition(
            _poll_config(args["ports"], args["registers"], args["hz"]),
            ob.append,
            state_path=folder / "bench-edge.acquisition.json",
        )
        stop = asyncio.Event()
        task = asyncio.create_task(acq.run(stop))
        drivers = [d.driver for d in acq._devices]

        def requests() -> int:
            return sum(d.link.requests for d in drivers if isinstance(d, ModbusDriver))

        try:
            await asyncio.sleep(WARM_UP)  # connected, baselines taken, caught up
            r0, e0, c0, w0 = requests(), acq.events_out, time.process_time(), time.perf_counter()
            await asyncio.sleep(args["seconds"])
            r1, e1, c1, w1 = requests(), acq.events_out, time.process_time(), time.perf_counter()
        finally:
            stop.set()
            await task
            await ob.close()
        return {"cpu": c1 - c0, "wall": w1 - w0, "polls": r1 - r0, "events": e1 - e0}

    return asyncio.run(main())


def _poll_bare_child(args: dict[str, Any]) -> dict[str, Any]:
    """The same requests with nothing around them: one client per device, read, sleep to the next tick."""
    from pymodbus.client import AsyncModbusTcpClient

    interval = 1.0 / args["hz"]
    count = 0
    registers = args["registers"]

    async def main() -> dict[str, Any]:
        clients = [AsyncModbusTcpClient("127.0.0.1", port=p) for p in args["ports"]]
        for c in clients:
            await c.connect()
        stop_at = 0.0

        async def loop(c: AsyncModbusTcpClient) -> None:
            nonlocal count
            next_at = time.monotonic()
            while time.perf_counter() < stop_at:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += interval
                rsp = await c.read_holding_registers(0, count=registers, device_id=1)
                if not rsp.isError():
                    count += 1

        try:
            stop_at = time.perf_counter() + WARM_UP + args["seconds"]
            tasks = [asyncio.create_task(loop(c)) for c in clients]
            await asyncio.sleep(WARM_UP)
            r0, c0, w0 = count, time.process_time(), time.perf_counter()
            await asyncio.sleep(args["seconds"])
            r1, c1, w1 = count, time.process_time(), time.perf_counter()
            await asyncio.gather(*tasks)
        finally:
            for c in clients:
                c.close()
        return {"cpu": c1 - c0, "wall": w1 - w0, "polls": r1 - r0}

    return asyncio.run(main())


# ---- entry points ---------------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Row]:
    rows = await _store_rate(ctx)
    async with _modbus_sim() as ports:
        rows += await _memory(ctx)
        rows += await _polling(ctx, await ports)
    return rows


CHILDREN = {
    "memory": _memory_child,
    "poll-agent": _poll_agent_child,
    "poll-bare": _poll_bare_child,
}


def _child_main(mode: str, raw: str) -> None:
    args = json.loads(raw)
    if mode == "modbus-sim":
        _modbus_sim_child(args)
        return
    result = CHILDREN[mode](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child_main(sys.argv[2], sys.argv[3])
    else:
        standalone(run)
