"""`mes-sim` as a program: runs a line for N boards, prints the edge config, refuses a bad config."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

CONFIG = Path(__file__).parents[2] / "config"


def mes_sim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.sim.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_line_runs_n_boards_and_writes_the_ground_truth(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(
        """
[line]
takt = 0.05
run_no = "RUN-X"
[sn]
list = ["SN-A", "SN-B", "SN-C"]
[[stations]]
code = "ST-B-PRINT-01"
kind = "print"
[[stations]]
code = "ST-B-REFLOW-01"
kind = "reflow"
lot_size = 2
""",
        "utf-8",
    )
    truth = tmp_path / "truth.jsonl"
    res = mes_sim("line", "--config", str(cfg), "--boards", "3", "--ground-truth", str(truth))
    assert res.returncode == 0, res.stderr
    assert "ST-B-PRINT-01" in res.stdout and "3 boards fed, 3 done, 0 failed" in res.stdout
    lines = [json.loads(x) for x in truth.read_text("utf-8").splitlines()]
    records = [x for x in lines if x["type"] == "record"]
    assert [r["sn"] for r in records if r["station"] == "ST-B-PRINT-01"] == ["SN-A", "SN-B", "SN-C"]
    assert [r["snList"] for r in records if r["station"] == "ST-B-REFLOW-01"] == [["SN-A", "SN-B"], ["SN-C"]]
    assert lines[-1] == {**lines[-1], "type": "summary", "fed": 3, "done": 3, "failed": 0}


def test_sn_prefix_and_start_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(
        '[line]\ntakt = 0.05\n[sn]\nlist = ["X"]\n[[stations]]\ncode = "P"\nkind = "print"\n', "utf-8"
    )
    truth = tmp_path / "t.jsonl"
    res = mes_sim(
        "line", "--config", str(cfg), "--boards", "2", "--sn-prefix", "SN-RUN-9-", "--sn-start", "7",
        "--ground-truth", str(truth),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in truth.read_text("utf-8").splitlines()]
    assert [x["sn"] for x in lines if x["type"] == "record"] == ["SN-RUN-9-0007", "SN-RUN-9-0008"]


def test_edge_config_prints_the_shipped_devices_and_rules() -> None:
    res = mes_sim("edge-config", "--config", str(CONFIG / "sim-line-b.example.toml"))
    assert res.returncode == 0, res.stderr
    shipped = tomllib.loads((CONFIG / "edge-line-b.devices.example.toml").read_text("utf-8"))
    assert tomllib.loads(res.stdout) == shipped


def test_a_bad_config_is_refused_with_the_field_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sn]\nprefix = "S-"\n[[stations]]\ncode = "P"\nkind = "print"\nbuffer = 99999\n', "utf-8")
    res = mes_sim("line", "--config", str(cfg))
    assert res.returncode == 2
    assert "stations.0: Value error, buffer: at most 2041 records" in res.stderr
