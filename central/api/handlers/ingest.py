"""Equipment ingest (domain.md §4.3): the generic event and the seed contract's three typed forms."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.ingest import BatchEventIn, EquipmentEventIn, IngestEventIn, IngestReceipt, TestResultIn
from central.services import ingest
from central.services.ingest_common import ACTION, INGEST_PERMS

router = Router(tag="ingest", entity_type="INTEGRATION")


@router.post("/ingest/events", perms=INGEST_PERMS, action=ACTION)
async def ingest_event(rq: Req, body: IngestEventIn) -> IngestReceipt:
    """Apply an AUTO/BATCH/TEST equipment event once per (sourceSystem, dedupeKey); a replay is duplicate."""
    return await rq.write(ingest.ingest_event, body)


@router.post("/ingest/equipment/events", perms=INGEST_PERMS, action=ACTION)
async def ingest_equipment_event(rq: Req, body: EquipmentEventIn) -> IngestReceipt:
    """AUTO event in the seed contract's flat form {stationCode, sn, result, data|measurements}."""
    return await rq.write(ingest.ingest_typed, "AUTO", body)


@router.post("/ingest/batch/events", perms=INGEST_PERMS, action=ACTION)
async def ingest_batch_event(rq: Req, body: BatchEventIn) -> IngestReceipt:
    """BATCH event in the seed contract's flat form {stationCode, carrierNo, sns, result, data}."""
    return await rq.write(ingest.ingest_typed, "BATCH", body)


@router.post("/ingest/test/results", perms=INGEST_PERMS, action=ACTION)
async def ingest_test_result(rq: Req, body: TestResultIn) -> IngestReceipt:
    """TEST result in the seed contract's flat form {stationCode, sn, testResultId, result, measurements}."""
    return await rq.write(ingest.ingest_typed, "TEST", body)
