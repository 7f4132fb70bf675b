"""The automated line LINE-B as separate parts for the edge scenarios E1–E5 (scenarios.md).

- central: a real `mes-central serve` process (migrated and seeded with the demo plant by `mes-central
  migrate` and `seed demo`), killed and restarted at will;
- the broker: Mosquitto (tests/brokers.py) or central's embedded one;
- the simulated line: `SimLine` in the test's process, so its records are the ground truth;
- the edge agent: a real `mes-edge run --config FILE` process polling the simulator, SIGKILLed at will, and
  `mes-edge` commands (`outbox stats`, `dead-letters …`) run against its outbox as an engineer would.

Everything that waits polls with a deadline; nothing here blocks the event loop (the simulator's servers run
on it), so every child process is an asyncio subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from central.demo_line import _call, _session, _sign_in, line_b_sim_config, prepare_line_b_run
from edge.sim.edge_map import edge_section, to_toml
from edge.sim.line import SimLine
from tests.brokers import free_port

ROOT = Path(__file__).resolve().parents[2]
EDGE_ID = "edge-line-b"
PASSWORD = "Test123!"
PLANNER, QUALITY, ENGINEER = "planner@example.com", "quality@example.com", "engineer@example.com"
# Route PCBA-AUTO-V1 (demo-plant.md §4): station → (step, track source).
ROUTE = {
    "ST-B-PRINT-01": (10, "AUTO"),
    "ST-B-SPI-01": (20, "TEST"),
    "ST-B-MOUNT-01": (30, "AUTO"),
    "ST-B-REFLOW-01": (40, "BATCH"),
    "ST-B-AOI-01": (50, "TEST"),
    "ST-B-ICT-01": (60, "TEST"),
}


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, every: float = 0.25
) -> Any:
    """Polls `check` until it returns something truthy (which is returned); fails after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what} (last seen: {last!r})")
        await asyncio.sleep(every)


@dataclass
class Done:
    rc: int
    out: str
    err: str


async def run_command(*args: str, env: dict[str, str] | None = None, limit: float = 60.0) -> Done:
    """`python -m …` as a child process, waited for without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(args)} did not finish within {limit} s") from None
    return Done(proc.returncode or 0, out.decode(), err.decode())


class Daemon:
    """A long-running child process with its output in a log file: start, SIGTERM, SIGKILL."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def spawn(self, args: list[str], env: dict[str, str]) -> None:
        assert not self.running, f"{self.name} is already running"
        self._log = open(self.log_path, "ab")  # noqa: ASYNC230 (a local file, opened once per start)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, env=env, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def end(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> int | None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        return None if proc is None else proc.returncode

    async def kill(self) -> None:
        """kill -9: no chance to flush, close or say goodbye."""
        await self.end(signal.SIGKILL)

    def tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return f"--- {self.name}: no log ---"
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.name} ({self.log_path}) ---\n" + "\n".join(text)


class Central(Daemon):
    """`mes-central serve` on a free port, with MES_* settings in its environment."""

    def __init__(self, workdir: Path, db_url: str, mqtt_url: str) -> None:
        super().__init__("central", workdir / "central.log")
        self.workdir = workdir
        self.port = free_port()
        self.embedded_port = free_port() if mqtt_url == "embedded" else None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
        self.env.update(
            MES_DATABASE_URL=db_url,
            MES_HTTP_PORT=str(self.port),
            MES_MQTT_URL=mqtt_url,
            MES_ALLOW_DEMO_SEED="true",
            MES_LOG_LEVEL="INFO",
        )
        if self.embedded_port is not None:
            self.env["MES_MQTT_EMBEDDED_PORT"] = str(self.embedded_port)
        self.base_url = f"http://127.0.0.1:{self.port}/api"

    @property
    def broker_url(self) -> str:
        """Where the edge agent connects: the external broker, or the one embedded in central."""
        if self.embedded_port is not None:
            return f"mqtt://127.0.0.1:{self.embedded_port}"
        return self.env["MES_MQTT_URL"]

    async def prepare(self) -> None:
        """The operator's first steps: migrate, then load the demo plant (which registers edge-line-b)."""
        migrated = await run_command("-m", "central.cli", "migrate", env=self.env)
        assert migrated.rc == 0, migrated.err
        key_file = self.workdir / "edge-line-b.key"
        seeded = await run_command(
            "-m", "central.cli", "seed", "demo", "--edge-key-file", str(key_file), env=self.env
        )
        assert seeded.rc == 0, seeded.err
        assert "demo plant loaded" in seeded.out

    async def start(self) -> None:
        await self.spawn(["-m", "central.cli", "serve"], self.env)
        await self.wait_healthy()

    async def wait_healthy(self, within: float = 30.0) -> None:
        """Until /api/health answers ok with the MQTT consumer connected to its broker."""
        async with aiohttp.ClientSession() as http:

            async def healthy() -> Any:
                assert self.running, f"central exited early\n{self.tail()}"
                try:
                    async with http.get(f"{self.base_url}/health") as r:
                        data = (await r.json())["data"]
                except (aiohttp.ClientError, OSError):
                    return None
                return data["status"] == "ok" and data["mqtt"] == "connected"

            await eventually(healthy, within=within, what="central healthy with MQTT connected", every=0.1)

    async def restart(self) -> None:
        await self.kill()
        await self.start()


class Rest:
    """REST calls to central as the demo users (one signed-in session per user)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def call(self, user: str, method: str, path: str, **kw: Any) -> Any:
        http = self._sessions.get(user)
        if http is None:
            http = self._sessions[user] = _session(self.base_url)
            await _sign_in(http, user, PASSWORD)
        return await _call(http, method, path.lstrip("/"), **kw)

    async def edge(self, edge_id: str = EDGE_ID) -> dict[str, Any]:
        edges = await self.call(ENGINEER, "get", "integration/edges")
        return next(e for e in edges if e["edgeId"] == edge_id)

    async def unit_stats(self, run_no: str) -> dict[str, Any]:
        return dict((await self.call(PLANNER, "get", f"runs/{run_no}"))["unitStats"])

    async def trace(self, sn: str) -> dict[str, Any]:
        return dict(await self.call(QUALITY, "get", f"trace/units/{sn}", params={"mode": "run"}))

    async def failed_messages(self, **filters: str) -> list[dict[str, Any]]:
        params = {"status": "FAILED", "pageSize": "100", **filters}
        return list((await self.call(ENGINEER, "get", "integration/messages", params=params))["items"])

    async def close(self) -> None:
        for http in self._sessions.values():
            await http.close()
        self._sessions.clear()


class EdgeAgent(Daemon):
    """`mes-edge run --config FILE` for LINE-B's devices (generated from the simulator's memory maps)."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        endpoints: dict[str, str],
        sim: SimLine,
        reorder_window: float = 0.3,
    ) -> None:
        super().__init__("edge agent", workdir / "edge.log")
        self.config_path = workdir / "edge-line-b.toml"
        self.outbox_path = workdir / "state" / "outbox.db"
        section = edge_section(sim.config, endpoints)
        for d in section["devices"]:
            # Polled faster than the shipped 0.2 s / 1 s so a short test line is followed closely.
            d.update(poll_interval=0.1, reconnect_min=0.1, reconnect_max=0.5)
            if d["protocol"] == "opcua":
                d.update(publishing_interval=0.1, watchdog_interval=0.5)
        self.trigger_keys = {f"{r['device']}/{r['name']}" for r in section["rules"]}
        self.config_path.write_text(
            f"""edge_id = "{EDGE_ID}"
line_code = "LINE-B"
log_level = "INFO"

[outbox]
path = "{self.outbox_path}"

[mqtt]
url = "{broker_url}"
keepalive = 5

[forwarder]
# Shorter than the shipped defaults so a lost batch or a dead broker costs seconds, not tens of seconds.
ack_timeout = 2.0
status_interval = 2.0
reconnect_min = 0.2
reconnect_max = 1.0
retry_min = 0.2
retry_max = 1.0

[acquisition]
# The test line runs at a takt of tenths of a second: merge what the devices answer within a window.
reorder_window = {reorder_window}

{to_toml(section)}
"""
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MES_")}
        self.starts = 0

    async def start(self) -> None:
        """Start the agent and wait until it has read every trigger once (its baseline for new records)."""
        await self.spawn(["-m", "edge.cli", "run", "--config", str(self.config_path)], self.env)
        self.starts += 1
        if self.starts == 1:

            async def baselined() -> bool:
                assert self.running, f"the edge agent exited\n{self.tail()}"
                return self.trigger_keys <= set(self.acquisition_state())

            await eventually(baselined, within=60, what="the edge agent read every device", every=0.1)

    def acquisition_state(self) -> dict[str, Any]:
        path = self.outbox_path.parent / f"{EDGE_ID}.acquisition.json"
        try:
            return dict(json.loads(path.read_text("utf-8"))["last"])
        except (OSError, ValueError, KeyError):
            return {}

    async def cli(self, *args: str) -> Done:
        """A `mes-edge` command against this agent's config, as an engineer on the edge PC runs it."""
        return await run_command("-m", "edge.cli", *args, "--config", str(self.config_path), env=self.env)

    async def outbox_stats(self) -> dict[str, Any]:
        done = await self.cli("outbox", "stats", "--json", "--interval", "0")
        assert done.rc == 0, done.err
        return dict(orjson.loads(done.out))

    async def dead_letters(self) -> list[dict[str, Any]]:
        done = await self.cli("dead-letters", "list", "--json")
        assert done.rc == 0, done.err
        return list(orjson.loads(done.out))

    def pending_event_ids(self) -> set[str]:
        """The events stored in the outbox and not yet acknowledged (read while the agent is down)."""
        assert not self.running
        conn = sqlite3.connect(self.outbox_path)
        try:
            return {row[0] for row in conn.execute("SELECT event_id FROM outbox")}
        finally:
            conn.close()


@dataclass
class Line:
    """The simulated LINE-B (ground truth) and the edge agent watching it."""

    sim: SimLine
    agent: EdgeAgent
    run_task: asyncio.Task[None] | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start_production(self) -> None:
        self.run_task = asyncio.create_task(self.sim.run(self.stop), name="sim-line")

    async def finished(self, within: float = 90.0) -> None:
        """Until every board has left the line."""
        assert self.run_task is not None
        await asyncio.wait_for(asyncio.shield(self.run_task), within)

    async def close(self) -> None:
        self.stop.set()
        if self.run_task is not None:
            self.run_task.cancel()
            await asyncio.gather(self.run_task, return_exceptions=True)
        await self.agent.end()
        await self.sim.close()


async def start_line(
    workdir: Path,
    broker_url: str,
    *,
    run_no: str | None,
    sns: list[str],
    takt: float,
    lot_size: int | None = None,
    buffer: int | None = None,
    reorder_window: float = 0.3,
) -> Line:
    """The machines on free ports, then the agent; production starts with `Line.start_production()`."""
    cfg = line_b_sim_config(
        workdir / "sim-truth.jsonl",
        run_no=run_no,
        sns=sns,
        takt=takt,
        boards=len(sns),
        lot_size=lot_size,
        buffer=buffer,
    )
    sim = SimLine(cfg)
    await sim.start()
    agent = EdgeAgent(workdir, broker_url, sim.endpoints(), sim, reorder_window)
    line = Line(sim, agent)
    try:
        await agent.start()
    except BaseException:
        await line.close()
        raise
    return line


class Stack:
    """What one scenario started, stopped in reverse order at the end; `logs()` for a failure report."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.central: Central | None = None
        self.rest: Rest | None = None
        self.line: Line | None = None

    async def start_central(self, db_url: str, mqtt_url: str, *, prepare: bool) -> Central:
        self.central = Central(self.workdir, db_url, mqtt_url)
        if prepare:
            await self.central.prepare()
        await self.central.start()
        self.rest = Rest(self.central.base_url)
        return self.central

    async def prepare_run(self, boards: int, sn_prefix: str | None = None) -> tuple[str, list[str]]:
        assert self.central is not None
        return await prepare_line_b_run(self.central.base_url, boards, sn_prefix=sn_prefix)

    async def start_line(
        self,
        *,
        run_no: str | None,
        sns: list[str],
        takt: float,
        lot_size: int | None = None,
        buffer: int | None = None,
        broker_url: str | None = None,
        reorder_window: float = 0.3,
    ) -> Line:
        """`broker_url`: where the agent connects when not straight to central's broker (a proxy, a user)."""
        assert self.central is not None
        self.line = await start_line(
            self.workdir,
            broker_url or self.central.broker_url,
            run_no=run_no,
            sns=sns,
            takt=takt,
            lot_size=lot_size,
            buffer=buffer,
            reorder_window=reorder_window,
        )
        return self.line

    def logs(self) -> str:
        parts = [d.tail() for d in (self.central, self.line.agent if self.line else None) if d is not None]
        return "\n".join(parts)

    async def close(self) -> None:
        if self.line is not None:
            await self.line.close()
        if self.rest is not None:
            await self.rest.close()
        if self.central is not None:
            await self.central.end()


# ---- ground truth vs central ----------------------------------------------------------------------------


def truth_by_unit(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """SN → station → the machine record about that board (an oven lot record counts for each of its SNs)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        for sn in r.get("snList") or [r["sn"]]:
            station = out.setdefault(sn, {})
            assert r["station"] not in station, f"the simulator made two records of {sn} at {r['station']}"
            station[r["station"]] = r
    return out


async def assert_central_matches_truth(rest: Rest, sim: SimLine, sns: list[str]) -> None:
    """Every machine record of these boards is at central exactly once, with the machine's time and values:
    one track per (unit, step) with the record's source and time, one data value per measurement, the oven
    lot as a carrier track, every unit DONE."""
    truth = truth_by_unit(sim.records())
    for sn in sns:
        expected = truth[sn]
        assert set(expected) == set(ROUTE), f"{sn} did not pass every station in the simulator"
        trace = await rest.trace(sn)
        assert trace["unit"]["status"] == "DONE", (sn, trace["unit"])
        tracks = trace["tracks"]
        got = sorted((t["stepNo"], t["stationCode"], t["source"], t["result"]) for t in tracks)
        want = sorted((step, st, source, "PASS") for st, (step, source) in ROUTE.items())
        assert got == want, f"{sn}: tracks {got} != one per step {want}"
        for t in tracks:
            machine_time = expected[t["stationCode"]]["occurredAt"]
            # The machine's time, not the time the event reached central.
            assert t["inAt"] == t["outAt"] == machine_time, (sn, t, machine_time)
        assert len(trace["ingestEvents"]) == len(ROUTE), (sn, trace["ingestEvents"])

        values = {(v["stepNo"], v["name"]): v["valueNumber"] for v in trace["dataValues"]}
        want_values = {
            (ROUTE[st][0], name): value
            for st, rec in expected.items()
            if st != "ST-B-REFLOW-01"
            for name, value in rec["measurements"].items()
        }
        assert len(trace["dataValues"]) == len(want_values), (sn, trace["dataValues"])
        assert values.keys() == want_values.keys(), (sn, sorted(values), sorted(want_values))
        for key, value in want_values.items():
            assert abs(values[key] - value) < 1e-9, (sn, key, values[key], value)

        lot = expected["ST-B-REFLOW-01"]
        (carrier,) = trace["carrierTracks"]
        assert carrier["carrierNo"] == lot["carrier"] and carrier["stepNo"] == 40, (sn, carrier)
        assert carrier["outAt"] == lot["occurredAt"], (sn, carrier, lot)
        (peak,) = trace["carrierDataValues"]
        # The PLC holds the peak temperature in 0.1 °C steps.
        assert (
            peak["name"] == "PEAK_TEMP" and round(peak["valueNumber"], 1) == lot["measurements"]["PEAK_TEMP"]
        )


def records_of(sim: SimLine, sns: list[str]) -> list[dict[str, Any]]:
    wanted = set(sns)
    return [r for r in sim.records() if wanted & set(r.get("snList") or [r.get("sn")])]
