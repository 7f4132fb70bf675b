"""mes-sim: the simulated automated line (edge.md "Simulators").

mes-sim line --config FILE [--boards N] [--takt S] [--sn-prefix P] [--sn-start N] [--run-no R]
             [--ground-truth PATH]
mes-sim edge-config --config FILE      print the edge agent's devices/rules for that line (TOML)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from edge.sim.config import SimConfigError, SimLineConfig, load_sim_config
from edge.sim.edge_map import edge_section, to_toml
from edge.sim.line import SimLine


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mes-sim", description="Simulated SMT line for the MES edge agent")
    sub = p.add_subparsers(dest="command", required=True)
    line = sub.add_parser("line", help="run the simulated line (PLCs over Modbus TCP, testers over OPC UA)")
    line.add_argument("--config", required=True, type=Path)
    line.add_argument("--boards", type=int, help="boards to produce, then exit (0 = until Ctrl-C)")
    line.add_argument("--takt", type=float, help="seconds per board per station")
    line.add_argument("--sn-prefix", help="SN prefix (central's generate-units default is SN-<runNo>-)")
    line.add_argument("--sn-start", type=int, help="number of the first SN")
    line.add_argument("--run-no", help="run number written into tester records")
    line.add_argument("--ground-truth", type=Path, help="JSON-lines log of every record made")
    line.add_argument("-v", "--verbose", action="store_true")
    edge = sub.add_parser("edge-config", help="print the edge agent's [[devices]]/[[rules]] for the line")
    edge.add_argument("--config", required=True, type=Path)
    return p


def _overridden(cfg: SimLineConfig, args: argparse.Namespace) -> SimLineConfig:
    line: dict[str, Any] = {}
    if args.boards is not None:
        line["boards"] = args.boards
    if args.takt is not None:
        line["takt"] = args.takt
    if args.run_no is not None:
        line["run_no"] = args.run_no
    if args.ground_truth is not None:
        line["ground_truth"] = args.ground_truth
    sn = cfg.sn.model_dump(by_alias=True, exclude_none=True)
    if args.sn_prefix is not None:
        sn = {**{k: v for k, v in sn.items() if k != "list"}, "prefix": args.sn_prefix}
    if args.sn_start is not None:
        sn["start"] = args.sn_start
    data = cfg.model_dump(by_alias=True, exclude_none=True)
    return SimLineConfig.model_validate({**data, **line, "sn": sn})


async def _progress(line: SimLine, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        per = {}
        for r in line.records():
            per[r["station"]] = per.get(r["station"], 0) + 1
        counts = " ".join(f"{k}={v}" for k, v in per.items())
        print(
            f"boards fed={line.fed} done={len(line.done_boards)} failed={len(line.failed_boards)} | {counts}",
            flush=True,
        )


async def run_line(cfg: SimLineConfig) -> int:
    line = SimLine(cfg)
    print(f"mes-sim: starting {len(cfg.stations)} machines of {cfg.code} (takt {cfg.takt} s)", flush=True)
    await line.start()
    for code, ep in line.endpoints().items():
        print(f"  {code:<16} {ep}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    progress = asyncio.create_task(_progress(line, max(5.0, cfg.takt)))
    try:
        await line.run(stop)
    finally:
        progress.cancel()
        summary = line.summary()
        await line.close()
    print(
        f"mes-sim: {summary['fed']} boards fed, {summary['done']} done, {summary['failed']} failed",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_sim_config(args.config)
        if args.command == "edge-config":
            print(to_toml(edge_section(cfg)), end="")
            return 0
        cfg = _overridden(cfg, args)
    except SimConfigError as exc:
        print(f"mes-sim: invalid config {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # an override that does not validate
        print(f"mes-sim: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s"
    )
    if not args.verbose:
        # asyncua warns at every server start about endpoints a simulator deliberately leaves unsecured.
        logging.getLogger("asyncua").setLevel(logging.ERROR)
    return asyncio.run(run_line(cfg))


if __name__ == "__main__":
    sys.exit(main())
