"""SMT feeder loading: slot/mapping configuration, a run's load table, verify and replace scans."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Deleted, Page
from central.schemas.loading import (
    ExpectationOut,
    FeederSlotCreate,
    FeederSlotOut,
    FeederSlotQuery,
    FeederSlotUpdate,
    LoadingRecordOut,
    LoadTableOut,
    ReplaceBody,
    RunLoadingQuery,
    ScanOut,
    SlotMappingCreate,
    SlotMappingOut,
    SlotMappingQuery,
    SlotMappingUpdate,
    UnlockBody,
    VerifyBody,
)
from central.services import loading, loading_config, loading_scan

router = Router(tag="loading", entity_type="LOADING")
VIEW = ("loading:view", "loading:config")
CONFIG = ("loading:config",)
VERIFY = ("loading:verify",)


# ---- configuration ----


@router.get("/lines/{lineId}/feeder-slots", perms=VIEW)
async def list_feeder_slots(rq: Req, query: FeederSlotQuery) -> Page[FeederSlotOut]:
    """Feeder slots of a line ({lineId} = id or code), by position; with lock state and current lot."""
    return await rq.read(loading_config.list_slots, rq.path("lineId"), query)


@router.post("/lines/{lineId}/feeder-slots", perms=CONFIG, status=201, action="FEEDER_SLOT_CREATE")
async def create_feeder_slot(rq: Req, body: FeederSlotCreate) -> FeederSlotOut:
    """Create a feeder slot on a line (slotCode unique per line)."""
    return await rq.write(loading_config.create_slot, rq.path("lineId"), body)


@router.put("/lines/{lineId}/feeder-slots/{slotId}", perms=CONFIG, action="FEEDER_SLOT_UPDATE")
async def update_feeder_slot(rq: Req, body: FeederSlotUpdate) -> FeederSlotOut:
    """Change a slot's name/position; its code only while unused (409 SLOT_IN_USE)."""
    slot_id = rq.path_int("slotId", "SLOT_NOT_FOUND")
    return await rq.write(loading_config.update_slot, rq.path("lineId"), slot_id, body)


@router.delete("/lines/{lineId}/feeder-slots/{slotId}", perms=CONFIG, action="FEEDER_SLOT_DELETE")
async def delete_feeder_slot(rq: Req) -> Deleted:
    """Delete an unused slot and its mappings (409 SLOT_IN_USE once it has a lot, expectations, records)."""
    slot_id = rq.path_int("slotId", "SLOT_NOT_FOUND")
    return await rq.write(loading_config.delete_slot, rq.path("lineId"), slot_id)


@router.post("/feeder-slots/{slotId}/unlock", perms=CONFIG, action="FEEDER_SLOT_UNLOCK")
async def unlock_feeder_slot(rq: Req, body: UnlockBody) -> FeederSlotOut:
    """Unlock a slot locked by failed scans: clears lock and counter, appends meta.unlockHistory."""
    return await rq.write(loading_config.unlock_slot, rq.path_int("slotId", "SLOT_NOT_FOUND"), body)


@router.get("/slot-mappings", perms=VIEW)
async def list_slot_mappings(rq: Req, query: SlotMappingQuery) -> Page[SlotMappingOut]:
    """Slot↔material mappings (slotId, lineId, materialCode, productCode filters)."""
    return await rq.read(loading_config.list_mappings, query)


@router.post("/slot-mappings", perms=CONFIG, status=201, action="SLOT_MAPPING_CREATE")
async def create_slot_mapping(rq: Req, body: SlotMappingCreate) -> SlotMappingOut:
    """Allow a material in a slot, optionally only for a product and/or routing, with a priority."""
    return await rq.write(loading_config.create_mapping, body)


@router.put("/slot-mappings/{id}", perms=CONFIG, action="SLOT_MAPPING_UPDATE")
async def update_slot_mapping(rq: Req, body: SlotMappingUpdate) -> SlotMappingOut:
    """Change a slot mapping (material, product, routing, priority, alternate flag)."""
    return await rq.write(loading_config.update_mapping, rq.path_int("id", "SLOT_MAPPING_NOT_FOUND"), body)


@router.delete("/slot-mappings/{id}", perms=CONFIG, action="SLOT_MAPPING_DELETE")
async def delete_slot_mapping(rq: Req) -> Deleted:
    """Delete a slot mapping (existing load tables keep their snapshot)."""
    return await rq.write(loading_config.delete_mapping, rq.path_int("id", "SLOT_MAPPING_NOT_FOUND"))


# ---- run loading ----


@router.post("/runs/{runNo}/loading/load-table", perms=VERIFY, action="LOADING_TABLE_CREATE")
async def create_load_table(rq: Req) -> LoadTableOut:
    """Build the run's expected load table from the most specific slot mappings (all PENDING)."""
    return await rq.write(loading.load_table, rq.path("runNo"))


@router.post("/loading/verify", perms=VERIFY, action="LOADING_VERIFY")
async def verify_loading(rq: Req, body: VerifyBody) -> ScanOut:
    """Scan a lot at a slot: PASS / WARNING (alternate) / FAIL, all answered 200; 3 FAILs lock the slot."""
    return await rq.write(loading_scan.verify, body)


@router.post("/loading/replace", perms=VERIFY, action="LOADING_REPLACE")
async def replace_loading(rq: Req, body: ReplaceBody) -> ScanOut:
    """Replace the lot of a loaded slot (reason required); the old record becomes REPLACED."""
    return await rq.write(loading_scan.replace, body)


@router.get("/runs/{runNo}/loading", perms=VIEW)
async def list_loading_records(rq: Req, query: RunLoadingQuery) -> Page[LoadingRecordOut]:
    """Loading records of a run (status, verifyResult, slotCode filters), oldest first."""
    return await rq.read(loading.list_records, rq.path("runNo"), query)


@router.get("/runs/{runNo}/loading/expectations", perms=VIEW)
async def list_loading_expectations(rq: Req, query: RunLoadingQuery) -> Page[ExpectationOut]:
    """The run's load table: expected material, alternates and status per slot."""
    return await rq.read(loading.list_expectations, rq.path("runNo"), query)
