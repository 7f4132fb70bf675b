"""First-article inspection (domain.md §7.1): create, start, trial-gated items and completion, sign, gate."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.fai import (
    FaiComplete,
    FaiCreate,
    FaiDetail,
    FaiGate,
    FaiItemCreate,
    FaiItemOut,
    FaiItemUpdate,
    FaiOut,
    FaiQuery,
    FaiSign,
)
from central.services import fai, fai_reads

router = Router(tag="quality", entity_type="INSPECTION")
PERMS = ("quality:fai",)


def _fai_id(rq: Req) -> int:
    return rq.path_int("faiId", "FAI_NOT_FOUND")


# The /fai/run/... routes are registered before /fai/{faiId}/... so that "run" is never read as an id.
@router.get("/fai/run/{runNo}/gate", perms=PERMS, omit_none=True)
async def fai_gate(rq: Req) -> FaiGate:
    """What the authorization FAI gate sees: requiresFai (frozen snapshot), latest FAI passed and signed."""
    return await rq.read(fai_reads.gate, rq.path("runNo"))


@router.get("/fai/run/{runNo}", perms=PERMS)
async def latest_run_fai(rq: Req) -> FaiDetail:
    """The latest FAI of a run with its items and trial summary (404 FAI_NOT_FOUND)."""
    return await rq.read(fai_reads.latest_for_run, rq.path("runNo"))


@router.post("/fai/run/{runNo}", perms=PERMS, status=201, action="FAI_CREATE")
async def create_fai(rq: Req, body: FaiCreate) -> FaiDetail:
    """Create a PENDING FAI for a PREP run whose FORMAL readiness passed; template items pre-filled NA."""
    return await rq.write(fai.create_fai, rq.path("runNo"), body)


@router.get("/fai", perms=PERMS)
async def list_fai(rq: Req, query: FaiQuery) -> Page[FaiOut]:
    """First-article inspections (runNo=…, status=A,B), newest first."""
    return await rq.read(fai_reads.list_fai, query)


@router.get("/fai/{faiId}", perms=PERMS)
async def get_fai(rq: Req) -> FaiDetail:
    """An FAI with its items and trial summary (units, trial track-outs with data, SPI/AOI results)."""
    return await rq.read(fai_reads.get_detail, _fai_id(rq))


@router.post("/fai/{faiId}/start", perms=PERMS, action="FAI_START")
async def start_fai(rq: Req) -> FaiDetail:
    """Start a PENDING FAI: the caller becomes the inspector and the trial opens."""
    return await rq.write(fai.start_fai, _fai_id(rq))


@router.post("/fai/{faiId}/items", perms=PERMS, status=201, action="FAI_ITEM_ADD")
async def add_fai_item(rq: Req, body: FaiItemCreate) -> FaiItemOut:
    """Record an inspection item once the trial has finished its sample units."""
    return await rq.write(fai.add_item, _fai_id(rq), body)


@router.patch("/fai/{faiId}/items/{itemId}", perms=PERMS, action="FAI_ITEM_UPDATE")
async def update_fai_item(rq: Req, body: FaiItemUpdate) -> FaiItemOut:
    """Edit an item (result, actual value, …) while the FAI is INSPECTING."""
    return await rq.write(fai.update_item, _fai_id(rq), rq.path_int("itemId", "FAI_ITEM_NOT_FOUND"), body)


@router.post("/fai/{faiId}/complete", perms=PERMS, action="FAI_COMPLETE")
async def complete_fai(rq: Req, body: FaiComplete) -> FaiDetail:
    """Decide PASS or FAIL (count rule; PASS refused while SPI/AOI failures exist); run status unchanged."""
    return await rq.write(fai.complete_fai, _fai_id(rq), body)


@router.post("/fai/{faiId}/sign", perms=PERMS, action="FAI_SIGN")
async def sign_fai(rq: Req, body: FaiSign | None = None) -> FaiDetail:
    """Sign a passed FAI once; the signer is the caller."""
    return await rq.write(fai.sign_fai, _fai_id(rq), body or FaiSign())


@router.post("/runs/{runNo}/fai", perms=PERMS, status=201, action="FAI_CREATE")
async def create_run_fai(rq: Req, body: FaiCreate) -> FaiDetail:
    """Seed-contract alias of POST /fai/run/{runNo}."""
    return await rq.write(fai.create_fai, rq.path("runNo"), body)


@router.post("/runs/{runNo}/fai/inspect", perms=PERMS, status=201, action="FAI_ITEM_ADD")
async def inspect_run_fai(rq: Req, body: FaiItemCreate) -> FaiItemOut:
    """Seed-contract alias: record an item on the run's active FAI."""
    return await rq.write(fai.add_item_for_run, rq.path("runNo"), body)
