"""Edge event kind → the service function of its REST endpoint (edge.md "Events"): one code path for both.

Each entry builds the REST body from the event (filling the event's own id and time where the body has such
fields and the edge left them out), checks the permission the REST route would check, and calls the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from central.domain.errors import Rejected
from central.schemas.consumables import SolderPasteStatusIn, StencilStatusIn
from central.schemas.device_inputs import DeviceDataIn, InspectionResultIn
from central.schemas.execution import TrackIn, TrackOut
from central.schemas.ingest import IngestEventIn
from central.schemas.tpm import TpmEquipmentUpdate
from central.services import consumables, device_data, execution, ingest, inspection_results, tpm
from central.services.uow import UnitOfWork
from shared.events import EdgeEvent


@dataclass(frozen=True)
class Applied:
    result: dict[str, Any]
    duplicate: bool  # the service itself recognised the event (e.g. the same eventId arrived over REST)


Handler = Callable[[UnitOfWork, str, EdgeEvent], Awaitable[Applied]]


def source_system(edge_id: str) -> str:
    return f"edge:{edge_id}"


def _with_ids(ev: EdgeEvent, id_field: str = "eventId", time_field: str = "eventTime") -> dict[str, Any]:
    body = dict(ev.payload)
    body.setdefault(id_field, ev.event_id)
    body.setdefault(time_field, ev.occurred_at.isoformat())
    return body


def _station(ev: EdgeEvent) -> str:
    if not ev.station_code:
        raise Rejected("INGEST_PAYLOAD_INVALID", f"A {ev.kind} event needs stationCode")
    return ev.station_code


def ingest_body(edge_id: str, ev: EdgeEvent) -> IngestEventIn:
    """The `POST /ingest/events` body of an INGEST event: the eventId is its dedupe key."""
    return IngestEventIn.model_validate(
        {
            **ev.payload,
            "dedupeKey": ev.event_id,
            "sourceSystem": source_system(edge_id),
            "occurredAt": ev.occurred_at.isoformat(),
        }
    )


async def _ingest(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    out = await ingest.ingest_event(uow, ingest_body(edge_id, ev))
    return Applied(out, bool(out.get("duplicate")))


async def _track_in(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    return Applied(await execution.track_in(uow, _station(ev), TrackIn.model_validate(ev.payload)), False)


async def _track_out(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    return Applied(await execution.track_out(uow, _station(ev), TrackOut.model_validate(ev.payload)), False)


async def _inspection(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    body = InspectionResultIn.model_validate(_with_ids(ev))
    out = await inspection_results.receive_inspection_result(uow, body)
    return Applied(out, bool(out.get("is_duplicate")))


async def _device_data(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    out = await device_data.receive_device_data(uow, DeviceDataIn.model_validate(_with_ids(ev)))
    return Applied(out, bool(out.get("is_duplicate")))


async def _stencil(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    out = await consumables.receive_stencil_status(uow, StencilStatusIn.model_validate(_with_ids(ev)))
    return Applied(out, bool(out.get("is_duplicate")))


async def _paste(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    out = await consumables.receive_paste_status(uow, SolderPasteStatusIn.model_validate(_with_ids(ev)))
    return Applied(out, bool(out.get("is_duplicate")))


async def _equipment(uow: UnitOfWork, edge_id: str, ev: EdgeEvent) -> Applied:
    status = ev.payload.get("status")
    row = await tpm.update_equipment(uow, _station(ev), TpmEquipmentUpdate.model_validate({"status": status}))
    return Applied({"equipmentCode": row.equipment_code, "status": row.status}, False)


# kind → (permissions, any of which the edge's identity must hold — the REST route's — and the handler)
HANDLERS: dict[str, tuple[tuple[str, ...], Handler]] = {
    "INGEST": (("system:integration",), _ingest),
    "TRACK_IN": (("exec:track_in",), _track_in),
    "TRACK_OUT": (("exec:track_out",), _track_out),
    "INSPECTION_RESULT": (("system:integration",), _inspection),
    "DEVICE_DATA": (("system:integration",), _device_data),
    "STENCIL_STATUS": (("system:integration",), _stencil),
    "SOLDER_PASTE_STATUS": (("system:integration",), _paste),
    "EQUIPMENT_STATUS": (("system:integration", "system:config"), _equipment),
}
