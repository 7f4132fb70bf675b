"""FQC (domain.md §7.2, `quality:fai`), OQC sampling rules (§7.3) and OQC (§7.4, `quality:oqc`)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.oqc import (
    FqcComplete,
    FqcCreate,
    FqcDetail,
    FqcItemCreate,
    FqcItemUpdate,
    FqcOut,
    FqcSign,
    InspectionItemOut,
    InspectionQuery,
    OqcComplete,
    OqcCreate,
    OqcDetail,
    OqcGate,
    OqcItemCreate,
    OqcItemUpdate,
    OqcOut,
    SamplingRuleCreate,
    SamplingRuleOut,
    SamplingRuleQuery,
    SamplingRuleUpdate,
)
from central.services import fqc, oqc, sampling_rules

router = Router(tag="quality", entity_type="INSPECTION")
FQC_PERMS = ("quality:fai",)
OQC_PERMS = ("quality:oqc",)
RULES = "SYSTEM_CONFIG"


def _rule_id(rq: Req) -> int:
    return rq.path_int("ruleId", "SAMPLING_RULE_NOT_FOUND")


def _oqc_id(rq: Req) -> int:
    return rq.path_int("oqcId", "OQC_NOT_FOUND")


def _fqc_id(rq: Req) -> int:
    return rq.path_int("fqcId", "FQC_NOT_FOUND")


# ---- OQC sampling rules (registered before /oqc/{oqcId}: "sampling-rules" is never read as an id) ----


@router.get("/oqc/sampling-rules", perms=OQC_PERMS)
async def list_sampling_rules(rq: Req, query: SamplingRuleQuery) -> Page[SamplingRuleOut]:
    """OQC sampling rules (productCode, lineCode, routingCode, isActive filters), newest first."""
    return await rq.read(sampling_rules.list_rules, query)


@router.post(
    "/oqc/sampling-rules", perms=OQC_PERMS, status=201, action="SAMPLING_RULE_CREATE", entity_type=RULES
)
async def create_sampling_rule(rq: Req, body: SamplingRuleCreate) -> SamplingRuleOut:
    """Create a sampling rule; null product/line/routing = wildcard (PERCENTAGE 0–100, FIXED ≥ 1)."""
    return await rq.write(sampling_rules.create_rule, body)


@router.get("/oqc/sampling-rules/{ruleId}", perms=OQC_PERMS)
async def get_sampling_rule(rq: Req) -> SamplingRuleOut:
    """A sampling rule (404 SAMPLING_RULE_NOT_FOUND)."""
    return await rq.read(sampling_rules.read_rule, _rule_id(rq))


@router.patch(
    "/oqc/sampling-rules/{ruleId}", perms=OQC_PERMS, action="SAMPLING_RULE_UPDATE", entity_type=RULES
)
async def update_sampling_rule(rq: Req, body: SamplingRuleUpdate) -> SamplingRuleOut:
    """Change a sampling rule; null on product/line/routing makes that criterion a wildcard."""
    return await rq.write(sampling_rules.update_rule, _rule_id(rq), body)


@router.delete(
    "/oqc/sampling-rules/{ruleId}", perms=OQC_PERMS, action="SAMPLING_RULE_DELETE", entity_type=RULES
)
async def delete_sampling_rule(rq: Req) -> SamplingRuleOut:
    """Deactivate a sampling rule (it stays for the OQCs that used it)."""
    return await rq.write(sampling_rules.deactivate_rule, _rule_id(rq))


# ---- OQC ------------------------------------------------------------------------------------------


@router.get("/oqc/run/{runNo}/gate", perms=OQC_PERMS, omit_none=True)
async def oqc_gate(rq: Req) -> OqcGate:
    """Whether the run needs an OQC (a rule applies or one exists) and whether the latest one passed."""
    return await rq.read(oqc.gate, rq.path("runNo"))


@router.get("/oqc/run/{runNo}", perms=OQC_PERMS)
async def latest_run_oqc(rq: Req) -> OqcDetail:
    """The latest OQC of a run with its sample and items (404 OQC_NOT_FOUND)."""
    return await rq.read(oqc.latest_for_run, rq.path("runNo"))


@router.post("/oqc/run/{runNo}", perms=OQC_PERMS, status=201, action="OQC_CREATE")
async def create_oqc(rq: Req, body: OqcCreate | None = None) -> OqcDetail:
    """Create an OQC by hand for an IN_PROGRESS run with all units terminal (or return the active one)."""
    return await rq.write(oqc.create_oqc, rq.path("runNo"), body or OqcCreate())


@router.get("/oqc", perms=OQC_PERMS)
async def list_oqc(rq: Req, query: InspectionQuery) -> Page[OqcOut]:
    """Outgoing quality inspections (runNo=…, status=A,B), newest first."""
    return await rq.read(oqc.list_oqc, query)


@router.get("/oqc/{oqcId}", perms=OQC_PERMS)
async def get_oqc(rq: Req) -> OqcDetail:
    """An OQC with its sampled units and items."""
    return await rq.read(oqc.get_oqc, _oqc_id(rq))


@router.post("/oqc/{oqcId}/start", perms=OQC_PERMS, action="OQC_START")
async def start_oqc(rq: Req) -> OqcDetail:
    """Start a PENDING OQC; the caller becomes the inspector."""
    return await rq.write(oqc.start_oqc, _oqc_id(rq))


@router.post("/oqc/{oqcId}/items", perms=OQC_PERMS, status=201, action="OQC_ITEM_ADD")
async def add_oqc_item(rq: Req, body: OqcItemCreate) -> InspectionItemOut:
    """Record an inspection item for a sampled unit of the run."""
    return await rq.write(oqc.add_item, _oqc_id(rq), body)


@router.patch("/oqc/{oqcId}/items/{itemId}", perms=OQC_PERMS, action="OQC_ITEM_UPDATE")
async def update_oqc_item(rq: Req, body: OqcItemUpdate) -> InspectionItemOut:
    """Edit an item while the OQC is INSPECTING."""
    return await rq.write(oqc.update_item, _oqc_id(rq), rq.path_int("itemId", "OQC_ITEM_NOT_FOUND"), body)


@router.post("/oqc/{oqcId}/complete", perms=OQC_PERMS, action="OQC_COMPLETE")
async def complete_oqc(rq: Req, body: OqcComplete) -> OqcDetail:
    """Decide PASS (run COMPLETED) or FAIL (run ON_HOLD for the MRB) by the count rule."""
    return await rq.write(oqc.complete_oqc, _oqc_id(rq), body)


# ---- FQC ------------------------------------------------------------------------------------------


@router.get("/fqc/run/{runNo}", perms=FQC_PERMS)
async def latest_run_fqc(rq: Req) -> FqcDetail:
    """The latest FQC of a run with its items (404 FQC_NOT_FOUND)."""
    return await rq.read(fqc.latest_for_run, rq.path("runNo"))


@router.post("/fqc/run/{runNo}", perms=FQC_PERMS, status=201, action="FQC_CREATE")
async def create_fqc(rq: Req, body: FqcCreate | None = None) -> FqcDetail:
    """Create a PENDING last-piece inspection for a run whose units are all DONE or SCRAPPED."""
    return await rq.write(fqc.create_fqc, rq.path("runNo"), body or FqcCreate())


@router.get("/fqc", perms=FQC_PERMS)
async def list_fqc(rq: Req, query: InspectionQuery) -> Page[FqcOut]:
    """Final quality inspections (runNo=…, status=A,B), newest first."""
    return await rq.read(fqc.list_fqc, query)


@router.get("/fqc/{fqcId}", perms=FQC_PERMS)
async def get_fqc(rq: Req) -> FqcDetail:
    """An FQC with its items."""
    return await rq.read(fqc.get_fqc, _fqc_id(rq))


@router.post("/fqc/{fqcId}/start", perms=FQC_PERMS, action="FQC_START")
async def start_fqc(rq: Req) -> FqcDetail:
    """Start a PENDING FQC; the caller becomes the inspector."""
    return await rq.write(fqc.start_fqc, _fqc_id(rq))


@router.post("/fqc/{fqcId}/items", perms=FQC_PERMS, status=201, action="FQC_ITEM_ADD")
async def add_fqc_item(rq: Req, body: FqcItemCreate) -> InspectionItemOut:
    """Record an inspection item (unitSn optional, must belong to the run)."""
    return await rq.write(fqc.add_item, _fqc_id(rq), body)


@router.patch("/fqc/{fqcId}/items/{itemId}", perms=FQC_PERMS, action="FQC_ITEM_UPDATE")
async def update_fqc_item(rq: Req, body: FqcItemUpdate) -> InspectionItemOut:
    """Edit an item while the FQC is INSPECTING."""
    return await rq.write(fqc.update_item, _fqc_id(rq), rq.path_int("itemId", "FQC_ITEM_NOT_FOUND"), body)


@router.post("/fqc/{fqcId}/complete", perms=FQC_PERMS, action="FQC_COMPLETE")
async def complete_fqc(rq: Req, body: FqcComplete) -> FqcDetail:
    """Decide PASS or FAIL by the count rule; the run's status is not touched."""
    return await rq.write(fqc.complete_fqc, _fqc_id(rq), body)


@router.post("/fqc/{fqcId}/sign", perms=FQC_PERMS, action="FQC_SIGN")
async def sign_fqc(rq: Req, body: FqcSign | None = None) -> FqcDetail:
    """Sign a passed FQC once; the signer is the caller."""
    return await rq.write(fqc.sign_fqc, _fqc_id(rq), body or FqcSign())
