"""The whole system in one process for `mes-demo` and the E1 test: central (embedded broker) + the simulated
LINE-B + an edge agent, with the production set up over central's own REST API as a planner would.

This is a composition root: it is the one place where central and edge code meet (they otherwise only share
the wire contract in `shared/`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from central.api import keys
from central.api.app import create_app
from central.config import Settings
from edge.agent import Agent
from edge.config import parse_config
from edge.sim.config import SimLineConfig, load_sim_config
from edge.sim.edge_map import edge_section
from edge.sim.line import SimLine

SIM_EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "sim-line-b.example.toml"
PLANNER = ("planner@example.com", "Test123!")
QUALITY = ("quality@example.com", "Test123!")


class DemoError(Exception):
    """The demo could not set up production (the message says which call refused and why)."""


@dataclass
class DemoLine:
    settings: Settings
    workdir: Path
    boards: int = 20
    takt: float = 1.0
    fast_polls: bool = False  # tests: poll devices every 50 ms instead of the shipped intervals
    run_no: str | None = None
    sns: list[str] = field(default_factory=list)
    base_url: str = ""
    runner: web.AppRunner | None = None
    app: web.Application | None = None
    sim: SimLine | None = None
    agent: Agent | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def start_central(self) -> None:
        self.app = create_app(self.settings)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base_url = f"http://{self.settings.http_host}:{port}/api"
        consumer = self.app[keys.MQTT]
        if consumer is not None:
            await asyncio.wait_for(consumer.connected.wait(), 15)

    @property
    def mqtt_url(self) -> str:
        assert self.app is not None
        return str(self.app[keys.STATE]["mqttUrl"])

    async def prepare_run(self) -> str:
        """WO for P-2001 on PCBA-AUTO-V1 → released to LINE-B → run → units → readiness → authorized."""
        self.run_no, self.sns = await prepare_line_b_run(self.base_url, self.boards)
        return self.run_no

    def sim_config(self) -> SimLineConfig:
        assert self.run_no is not None
        return line_b_sim_config(
            self.workdir / "sim-truth.jsonl",
            run_no=self.run_no,
            sns=self.sns,
            takt=self.takt,
            boards=self.boards,
        )

    async def start_line(self) -> None:
        """The simulated machines, then the edge agent polling them and forwarding to central's broker."""
        cfg = self.sim_config()
        self.sim = SimLine(cfg)
        await self.sim.start()
        section = edge_section(cfg, self.sim.endpoints())
        if self.fast_polls:
            for d in section["devices"]:
                d.update(poll_interval=0.05, reconnect_min=0.1, reconnect_max=0.5)
                if d["protocol"] == "opcua":
                    d.update(publishing_interval=0.05, watchdog_interval=0.3)
        edge_cfg = parse_config(
            {
                "edge_id": "edge-line-b",
                "line_code": "LINE-B",
                "outbox": {"path": str(self.workdir / "edge-line-b.outbox.db")},
                "mqtt": {"url": self.mqtt_url, "topic_prefix": self.settings.mqtt_topic_prefix},
                "forwarder": {"ack_timeout": 5.0, "status_interval": 5.0},
                **section,
            }
        )
        self.agent = Agent(edge_cfg)
        self._tasks.append(asyncio.create_task(self.agent.run(self._stop), name="demo-edge"))
        await asyncio.wait_for(self.agent.started.wait(), 30)
        self._tasks.append(asyncio.create_task(self.sim.run(self._stop), name="demo-sim"))

    async def run_view(self) -> dict[str, Any]:
        async with _session(self.base_url) as http:
            await _sign_in(http, *PLANNER)
            return await _call(http, "get", f"runs/{self.run_no}")

    async def trace(self, sn: str) -> dict[str, Any]:
        async with _session(self.base_url) as http:
            await _sign_in(http, *QUALITY)
            return await _call(http, "get", f"trace/units/{sn}", params={"mode": "run"})

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(t), 15)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sim is not None:
            await self.sim.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def prepare_line_b_run(
    base_url: str, boards: int, *, sn_prefix: str | None = None
) -> tuple[str, list[str]]:
    """An authorized run of P-2001 on PCBA-AUTO-V1 on LINE-B (the simulated line's run): `prepare_run`."""
    return await prepare_run(base_url, boards, sn_prefix=sn_prefix)


async def prepare_run(
    base_url: str,
    boards: int,
    *,
    sn_prefix: str | None = None,
    product: str = "P-2001",
    routing: str = "PCBA-AUTO-V1",
    line: str = "LINE-B",
) -> tuple[str, list[str]]:
    """Over REST, as a planner and a quality engineer would: a WO for `product` on `routing` → released to
    `line` → a run of `boards` units (SNs `sn_prefix` + 4 digits) → FORMAL readiness PASSED → authorized.
    Returns the run number and the units' SNs."""
    tag = line.rsplit("-", 1)[-1]
    async with _session(base_url) as http:
        await _sign_in(http, *PLANNER)
        wo = (await _call(http, "get", "work-orders", params={"search": f"WO-DEMO-{tag}"}))["items"]
        wo_no = f"WO-DEMO-{tag}-{len(wo) + 1:03d}"
        await _call(
            http,
            "post",
            "integration/work-orders",
            json={"woNo": wo_no, "productCode": product, "plannedQty": boards, "routingCode": routing},
        )
        await _call(http, "post", f"work-orders/{wo_no}/release", json={"lineCode": line})
        body = {"lineCode": line, "planQty": boards}
        run = await _call(http, "post", f"work-orders/{wo_no}/runs", json=body)
        run_no: str = run["runNo"]
        # PLC registers hold 32 characters of SN: a short prefix rather than the long run number.
        prefix = sn_prefix or f"SN-DEMO-{tag}{wo_no.rsplit('-', 1)[1]}-"
        sns: list[str] = []
        # At most 10,000 units per request; further requests continue the numbering.
        for start in range(0, boards, 10_000):
            body = {"quantity": min(10_000, boards - start), "snPrefix": prefix}
            generated = await _call(http, "post", f"runs/{run_no}/generate-units", json=body)
            sns += [u["sn"] for u in generated["units"]]
    async with _session(base_url) as http:
        await _sign_in(http, *QUALITY)
        check = await _call(http, "post", f"runs/{run_no}/readiness/check", json={})
        if check.get("status") != "PASSED":
            failed = [i for i in check.get("items", []) if i.get("status") == "FAILED"]
            raise DemoError(f"readiness of {run_no} is {check.get('status')}: {failed}")
    async with _session(base_url) as http:
        await _sign_in(http, *PLANNER)
        await _call(http, "post", f"runs/{run_no}/authorize", json={"action": "AUTHORIZE"})
    return run_no, sns


def line_b_sim_config(
    ground_truth: Path,
    *,
    run_no: str | None,
    sns: list[str],
    takt: float,
    boards: int,
    lot_size: int | None = None,
    buffer: int | None = None,
) -> SimLineConfig:
    """The shipped simulated LINE-B on free ports, making `boards` boards with these SNs at this takt
    (`buffer`: records each machine keeps, instead of the shipped 32/64)."""
    base = load_sim_config(SIM_EXAMPLE).model_dump(by_alias=True, exclude_none=True, mode="json")
    stations = [
        {
            **s,
            "port": 0,
            **({"lot_size": lot_size} if lot_size and s["kind"] == "reflow" else {}),
            **({"buffer": buffer} if buffer else {}),
        }
        for s in base["stations"]
    ]
    config = {**base, "takt": takt, "boards": boards, "sn": {"list": sns}, "ground_truth": str(ground_truth)}
    config["stations"] = stations
    config["run_no"] = run_no
    return SimLineConfig.model_validate(config)


async def _sign_in(http: aiohttp.ClientSession, email: str, password: str) -> None:
    await _call(http, "post", "auth/sign-in/email", json={"email": email, "password": password})


async def _call(http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    async with http.request(method, path, **kw) as r:
        body = await r.json(content_type=None)
        if r.status >= 300 or not isinstance(body, dict) or not body.get("ok"):
            raise DemoError(f"{method.upper()} /api/{path} → {r.status}: {body}")
        return body["data"]


def _session(base_url: str) -> aiohttp.ClientSession:
    # unsafe=True: accept the session cookie from an IP address host (127.0.0.1).
    return aiohttp.ClientSession(base_url=base_url + "/", cookie_jar=aiohttp.CookieJar(unsafe=True))
