"""`mes-edge` as an operator runs it: real processes, a real broker, signals, and a test acker for central."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from edge.cli import main
from edge.outbox import NewEvent, Outbox
from shared.events import EventBatch
from tests.brokers import Broker
from tests.edge_acker import Acker, Decision, StatusWatcher

ROOT = Path(__file__).resolve().parents[2]
EDGE = "edge-t"


def write_config(tmp_path: Path, broker_url: str, **outbox: Any) -> Path:
    bounds = "".join(f"{k} = {v}\n" for k, v in outbox.items())
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
edge_id = "{EDGE}"
line_code = "LINE-B"

[outbox]
path = "state/outbox.db"
{bounds}
[mqtt]
url = "{broker_url}"
keepalive = 5

[forwarder]
ack_timeout = 0.5
reconnect_min = 0.05
reconnect_max = 0.3
retry_min = 0.05
retry_max = 0.2
"""
    )
    return path


def cli(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    extra = ["--config", str(config)] if config else []
    env = {k: v for k, v in os.environ.items() if k != "MES_EDGE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Output:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Output]:
    """The same entry point in this process (much faster than a new interpreter per command)."""
    monkeypatch.delenv("MES_EDGE_CONFIG", raising=False)

    def run(config: Path | None, *args: str) -> Output:
        capsys.readouterr()
        code = main([*args, *(["--config", str(config)] if config else [])])
        out = capsys.readouterr()
        return Output(code, out.out, out.err)

    return run


def status(config: Path) -> tuple[int, dict[str, Any]]:
    r = cli(config, "status", "--json")
    assert r.returncode in (0, 1, 3) and r.stdout, r.stderr
    return r.returncode, orjson.loads(r.stdout)


def wait_for(cond: Callable[[], Any], within: float = 30.0, what: str = "condition") -> Any:
    """Polls with a deadline (never a fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def store(config: Path, events: list[NewEvent]) -> None:
    """Appends from this test process, like another writer: a second connection to the agent's outbox."""

    async def go() -> None:
        ob = await Outbox.open(
            config.parent / "state" / "outbox.db", edge_id=EDGE, max_events=10**6, max_bytes=1 << 30
        )
        try:
            assert await ob.append(events)
        finally:
            await ob.close()

    asyncio.run(go())


def events(n: int, prefix: str = "e", start: int = 0) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        NewEvent(
            f"{prefix}{i}", "INGEST", now, "ST-B-PRINT-01", {"eventType": "AUTO", "payload": {"sn": f"SN{i}"}}
        )
        for i in range(start, start + n)
    ]


class AgentProcess:
    def __init__(self, config: Path) -> None:
        self.log = open(config.parent / "agent.log", "a")  # kept open for the process's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if not self.log.closed:
            self.log.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.kill()


def running_and_connected(config: Path) -> bool:
    code, st = status(config)
    return code == 0 and st["agent"]["state"] == "RUNNING" and bool(st["mqtt"]["connected"])


# ---- run, status, signals ----------------------------------------------------------------------------------


def test_run_forwards_events_reports_health_and_says_offline_on_sigterm(
    tmp_path: Path, broker: Broker
) -> None:
    acker = Acker(broker, EDGE).start()
    watcher = StatusWatcher(broker)
    config = write_config(tmp_path, broker.url)
    agent = AgentProcess(config)
    try:
        wait_for(lambda: running_and_connected(config), what="the agent to connect")
        store(config, events(300))  # stored by another process: the agent finds them within a second
        wait_for(lambda: len(acker.accepted) == 300, what="delivery")

        def settled() -> tuple[int, dict[str, Any]] | None:
            s = status(config)  # the agent refreshes its health record every second
            return s if s[1]["outbox"]["backlog"] == 0 and s[1]["mqtt"]["acks"] >= 1 else None

        code, st = wait_for(settled, what="backlog 0")
        assert code == 0
        assert st["edgeId"] == EDGE and st["lineCode"] == "LINE-B"
        assert st["outbox"]["delivered_total"] == 300 and st["outbox"]["dead_letters"] == 0
        assert st["mqtt"]["broker"] == broker.url and st["mqtt"]["inflightBatch"] is None
        assert st["status"]["state"] == "ONLINE" and st["agent"]["pid"] == agent.proc.pid
        text = cli(config, "status")
        assert text.returncode == 0 and "agent RUNNING" in text.stdout and "connected" in text.stdout
        wait_for(lambda: watcher.messages and watcher.messages[-1].state == "ONLINE", what="ONLINE status")

        assert agent.signal(signal.SIGTERM) == 0
        wait_for(lambda: watcher.messages[-1].state == "OFFLINE", what="OFFLINE status")
        code, st = status(config)
        assert code == 3 and st["agent"]["state"] == "STOPPED"
    finally:
        agent.ensure_dead()
        watcher.stop()
        acker.stop()


def test_sigkill_leaves_the_will_and_a_restart_delivers_every_stored_event_once(
    tmp_path: Path, broker: Broker
) -> None:
    acker = Acker(broker, EDGE, delay=0.05).start()
    watcher = StatusWatcher(broker)
    config = write_config(tmp_path, broker.url)
    store(config, events(3000))  # a backlog before the agent even starts
    agent = AgentProcess(config)
    try:
        wait_for(lambda: len(acker.received) >= 2, what="forwarding to start")
        assert agent.signal(signal.SIGKILL) == -signal.SIGKILL  # mid-batch
        # The broker publishes the will: central learns the edge is gone.
        wait_for(lambda: watcher.messages and watcher.messages[-1].state == "OFFLINE", what="the will")
        code, st = status(config)
        assert code == 3 and st["agent"]["state"] == "DEAD"
        assert 0 < st["outbox"]["backlog"] < 3000

        agent = AgentProcess(config)
        wait_for(lambda: len(acker.applied) == 3000, within=60, what="everything delivered")
        wait_for(lambda: status(config)[1]["outbox"]["backlog"] == 0, what="the outbox to empty")
        assert set(acker.accepted.values()) == {1}  # exactly once, as central's dedupe sees it
        assert watcher.messages[-1].state == "ONLINE"
        assert agent.signal(signal.SIGTERM) == 0
    finally:
        agent.ensure_dead()
        watcher.stop()
        acker.stop()


def test_a_rejected_event_is_delivered_by_dead_letters_retry_once_fixed(
    tmp_path: Path, broker: Broker
) -> None:
    known = {"SN-LATE": False}

    def central(batch: EventBatch, attempt: int, applied: dict[str, int]) -> dict[str, Decision]:
        return {
            e.event_id: ("REJECTED", "UNIT_NOT_FOUND", "unit SN-LATE not found")
            for e in batch.events
            if e.payload["payload"]["sn"] == "SN-LATE" and not known["SN-LATE"]
        }

    acker = Acker(broker, EDGE, script=central).start()
    config = write_config(tmp_path, broker.url)
    late = NewEvent(
        "late",
        "INGEST",
        datetime.now(UTC),
        "ST-B-PRINT-01",
        {"eventType": "AUTO", "payload": {"sn": "SN-LATE"}},
    )
    agent = AgentProcess(config)
    try:
        wait_for(lambda: running_and_connected(config), what="the agent to connect")
        store(config, [*events(5), late])
        wait_for(lambda: status(config)[1]["outbox"]["dead_letters"] == 1, what="the dead letter")
        assert len(acker.accepted) == 5  # the rest of the batch went through
        listed = cli(config, "dead-letters", "list", "--json")
        (dl,) = orjson.loads(listed.stdout)
        assert (dl["event_id"], dl["code"], dl["message"]) == (
            "late",
            "UNIT_NOT_FOUND",
            "unit SN-LATE not found",
        )
        assert dl["payload"] == {"eventType": "AUTO", "payload": {"sn": "SN-LATE"}}

        known["SN-LATE"] = True  # the engineer generates the unit at central…
        retried = cli(config, "dead-letters", "retry", str(dl["id"]))  # …and re-queues, agent running
        assert retried.returncode == 0 and "re-queued 1" in retried.stdout
        wait_for(lambda: acker.accepted["late"] == 1, what="the retried event")
        _, st = wait_for(lambda: (s := status(config)) and s[1]["outbox"]["backlog"] == 0 and s, what="empty")
        assert st["outbox"]["dead_letters"] == 0
        assert agent.signal(signal.SIGTERM) == 0
    finally:
        agent.ensure_dead()
        acker.stop()


# ---- outbox and dead letters without an agent --------------------------------------------------------------


def test_outbox_stats_and_dead_letter_commands(tmp_path: Path, run_cli: Callable[..., Output]) -> None:
    config = write_config(tmp_path, "mqtt://127.0.0.1:1", max_events=10)
    r = run_cli(config, "outbox", "stats")
    assert r.returncode == 1 and "no outbox at" in r.stderr
    never = run_cli(config, "status")  # a health probe before the agent's first start
    assert never.returncode == 3 and "NEVER_RAN" in never.stdout
    assert not (tmp_path / "state" / "outbox.db").exists()  # nothing created by a read

    async def prepare() -> None:
        ob = await Outbox.open(
            tmp_path / "state" / "outbox.db", edge_id=EDGE, max_events=10, max_bytes=1 << 20
        )
        try:
            await ob.append(events(6))
            rows = await ob.head(10)
            await ob.settle(
                delivered=[rows[0].seq],
                dead=[
                    (rows[1].seq, "UNIT_NOT_FOUND", "no SN1"),
                    (rows[2].seq, "STATION_MISMATCH", "wrong station"),
                ],
            )
        finally:
            await ob.close()

    asyncio.run(prepare())

    r = run_cli(config, "outbox", "stats", "--json", "--interval", "0")
    assert r.returncode == 0, r.stderr
    st = orjson.loads(r.stdout)
    assert (st["backlog"], st["dead_letters"], st["delivered_total"], st["max_events"]) == (3, 2, 1, 10)
    assert st["oldest_pending_at"].endswith("Z") and st["full"] is False
    text = run_cli(config, "outbox", "stats", "--interval", "0")
    assert "backlog 3 events" in text.stdout and "dead letters 2" in text.stdout

    r = run_cli(config, "status", "--json")
    health = orjson.loads(r.stdout)
    assert r.returncode == 3 and health["agent"]["state"] == "NEVER_RAN" and health["outbox"]["backlog"] == 3

    listed = orjson.loads(run_cli(config, "dead-letters", "list", "--json").stdout)
    assert [(d["event_id"], d["code"]) for d in listed] == [
        ("e1", "UNIT_NOT_FOUND"),
        ("e2", "STATION_MISMATCH"),
    ]
    assert "UNIT_NOT_FOUND" in run_cli(config, "dead-letters", "list").stdout

    missing = run_cli(config, "dead-letters", "retry", "999")
    assert missing.returncode == 1 and "no dead letter with id 999" in missing.stderr
    assert run_cli(config, "dead-letters", "retry").returncode == 2  # ids or --all
    both = run_cli(config, "dead-letters", "drop", "--all", str(listed[0]["id"]))
    assert both.returncode == 2 and "not both" in both.stderr

    retried = run_cli(config, "dead-letters", "retry", str(listed[0]["id"]))
    assert retried.returncode == 0 and "re-queued 1" in retried.stdout
    st = orjson.loads(run_cli(config, "outbox", "stats", "--json", "--interval", "0").stdout)
    assert (st["backlog"], st["dead_letters"]) == (4, 1)
    dropped = run_cli(config, "dead-letters", "drop", "--all")
    assert dropped.returncode == 0 and "dropped 1" in dropped.stdout
    assert run_cli(config, "dead-letters", "list").stdout.strip() == "no dead letters"


def test_bad_configuration_is_refused_with_every_field_path(
    tmp_path: Path, run_cli: Callable[..., Output]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
edge_id = "edge/with/slashes"
surprise = 1

[outbox]
path = "o.db"
max_events = 0

[mqtt]
url = "mqtt://broker:1883"
ca_file = "ca.pem"

[forwarder]
batch_max_events = 501
batch_max_bytes = 300000
"""
    )
    r = run_cli(bad, "run")
    assert r.returncode == 2
    for path in (
        "edge_id",
        "surprise: unknown key",
        "outbox.max_events",
        "mqtt.ca_file",
        "forwarder.batch_max_events",
        "forwarder.batch_max_bytes",
    ):
        assert path in r.stderr, (path, r.stderr)
    tls = tmp_path / "tls.toml"
    tls.write_text('edge_id = "e"\n[outbox]\npath = "o.db"\n[mqtt]\nurl = "mqtt://b"\nca_file = "ca.pem"\n')
    (tmp_path / "ca.pem").write_text("x")
    r = run_cli(tls, "run")
    assert r.returncode == 2 and "mqtt.ca_file: TLS settings need an mqtts:// url" in r.stderr
    assert run_cli(tmp_path / "none.toml", "status").returncode == 2
    no_config = run_cli(None, "status")
    assert no_config.returncode == 2 and "--config" in no_config.stderr
