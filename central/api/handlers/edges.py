"""Edge agents: registry, registration, enable/disable (api.md "Edge operations")."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.edges import EdgeCreate, EdgeOut, EdgeRegistered, EdgeUpdate
from central.services import edges

router = Router(tag="integration", entity_type="EDGE")


@router.get("/integration/edges", perms=("system:integration", "system:config"))
async def list_edges(rq: Req) -> list[EdgeOut]:
    """Every registered edge agent: last status message (state, backlog, devices), last batch, counters."""
    return await rq.read(edges.list_edges)


@router.post("/integration/edges", perms=("system:config",), status=201, action="EDGE_REGISTER")
async def register_edge(rq: Req, body: EdgeCreate) -> EdgeRegistered:
    """Register an edge agent: its identity for MQTT events and its API key (shown once)."""
    return await rq.write(edges.register_edge, body)


@router.patch("/integration/edges/{edgeId}", perms=("system:config",), action="EDGE_UPDATE")
async def update_edge(rq: Req, body: EdgeUpdate) -> EdgeOut:
    """Enable or disable an edge agent, or move it to another line."""
    return await rq.write(edges.update_edge, rq.path("edgeId"), body)
