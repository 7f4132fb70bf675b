"""Audit log reads (system:config sees all; everyone else sees their own)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.audit import AuditOut, AuditQuery
from central.schemas.base import Page
from central.services import audit

router = Router(tag="audit", entity_type="SYSTEM_CONFIG")


@router.get("/audit-logs")
async def list_audit_logs(rq: Req, query: AuditQuery) -> Page[AuditOut]:
    """Audit events, newest first, filtered by actor, entity, action, status and time."""
    return await rq.read(audit.list_events, query)


@router.get("/audit-logs/{id}")
async def get_audit_log(rq: Req) -> AuditOut:
    """One audit event."""
    return await rq.read(audit.get_event, rq.path_int("id", "AUDIT_EVENT_NOT_FOUND"))
