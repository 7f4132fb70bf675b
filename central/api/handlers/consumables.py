"""Stencil / solder-paste status pushes and the line bindings of both (domain.md §9 Push, §11)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.consumables import (
    LineConsumables,
    SolderPasteBind,
    SolderPasteBindingOut,
    SolderPasteStatusIn,
    SolderPasteStatusReceipt,
    StencilBind,
    StencilBindingOut,
    StencilStatusIn,
    StencilStatusReceipt,
)
from central.services import consumables

router = Router(tag="integration", entity_type="INTEGRATION")

# Devices push with system:integration; in degraded mode supervisors (readiness:check) key MANUAL ones.
RECEIVE_PERMS = ("system:integration", "readiness:check")
BIND_PERMS = consumables.CONFIG_PERMS


def _auto_needs_integration(rq: Req, source: str) -> None:
    if source == "AUTO":  # readiness:check alone allows MANUAL entries only
        rq.actor.require("system:integration")


@router.post("/integration/stencil-status", perms=RECEIVE_PERMS, action="STENCIL_STATUS_RECEIVE")
async def receive_stencil_status(rq: Req, body: StencilStatusIn) -> StencilStatusReceipt:
    """Record a stencil status (READY|NOT_READY|MAINTENANCE); a replayed eventId returns the original."""
    _auto_needs_integration(rq, body.source)
    return await rq.write(consumables.receive_stencil_status, body)


@router.post("/integration/solder-paste-status", perms=RECEIVE_PERMS, action="SOLDER_PASTE_STATUS_RECEIVE")
async def receive_solder_paste_status(rq: Req, body: SolderPasteStatusIn) -> SolderPasteStatusReceipt:
    """Record a paste lot status (COMPLIANT|NON_COMPLIANT|EXPIRED); a replayed eventId returns it again."""
    _auto_needs_integration(rq, body.source)
    return await rq.write(consumables.receive_paste_status, body)


@router.post(
    "/integration/lines/{lineId}/stencil/bind",
    perms=BIND_PERMS,
    entity_type="LINE",
    action="LINE_STENCIL_BIND",
)
async def bind_stencil(rq: Req, body: StencilBind) -> StencilBindingOut:
    """Make a stencil the line's current one (the previous binding stops being current)."""
    return await rq.write(consumables.bind_stencil, rq.path("lineId"), body)


@router.post(
    "/integration/lines/{lineId}/stencil/unbind",
    perms=BIND_PERMS,
    entity_type="LINE",
    action="LINE_STENCIL_UNBIND",
)
async def unbind_stencil(rq: Req) -> StencilBindingOut:
    """Close the line's current stencil binding; returns the closed binding."""
    return await rq.write(consumables.unbind_stencil, rq.path("lineId"))


@router.post(
    "/integration/lines/{lineId}/solder-paste/bind",
    perms=BIND_PERMS,
    entity_type="LINE",
    action="LINE_SOLDER_PASTE_BIND",
)
async def bind_solder_paste(rq: Req, body: SolderPasteBind) -> SolderPasteBindingOut:
    """Make a paste lot the line's current one; emits SOLDER_PASTE_USAGE_CREATE (UNBIND for the old lot)."""
    return await rq.write(consumables.bind_paste, rq.path("lineId"), body)


@router.post(
    "/integration/lines/{lineId}/solder-paste/unbind",
    perms=BIND_PERMS,
    entity_type="LINE",
    action="LINE_SOLDER_PASTE_UNBIND",
)
async def unbind_solder_paste(rq: Req) -> SolderPasteBindingOut:
    """Close the line's current paste binding; emits SOLDER_PASTE_USAGE_UNBIND; returns the closed binding."""
    return await rq.write(consumables.unbind_paste, rq.path("lineId"))


@router.get("/integration/lines/{lineId}/consumables", perms=consumables.VIEW_PERMS)
async def line_consumables(rq: Req) -> LineConsumables:
    """The line's current stencil and solder-paste lot, each with its latest status (by eventTime)."""
    return await rq.read(consumables.line_consumables, rq.path("lineId"))
