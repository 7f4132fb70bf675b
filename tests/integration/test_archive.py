"""`mes-central archive` (issue 10, docs/RETENTION.md): closed runs older than the cut-off leave the database
for one gzip JSON-lines file each; open, recent or still-referenced runs stay; reruns after a crash finish.

Runs are produced through the real services over HTTP (manual track-in/out with a data value, a defect
scrapped by disposition, a BATCH ingest with carrier, loads and carrier data values); only the runs' end
times are moved back with an UPDATE instead of waiting."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from central.db.base import Base
from central.db.engine import Database
from central.db.models import (
    AuditEvent,
    CarrierLoad,
    CarrierTrack,
    DataValue,
    Defect,
    Disposition,
    EdgeEventReceipt,
    IngestEvent,
    Inspection,
    IntegrationMessage,
    MesEvent,
    ReadinessCheck,
    ReadinessCheckItem,
    Run,
    Track,
    Unit,
)
from central.domain.clock import utcnow
from central.services.archive import archive_path, archive_runs, closure, purge_receipts
from central.services.archive_file import iter_rows, read_archive, sha256_of
from tests.client import Api
from tests.flows import EN, PL, SMT_STATIONS, Q, authorized_run, move, released_run, seed
from tests.ingest_helpers import A, batch_event, ing_run

ROOT = Path(__file__).resolve().parents[2]
OLD = timedelta(days=400)


@pytest.fixture
async def demo(api: Api, database: Database) -> Api:
    await seed(database)
    return api


async def manual_run(api: Api, database: Database) -> dict[str, Any]:
    """LINE-A, two units: the second FAILs at PRINT (defect) and is scrapped, the first passes all five steps
    with PEAK_TEMP at REFLOW → the run completes by itself."""
    spec = await api.post(
        "/data-collection-specs",
        EN,
        json={"operationCode": "REFLOW", "name": "PEAK_TEMP", "dataType": "NUMBER", "spec": {"unit": "C"}},
    )
    assert spec.status in (201, 409), spec.body
    flow = await authorized_run(api, database, qty=2)
    good, bad = flow["sns"]
    r = await move(api, SMT_STATIONS[0], bad, flow, "FAIL", defectCode="BRIDGE", defectLocation="U1")
    assert r.status == 200 and r.data["status"] == "OUT_FAILED", r.body
    d = await api.post(
        f"/defects/{r.data['defectId']}/disposition", Q, json={"type": "SCRAP", "reason": "burnt"}
    )
    assert d.status == 200, d.body
    for station in SMT_STATIONS:
        extra = {"data": [{"specName": "PEAK_TEMP", "valueNumber": 245}]} if station == "ST-REFLOW-01" else {}
        assert (await move(api, station, good, flow, **extra)).status == 200
    assert (await api.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "COMPLETED"
    return flow


async def batch_run(api: Api) -> dict[str, Any]:
    """LINE-ING, one BATCH step: one carrier event moves both units to DONE → COMPLETED."""
    flow = await ing_run(api, "BATCH", qty=2)
    r = await api.post("/ingest/events", A, json=batch_event(flow, flow["sns"]))
    assert r.status == 200, r.body
    assert (await api.get(f"/runs/{flow['runNo']}", PL)).data["status"] == "COMPLETED"
    return flow


async def age(database: Database, run_no: str, by: timedelta = OLD, status: str | None = None) -> None:
    values: dict[str, Any] = {"ended_at": utcnow() - by}
    if status:
        values["status"] = status
    async with database.writer() as s, s.begin():
        await s.execute(update(Run).where(Run.run_no == run_no).values(**values))


async def ids(database: Database, run_no: str) -> dict[str, set[int]]:
    """The run's rows, table by table, found with plain queries (independent of the archive's closure)."""
    async with database.reader() as s:

        async def q(stmt: Any) -> set[int]:
            return set((await s.scalars(stmt)).all())

        run = await q(select(Run.id).where(Run.run_no == run_no))
        units = await q(select(Unit.id).where(Unit.run_id.in_(run)))
        tracks = await q(select(Track.id).where(Track.unit_id.in_(units)))
        ctracks = await q(select(CarrierTrack.id).where(CarrierTrack.run_id.in_(run)))
        defects = await q(select(Defect.id).where(Defect.unit_id.in_(units)))
        checks = await q(select(ReadinessCheck.id).where(ReadinessCheck.run_id.in_(run)))
        out = {
            "runs": run,
            "units": units,
            "tracks": tracks,
            "carrier_tracks": ctracks,
            "carrier_loads": await q(select(CarrierLoad.id).where(CarrierLoad.unit_id.in_(units))),
            "data_values": await q(
                select(DataValue.id).where(
                    (DataValue.track_id.in_(tracks)) | (DataValue.carrier_track_id.in_(ctracks))
                )
            ),
            "ingest_events": await q(select(IngestEvent.id).where(IngestEvent.run_id.in_(run))),
            "defects": defects,
            "dispositions": await q(select(Disposition.id).where(Disposition.defect_id.in_(defects))),
            "inspections": await q(select(Inspection.id).where(Inspection.run_id.in_(run))),
            "readiness_checks": checks,
            "readiness_check_items": await q(
                select(ReadinessCheckItem.id).where(ReadinessCheckItem.check_id.in_(checks))
            ),
            "mes_events": await q(select(MesEvent.id).where(MesEvent.run_id.in_(run))),
        }
    return {t: v for t, v in out.items() if v}


def file_ids(path: Path) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for table, row in iter_rows(path):
        out.setdefault(table, set()).add(int(row["id"]))
    return out


async def still_there(database: Database, before: dict[str, set[int]]) -> dict[str, int]:
    """How many of the given rows the database still holds, per table."""
    tables = Base.metadata.tables
    async with database.reader() as s:
        return {
            t: int(await s.scalar(select(func.count()).where(tables[t].c.id.in_(v))) or 0)
            for t, v in before.items()
        }


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MES_")}


def cli_args(db_url: str, tmp_path: Path) -> list[str]:
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'database_url = "{db_url}"\narchive_after_days = 30\nlog_level = "WARNING"\n')
    return [str(Path(sys.executable).with_name("mes-central")), "--config", str(cfg)]


async def run_cli(args: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, env=cli_env(), cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return int(proc.returncode or 0), out.decode(), err.decode()


def path_of(out: Path, run_no: str) -> Path:
    found = list(out.glob(f"*/{run_no}.jsonl.gz"))
    assert len(found) == 1, found
    return found[0]


# ---- the behaviour ---------------------------------------------------------------------------------------


async def test_closed_old_run_is_archived_and_leaves_the_database(
    demo: Api, database: Database, tmp_path: Path
) -> None:
    manual = await manual_run(demo, database)
    batch = await batch_run(demo)
    recent = await batch_run(demo)  # closed but young
    open_run = await released_run(demo)  # PREP
    for flow in (manual, batch):
        await age(database, flow["runNo"])
    await age(database, open_run["runNo"])  # old but not closed
    rows = {f["runNo"]: await ids(database, f["runNo"]) for f in (manual, batch, recent, open_run)}
    # The archive must cover what the flows produced, or it would test little.
    assert {"tracks", "data_values", "defects", "dispositions", "inspections", "mes_events"} <= set(
        rows[manual["runNo"]]
    )
    assert {"carrier_tracks", "carrier_loads", "ingest_events", "readiness_check_items"} <= set(
        rows[batch["runNo"]]
    )

    out = tmp_path / "archive"
    report = await archive_runs(database, older_than_days=30, out_dir=out)

    assert [(o.run_no, o.status) for o in report.outcomes] == [
        (manual["runNo"], "ARCHIVED"),
        (batch["runNo"], "ARCHIVED"),
    ]
    year = str((utcnow() - OLD).year)
    for flow in (manual, batch):
        run_no = flow["runNo"]
        path = out / year / f"{run_no}.jsonl.gz"
        assert path.is_file() and not list(path.parent.glob("*.tmp-*"))
        in_file = file_ids(path)
        audit_copy = in_file.pop("audit_events")
        assert in_file == rows[run_no]  # every row, nothing else
        assert await still_there(database, rows[run_no]) == {t: 0 for t in rows[run_no]}
        contents = read_archive(path)
        assert contents.complete and contents.header["runNo"] == run_no
        outcome = next(o for o in report.outcomes if o.run_no == run_no)
        assert outcome.rows == {t: len(v) for t, v in rows[run_no].items()}
        # RUN_ARCHIVE audit row names the file and its sha256; the entities' own audit rows were copied.
        async with database.reader() as s:
            audit = (
                await s.scalars(
                    select(AuditEvent).where(
                        AuditEvent.action == "RUN_ARCHIVE", AuditEvent.entity_display == run_no
                    )
                )
            ).one()
            kept = await s.scalar(select(func.count()).where(AuditEvent.id.in_(audit_copy)))
        assert audit.entity_type == "RUN" and audit.status == "SUCCESS"
        assert audit.payload["file"] == str(path) and audit.payload["sha256"] == sha256_of(path)
        assert audit.payload["rows"] == outcome.rows and audit_copy and kept == len(audit_copy)
        # Reads now answer not found: the archive file is the record.
        r = await demo.get(f"/runs/{run_no}", Q)
        assert (r.status, r.code) == (404, "RUN_NOT_FOUND")
        for sn in flow["sns"]:
            t = await demo.get(f"/trace/units/{sn}", Q)
            assert (t.status, t.code) == (404, "UNIT_NOT_FOUND")
        sns = {row["sn"] for _t, row in iter_rows(path, "units")}
        assert sns == set(flow["sns"])
    with gzip.open(path_of(out, manual["runNo"]), "rt") as f:
        values = [json.loads(x)["row"] for x in f if '"table":"data_values"' in x]
    assert [v["value_number"] for v in values] == [245.0]

    for flow in (recent, open_run):  # kept, untouched
        assert await still_there(database, rows[flow["runNo"]]) == {
            t: len(v) for t, v in rows[flow["runNo"]].items()
        }
        assert not list(out.glob(f"*/{flow['runNo']}.jsonl.gz"))
    assert report.rows["data_values"] == len(rows[manual["runNo"]]["data_values"]) + len(
        rows[batch["runNo"]]["data_values"]
    )
    assert report.bytes == sum(p.stat().st_size for p in out.glob("*/*.jsonl.gz"))


async def test_dry_run_changes_nothing(demo: Api, database: Database, tmp_path: Path) -> None:
    flow = await batch_run(demo)
    await age(database, flow["runNo"])
    before = await ids(database, flow["runNo"])
    report = await archive_runs(database, older_than_days=30, out_dir=tmp_path / "a", dry_run=True)
    assert [(o.run_no, o.status) for o in report.outcomes] == [(flow["runNo"], "WOULD_ARCHIVE")]
    assert report.outcomes[0].rows == {t: len(v) for t, v in before.items()}
    assert not (tmp_path / "a").exists()
    assert await still_there(database, before) == {t: len(v) for t, v in before.items()}
    async with database.reader() as s:
        assert not await s.scalar(select(func.count()).where(AuditEvent.action == "RUN_ARCHIVE"))


async def test_rerun_after_crash_between_file_and_delete_completes(
    demo: Api, database: Database, db_url: str, tmp_path: Path
) -> None:
    """A real crash: `mes-central archive` runs as a process while the test holds the run's row lock, so
    the process publishes the file and then waits for its delete transaction; it is killed (SIGKILL) there.
    The rerun finds the complete file matching the rows still in the database and finishes the delete."""
    flow = await batch_run(demo)
    await age(database, flow["runNo"])
    before = await ids(database, flow["runNo"])
    out = tmp_path / "archive"
    async with database.writer() as s, s.begin():
        # SQLite: BEGIN IMMEDIATE holds the write lock; PostgreSQL: the row lock the delete step waits for.
        await s.execute(select(Run.id).where(Run.run_no == flow["runNo"]).with_for_update())
        proc = await asyncio.create_subprocess_exec(
            *cli_args(db_url, tmp_path),
            *("archive", "--older-than", "30", "--out", str(out)),
            env=cli_env(),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while not list(out.glob(f"*/{flow['runNo']}.jsonl.gz")):
                assert proc.returncode is None, (await proc.communicate())[0]
                assert time.monotonic() < deadline, "the archive file never appeared"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # let it reach the delete transaction
            assert proc.returncode is None
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    path = path_of(out, flow["runNo"])
    first_sha = sha256_of(path)
    assert read_archive(path).complete
    assert await still_there(database, before) == {t: len(v) for t, v in before.items()}

    report = await archive_runs(database, older_than_days=30, out_dir=out)
    assert [(o.status, o.reason) for o in report.outcomes] == [("ARCHIVED", "RESUMED")]
    assert sha256_of(path) == first_sha  # the file was used, not rewritten
    assert report.outcomes[0].sha256 == first_sha
    assert await still_there(database, before) == {t: 0 for t in before}


async def test_existing_differing_file_is_refused_and_kept(
    demo: Api, database: Database, tmp_path: Path
) -> None:
    flow = await batch_run(demo)
    await age(database, flow["runNo"])
    out = tmp_path / "archive"
    async with database.reader() as s:
        run = (await s.execute(select(Run).where(Run.run_no == flow["runNo"]))).scalar_one()
    path = archive_path(out, run)
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b'{"kind":"header","runNo":"someone else"}\n'))
    original = path.read_bytes()
    before = await ids(database, flow["runNo"])

    report = await archive_runs(database, older_than_days=30, out_dir=out)
    assert [(o.status, o.reason) for o in report.outcomes] == [("REFUSED", "ARCHIVE_FILE_DIFFERS")]
    assert report.integrity_problem
    assert path.read_bytes() == original
    assert await still_there(database, before) == {t: len(v) for t, v in before.items()}


async def test_open_work_keeps_a_closed_run(demo: Api, database: Database, tmp_path: Path) -> None:
    """An unclosed defect of a unit that was not scrapped, or a rework run still open, keeps the run; once
    the rework run is closed too, both go in one invocation, the rework run first. --limit caps the runs."""
    parent = await batch_run(demo)
    child = await released_run(demo)  # stands in for the MRB rework run (PREP)
    async with database.writer() as s, s.begin():
        pid = await s.scalar(select(Run.id).where(Run.run_no == parent["runNo"]))
        await s.execute(update(Run).where(Run.run_no == child["runNo"]).values(parent_run_id=pid))
    await age(database, parent["runNo"], status="CLOSED_REWORK")
    await age(database, child["runNo"])
    out = tmp_path / "archive"
    report = await archive_runs(database, older_than_days=30, out_dir=out)
    assert [(o.run_no, o.status, o.reason) for o in report.outcomes] == [
        (parent["runNo"], "REFUSED", "REWORK_RUN_OPEN")
    ]

    defective = await batch_run(demo)
    r = await demo.post("/defects", Q, json={"unitSn": defective["sns"][0], "code": "SCRATCH"})
    assert r.status == 201, r.body
    await age(database, defective["runNo"], by=OLD + timedelta(days=1))
    await age(database, child["runNo"], status="COMPLETED")
    report = await archive_runs(database, older_than_days=30, out_dir=out)
    assert [(o.run_no, o.status, o.reason) for o in report.outcomes] == [
        (defective["runNo"], "REFUSED", "OPEN_DEFECTS"),
        (child["runNo"], "ARCHIVED", None),
        (parent["runNo"], "ARCHIVED", None),
    ]
    assert not list(out.glob(f"*/{defective['runNo']}.jsonl.gz"))

    more = [await batch_run(demo) for _ in range(2)]
    for flow in more:
        await age(database, flow["runNo"])
    report = await archive_runs(database, older_than_days=30, out_dir=out, limit=1)
    assert [o.status for o in report.outcomes].count("ARCHIVED") == 1


def test_every_foreign_key_into_an_archived_table_is_covered() -> None:
    """Guards future tables: a row that references an archived row must be archived with it (or, for
    runs.parent_run_id, keep the parent — a blocker), else the delete would fail or orphan it."""
    plan = closure(1)
    covered = {table.name: str(pred.compile()) for table, pred in plan}
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            target = fk.column.table.name
            if target not in covered or (table.name, fk.parent.name) == ("runs", "parent_run_id"):
                continue
            assert table.name in covered, f"{table.name}.{fk.parent.name} → {target} is not archived"
            assert f"{table.name}.{fk.parent.name}" in covered[table.name], (table.name, fk.parent.name)
    # Children before parents: no table is deleted after a table it references.
    order = [t.name for t, _ in plan]
    for table, _ in plan:
        for fk in table.foreign_keys:
            target = fk.column.table.name
            if target in order and target != table.name:
                assert order.index(table.name) < order.index(target), (table.name, target)


async def test_purge_receipts_removes_only_old_finished_rows(database: Database) -> None:
    now = utcnow()
    old = now - timedelta(days=90)
    async with database.writer() as s, s.begin():
        for i, at in enumerate((old, now)):
            s.add(
                EdgeEventReceipt(
                    edge_id="E1",
                    event_id=f"ev{i}",
                    seq=i,
                    kind="AUTO",
                    batch_id="b",
                    occurred_at=at,
                    applied_at=at,
                )
            )
        for status, at in (("SUCCESS", old), ("NEW", old), ("FAILED", now)):
            s.add(
                IntegrationMessage(
                    direction="IN", system="ERP", entity_type="X", status=status, created_at=at
                )
            )
    assert await purge_receipts(database, older_than_days=30) == {
        "edge_event_receipts": 1,
        "integration_messages": 1,
    }
    async with database.reader() as s:
        assert await s.scalar(select(func.count()).select_from(EdgeEventReceipt)) == 1
        left = set((await s.scalars(select(IntegrationMessage.status))).all())
    assert left == {"NEW", "FAILED"}


async def test_cli_archive_command(demo: Api, database: Database, db_url: str, tmp_path: Path) -> None:
    flow = await batch_run(demo)
    await age(database, flow["runNo"])
    out = tmp_path / "arch"
    cli = [*cli_args(db_url, tmp_path), "archive", "--out", str(out)]

    code, stdout, stderr = await run_cli([*cli, "--dry-run"])
    assert code == 0, stderr
    assert f"WOULD_ARCHIVE {flow['runNo']}" in stdout and "would archive 1 runs" in stdout
    assert not out.exists()

    code, stdout, stderr = await run_cli(cli)
    assert code == 0, stderr
    assert f"ARCHIVED      {flow['runNo']}" in stdout, stdout
    assert "archived 1 runs, refused 0" in stdout and "(30 days)" in stdout
    assert path_of(out, flow["runNo"]).is_file()
    r = await demo.get(f"/runs/{flow['runNo']}", Q)
    assert (r.status, r.code) == (404, "RUN_NOT_FOUND")
