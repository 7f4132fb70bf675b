"""The database figures of `GET /api/metrics` (central/metrics.py): three small counts per scrape, read from
the database so that any central process answers for the whole system."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select

from central.db.models import EdgeAgent, IntegrationMessage, MesEvent
from central.services.outbound import EVENT_TYPE
from central.services.uow import UnitOfWork

# An edge republishes its status at least every `forwarder.status_interval` (30 s by default) while
# connected; four of those without one means central no longer hears it, whatever its last state said
# (a broker that dies sends no will).
EDGE_ONLINE_WINDOW_S = 120.0
UNDELIVERED = ("PENDING", "PROCESSING", "FAILED")
WAITING = "WAITING"  # an edge event parked for its unit (central/mqtt/parked.py)


async def figures(uow: UnitOfWork, now: datetime) -> dict[str, object]:
    s = uow.session
    rows = await s.execute(
        select(MesEvent.status, MesEvent.next_attempt_at.is_(None), func.count())
        .where(MesEvent.event_type == EVENT_TYPE, MesEvent.status.in_(UNDELIVERED))
        .group_by(MesEvent.status, MesEvent.next_attempt_at.is_(None))
    )
    depth = dict.fromkeys(UNDELIVERED, 0)
    dead = 0
    for status, no_next, n in rows:
        if status == "FAILED" and no_next:
            dead += n  # used up its attempts: a dead letter, not waiting in the queue
        else:
            depth[status] += n
    parked = await s.scalar(
        select(func.count()).select_from(IntegrationMessage).where(IntegrationMessage.status == WAITING)
    )
    recent = now - timedelta(seconds=EDGE_ONLINE_WINDOW_S)
    online = and_(EdgeAgent.is_active, EdgeAgent.state == "ONLINE", EdgeAgent.last_status_at >= recent)
    n_online = func.coalesce(func.sum(case((online, 1), else_=0)), 0)
    registered, edges_online = (await s.execute(select(func.count(), n_online).select_from(EdgeAgent))).one()
    return {
        "outbox_depth": depth,
        "outbox_dead_letters": dead,
        "ingest_parked": int(parked or 0),
        "edges_registered": int(registered),
        "edges_online": int(edges_online),
    }
