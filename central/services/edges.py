"""Edge agents: registration (identity for MQTT events) and the registry view of `GET /integration/edges`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from central.db.models import EdgeAgent, Line, Role
from central.domain.errors import Conflict, NotFound
from central.schemas.edges import EdgeCreate, EdgeUpdate
from central.services.auth import create_api_key
from central.services.uow import UnitOfWork
from central.services.users import machine_user

EDGE_ROLE = ("edge-agent", "Edge agent", ["system:integration", "exec:track_in", "exec:track_out"])


def edge_view(e: EdgeAgent) -> dict[str, Any]:
    st = e.status or {}

    def when(key: str) -> datetime | None:
        raw = st.get(key)
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if isinstance(raw, str) else None

    return {
        "edge_id": e.edge_id,
        "line_code": e.line_code,
        "is_active": e.is_active,
        "state": e.state,
        "online": e.state == "ONLINE",
        "version": st.get("version"),
        "started_at": when("startedAt"),
        "backlog": st.get("backlog"),
        "oldest_pending_at": when("oldestPendingAt"),
        "dead_letters": st.get("deadLetters"),
        "devices": st.get("devices") or [],
        "alarms": st.get("alarms") or [],
        "last_status_at": e.last_status_at,
        "last_batch_id": e.last_batch_id,
        "last_batch_at": e.last_batch_at,
        "events_accepted": e.events_accepted,
        "events_duplicate": e.events_duplicate,
        "events_rejected": e.events_rejected,
    }


async def list_edges(uow: UnitOfWork) -> list[dict[str, Any]]:
    rows = await uow.session.scalars(select(EdgeAgent).order_by(EdgeAgent.edge_id))
    return [edge_view(e) for e in rows]


async def _get(uow: UnitOfWork, edge_id: str) -> EdgeAgent:
    row = await uow.session.scalar(select(EdgeAgent).where(EdgeAgent.edge_id == edge_id).with_for_update())
    if row is None:
        raise NotFound("EDGE_NOT_FOUND", f"Edge {edge_id} is not registered")
    return row


async def _check_line(uow: UnitOfWork, line_code: str | None) -> None:
    if line_code and await uow.session.scalar(select(Line.id).where(Line.code == line_code)) is None:
        raise NotFound("LINE_NOT_FOUND", f"Line {line_code} not found")


async def ensure_edge_role(uow: UnitOfWork) -> None:
    code, name, perms = EDGE_ROLE
    if await uow.session.scalar(select(Role.id).where(Role.code == code)) is None:
        uow.session.add(Role(code=code, name=name, permissions=perms, data_scope="ALL", is_system=False))
        await uow.session.flush()


async def register_edge(uow: UnitOfWork, body: EdgeCreate) -> dict[str, Any]:
    """A machine user with the edge-agent role, its API key (returned once) and the registry row."""
    if await uow.session.scalar(select(EdgeAgent.id).where(EdgeAgent.edge_id == body.edge_id)) is not None:
        raise Conflict("EDGE_EXISTS", f"Edge {body.edge_id} is already registered")
    await _check_line(uow, body.line_code)
    await ensure_edge_role(uow)
    user_id = await machine_user(uow, body.edge_id, EDGE_ROLE[0])
    _row, key = await create_api_key(uow, name=body.edge_id, user_id=user_id)
    edge = await upsert_edge(uow, body.edge_id, body.line_code, user_id)
    uow.audit(
        edge.id, edge.edge_id, entity_type="EDGE", action="EDGE_REGISTER", after={"lineCode": edge.line_code}
    )
    return {"edge": edge_view(edge), "api_key": key}


async def upsert_edge(uow: UnitOfWork, edge_id: str, line_code: str | None, user_id: int) -> EdgeAgent:
    edge = await uow.session.scalar(select(EdgeAgent).where(EdgeAgent.edge_id == edge_id))
    if edge is None:
        edge = EdgeAgent(edge_id=edge_id, line_code=line_code, user_id=user_id, status={})
        uow.session.add(edge)
    else:
        edge.line_code, edge.user_id, edge.is_active = line_code, user_id, True
    await uow.session.flush()
    return edge


async def update_edge(uow: UnitOfWork, edge_id: str, body: EdgeUpdate) -> dict[str, Any]:
    """Disable (its batches are then refused with EDGE_NOT_REGISTERED) or re-enable an edge; move its line."""
    edge = await _get(uow, edge_id)
    before = {"isActive": edge.is_active, "lineCode": edge.line_code}
    if body.line_code is not None:
        await _check_line(uow, body.line_code)
        edge.line_code = body.line_code
    if body.is_active is not None:
        edge.is_active = body.is_active
    await uow.session.flush()
    uow.audit(
        edge.id,
        edge.edge_id,
        entity_type="EDGE",
        action="EDGE_UPDATE",
        before=before,
        after={"isActive": edge.is_active, "lineCode": edge.line_code},
    )
    return edge_view(edge)
