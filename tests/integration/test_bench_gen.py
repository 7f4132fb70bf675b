"""bench/gen.py: the generated history is valid (every foreign key resolves), central traces its units as
its own, and central keeps ingesting on top of it (ids and sequences continue after the bulk load)."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp

from bench import gen, plant
from bench.p5_trace import _sign_in
from central.mqtt.apply import Applier
from shared.events import EventBatch


async def test_generated_history_is_valid_traceable_and_ingest_continues(db_url: str) -> None:
    plan = await gen.generate(db_url, 1_200, units_per_run=100)
    try:
        assert plan.complete and plan.runs_done == 2
        # 200 units × 6 steps, but the last carrier of the last run is half way (3 steps done).
        assert plan.rows["tracks"] == 190 * 6 + 10 * 3
        assert plan.rows["units"] == 200
        assert await gen.verify_foreign_keys(db_url) == 0

        async with plant.central(db_url, seed=False) as c:
            headers = {"Authorization": f"Bearer {await _sign_in(c.base_url)}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                for sn in ["GEN000001-0050", "GEN000002-0001", "GEN000002-0095"]:
                    async with http.get(f"{c.base_url}/api/trace/units/{sn}", params={"mode": "run"}) as r:
                        assert r.status == 200, await r.text()
                        data = (await r.json())["data"]
                    steps = 3 if sn == "GEN000002-0095" else 6
                    assert [t["stepNo"] for t in data["tracks"]] == [10, 20, 30, 40, 50, 60][:steps]
                    assert {t["stationCode"] for t in data["tracks"]} >= {"ST-B-PRINT-01", "ST-B-MOUNT-01"}
                    assert len(data["ingestEvents"]) == steps
                    assert data["route"]["code"] == "PCBA-AUTO-V1"
                    assert data["readiness"]["status"] == "PASSED"
                    if steps == 6:
                        assert len(data["carrierTracks"]) == 1 and len(data["carrierDataValues"]) == 1
                        assert len(data["dataValues"]) == 7  # SPI 3, mount 1, ICT 3
                # Every 50th unit failed ICT and was scrapped.
                async with http.get(f"{c.base_url}/api/trace/units/GEN000001-0050") as r:
                    unit = (await r.json())["data"]
                assert unit["unit"]["status"] == "SCRAPPED"
                assert unit["defects"][0]["disposition"]["type"] == "SCRAP"

            _, sns = await c.ingest_run(20, prefix="GT-")
            ack = await Applier(c.db, c.settings).apply(
                EventBatch.model_validate(
                    {
                        "schemaVersion": 1,
                        "edgeId": plant.EDGE_ID,
                        "batchId": "gen-test-1",
                        "sentAt": datetime.now(UTC).isoformat(),
                        "events": [plant.auto_event(10**9 + i, sn) for i, sn in enumerate(sns)],
                    }
                )
            )
            assert [r.status for r in ack.results] == ["ACCEPTED"] * 20
    finally:
        gen.plan_path(db_url).unlink(missing_ok=True)
