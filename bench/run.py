"""`make bench` (and `make bench QUICK=1`): every benchmark program of bench/, one table
`target | metric | value | ceiling | ratio | goal | result`, and bench/results/latest.json.

Each program measures its own ceiling in the same run on the same machine (bench/common.py). A program that
fails is reported as such in the table and the run goes on: one broken benchmark must not hide the others.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import Row, context, table

RESULTS = Path(__file__).parent / "results" / "latest.json"
PROGRAMS = ["p1_ingest", "p2_interlock", "p3_backlog", "p4_edge", "p5_trace", "p6_growth"]


def _machine() -> dict[str, Any]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory": mem,
        "load_before": os.getloadavg(),
    }


async def main(quick: bool, only: list[str]) -> int:
    rows: list[Row] = []
    timings: dict[str, float] = {}
    machine = _machine()
    started = time.perf_counter()
    async with context(quick) as ctx:
        for name in only or PROGRAMS:
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"bench.{name}")
                rows += await module.run(ctx)
            except Exception as exc:  # one broken program must not hide the others' figures
                traceback.print_exc()
                what = f"{name} did not finish: {type(exc).__name__}"
                rows.append(Row(name[:2].upper(), what, None, "", note=str(exc)[:200]))
            timings[name] = time.perf_counter() - t0
            print(f"{name}: {timings[name]:.1f} s", flush=True)
        notes = ctx.notes
    total = time.perf_counter() - started
    print()
    print("\n".join(notes))
    print(table(rows))
    print(f"\n{len(rows)} rows in {total:.0f} s ({'quick' if quick else 'full'})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "quick": quick,
                "machine": machine,
                "services": notes,
                "seconds": round(total, 1),
                "programSeconds": {k: round(v, 1) for k, v in timings.items()},
                "rows": [r.as_dict() for r in rows],
            },
            indent=2,
            default=str,
        )
    )
    print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="reduced sizes: the whole run in under 60 s")
    p.add_argument("programs", nargs="*", help=f"a subset of {', '.join(PROGRAMS)}")
    args = p.parse_args()
    raise SystemExit(asyncio.run(main(args.quick, args.programs)))
