"""Outbound ERP completion feedback (domain.md §9 Push) and the integration log (api.md, edge operations)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.outbound import (
    EnqueueReceipt,
    MessageOut,
    MessageQuery,
    MessageSummary,
    OutboundEventList,
    OutboundEventQuery,
    RetryReceipt,
)
from central.services import integration_log, outbound

router = Router(tag="integration", entity_type="INTEGRATION")

PERMS = ("system:integration",)


@router.post(
    "/integration/outbound/erp/runs/{runNo}/completion",
    perms=PERMS,
    action="OUTBOUND_ERP_RUN_COMPLETION_ENQUEUE",
)
async def enqueue_run_completion(rq: Req) -> EnqueueReceipt:
    """Queue a terminal run's RUN_COMPLETION_V1 message for the ERP; a re-enqueue returns the same event."""
    return await rq.write(outbound.enqueue_completion, rq.path("runNo"))


@router.get("/integration/outbound/events", perms=PERMS)
async def list_outbound_events(rq: Req, query: OutboundEventQuery) -> OutboundEventList:
    """Outbound feedback events, newest first (`limit` 1..200), filtered by status."""
    return await rq.read(outbound.list_events, query)


@router.post("/integration/outbound/events/{eventId}/retry", perms=PERMS, action="OUTBOUND_EVENT_RETRY")
async def retry_outbound_event(rq: Req) -> RetryReceipt:
    """Send a failed (or dead-lettered) event again: PENDING, attempts 0, due now."""
    return await rq.write(outbound.retry_event, rq.path_int("eventId", "EVENT_NOT_FOUND"))


@router.get("/integration/messages", perms=PERMS)
async def list_integration_messages(rq: Req, query: MessageQuery) -> Page[MessageSummary]:
    """The integration log, newest first: filters direction, system, status, entityType, from/to."""
    return await rq.read(integration_log.list_messages, query)


@router.get("/integration/messages/{id}", perms=PERMS)
async def get_integration_message(rq: Req) -> MessageOut:
    """One integration log entry with its payload."""
    return await rq.read(integration_log.get_message, rq.path_int("id", "INTEGRATION_MESSAGE_NOT_FOUND"))
