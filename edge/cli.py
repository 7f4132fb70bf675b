"""mes-edge: run the edge agent, show its health, inspect the outbox, handle dead letters.

Exit codes: 0 success; 1 the command could not be done (unknown dead letter, no outbox, no room; for `status`:
running but degraded); 2 bad usage or configuration; 3 `status` only: the agent is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson

from edge.config import ENV_CONFIG, ConfigError, EdgeConfig, load_config
from edge.outbox import Outbox, OutboxError, OutboxStats

log = logging.getLogger("edge")


class UsageError(Exception):
    """The command line asks for something impossible (exit 2)."""


# A heartbeat older than this means the agent is gone (it writes one every second while it runs).
STALE_AFTER = 10.0


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


async def _with_outbox(cfg: EdgeConfig, fn: Callable[[Outbox], Awaitable[Any]]) -> Any:
    ob = await Outbox.open(
        cfg.outbox.path,
        edge_id=cfg.edge_id,
        max_events=cfg.outbox.max_events,
        max_bytes=cfg.outbox.max_bytes,
        create=False,
    )
    try:
        return await fn(ob)
    finally:
        await ob.close()


# ---- run ---------------------------------------------------------------------------------------------------


def cmd_run(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    from edge.agent import Agent

    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except (OutboxError, ConfigError) as exc:
        log.error("%s", exc)
        return 1
    except Exception:
        log.exception("the edge agent failed")
        return 1
    return 0


# ---- status ------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _agent_state(health: dict[str, Any] | None) -> tuple[str, float | None]:
    """RUNNING, STOPPED (stopped cleanly), DEAD (gone without stopping: killed, crashed) or NEVER_RAN."""
    if health is None:
        return "NEVER_RAN", None
    updated = datetime.fromisoformat(health["updatedAt"].replace("Z", "+00:00"))
    age = (datetime.now(UTC) - updated).total_seconds()
    if health.get("agent") == "STOPPED":
        return "STOPPED", age
    if age <= STALE_AFTER and _alive(int(health.get("pid", 0))):
        return "RUNNING", age
    return "DEAD", age


def cmd_status(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    async def read(ob: Outbox) -> tuple[OutboxStats, Any]:
        return await ob.stats(), await ob.get_meta("health")

    if not cfg.outbox.path.exists():
        # Not an error for a health probe: the agent has not started yet (or never will with this config).
        if args.json:
            _print_json({"edgeId": cfg.edge_id, "lineCode": cfg.line_code, "agent": {"state": "NEVER_RAN"}})
        else:
            print(f"edge {cfg.edge_id}: agent NEVER_RAN (no outbox at {cfg.outbox.path} yet)")
        return 3
    stats, raw = asyncio.run(_with_outbox(cfg, read))
    health = orjson.loads(raw) if raw else None
    state, age = _agent_state(health)
    mqtt = (health or {}).get("mqtt", {})
    status = (health or {}).get("status", {})
    connected = state == "RUNNING" and bool(mqtt.get("connected"))
    code = 3 if state != "RUNNING" else (0 if connected and not stats.full else 1)
    if args.json:
        _print_json(
            {
                "edgeId": cfg.edge_id,
                "lineCode": cfg.line_code,
                "agent": {"state": state, "pid": (health or {}).get("pid"), "heartbeatAgeSeconds": age},
                "outbox": asdict(stats),
                "mqtt": mqtt,
                "status": status,
            }
        )
        return code
    beat = f", last heartbeat {age:.1f} s ago" if age is not None else ""
    print(f"edge {cfg.edge_id} (line {cfg.line_code or '-'}): agent {state}{beat}")
    if status:
        print(f"  version {status.get('version')}, started {status.get('startedAt')}")
    link = "connected" if connected else f"not connected ({mqtt.get('lastError') or 'agent not running'})"
    print(f"  broker {cfg.mqtt.endpoint}: {link}")
    if mqtt.get("inflightBatch"):
        print(f"  in flight: batch {mqtt['inflightBatch']} ({mqtt['inflightEvents']} events)")
    if mqtt:
        print(
            f"  batches sent {mqtt.get('batchesSent')}, resends {mqtt.get('resends')}, "
            f"acks {mqtt.get('acks')}, last ack {mqtt.get('lastAckAt') or '-'}"
        )
    _print_outbox(cfg, stats)
    for d in status.get("devices", []):
        print(
            f"  device {d['id']}: {d['state']} (last ok {d.get('lastOkAt', '-')}) {d.get('lastError') or ''}"
        )
    for alarm in status.get("alarms", []):
        print(f"  ALARM {alarm}")
    return code


def _print_outbox(cfg: EdgeConfig, s: OutboxStats) -> None:
    full = "  FULL: new events are refused" if s.full else ""
    print(f"  outbox {cfg.outbox.path}{full}")
    print(
        f"    backlog {s.backlog} events ({_size(s.backlog_bytes)}) of max {s.max_events} "
        f"({_size(s.max_bytes)}), oldest pending {s.oldest_pending_at or '-'}"
    )
    print(f"    rate in {s.rate_in:.1f}/s, out {s.rate_out:.1f}/s; dead letters {s.dead_letters}")
    print(
        f"    totals: stored {s.appended_total}, delivered {s.delivered_total}, "
        f"dead-lettered {s.dead_lettered_total}"
    )


# ---- outbox stats ------------------------------------------------------------------------------------------


def cmd_outbox_stats(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    async def read(ob: Outbox) -> OutboxStats:
        await ob.stats()
        if args.interval > 0:  # rates are measured between two readings of the agent's counters
            await asyncio.sleep(args.interval)
        return await ob.stats()

    stats = asyncio.run(_with_outbox(cfg, read))
    if args.json:
        _print_json(asdict(stats))
    else:
        _print_outbox(cfg, stats)
    return 0


# ---- dead letters ------------------------------------------------------------------------------------------


def cmd_dead_list(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    rows = asyncio.run(_with_outbox(cfg, lambda ob: ob.dead_letters(args.limit)))
    if args.json:
        _print_json([{**asdict(r), "payload": orjson.loads(r.payload)} for r in rows])
        return 0
    if not rows:
        print("no dead letters")
        return 0
    print(f"{'id':>6}  {'seq':>8}  {'kind':<20} {'station':<16} {'code':<24} event / message")
    for r in rows:
        print(f"{r.id:>6}  {r.seq:>8}  {r.kind:<20} {r.station_code or '-':<16} {r.code:<24} {r.event_id}")
        print(f"{'':>6}  {'':>8}  dead since {r.dead_at} after {r.attempts} attempts: {r.message or ''}")
    return 0


def _targets(args: argparse.Namespace) -> list[int] | None:
    if args.all and args.ids:
        raise UsageError("give dead-letter ids or --all, not both")
    if not args.all and not args.ids:
        raise UsageError("give the dead-letter ids to act on, or --all")
    return None if args.all else args.ids


def cmd_dead_retry(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    ids = _targets(args)
    n = asyncio.run(_with_outbox(cfg, lambda ob: ob.retry_dead(ids)))
    print(f"re-queued {n} dead letter(s): the agent sends them with new seqs")
    return 0


def cmd_dead_drop(cfg: EdgeConfig, args: argparse.Namespace) -> int:
    ids = _targets(args)
    n = asyncio.run(_with_outbox(cfg, lambda ob: ob.drop_dead(ids)))
    print(f"dropped {n} dead letter(s)")
    return 0


# ---- parser ------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help=f"edge config TOML (default: ${ENV_CONFIG})")
    p = argparse.ArgumentParser(prog="mes-edge", description="The MES edge agent of one line.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run the agent in the foreground")
    run.set_defaults(fn=cmd_run)

    st = sub.add_parser("status", parents=[common], help="the agent's health (exit 0 ok, 1 degraded, 3 down)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    ob = sub.add_parser("outbox", help="the store-and-forward outbox").add_subparsers(
        dest="what", required=True
    )
    stats = ob.add_parser("stats", parents=[common], help="backlog, oldest pending, rates in/out")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds to measure the rates over")
    stats.set_defaults(fn=cmd_outbox_stats)

    dl = sub.add_parser("dead-letters", help="events central refused").add_subparsers(
        dest="what", required=True
    )
    ls = dl.add_parser("list", parents=[common], help="list dead letters")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--limit", type=int, default=1000)
    ls.set_defaults(fn=cmd_dead_list)
    for name, fn, what in (
        ("retry", cmd_dead_retry, "re-queue (after fixing the cause)"),
        ("drop", cmd_dead_drop, "delete for good"),
    ):
        cmd = dl.add_parser(name, parents=[common], help=f"{what} dead letters by id, or --all")
        cmd.add_argument("ids", nargs="*", type=int, metavar="ID")
        cmd.add_argument("--all", action="store_true")
        cmd.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"mes-edge: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.fn(cfg, args))
    except UsageError as exc:
        print(f"mes-edge: {exc}", file=sys.stderr)
        return 2
    except OutboxError as exc:
        print(f"mes-edge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
