"""A stand-in ERP/TPM HTTP server speaking the pull contract of docs/integration.md.

Serves `GET /erp/{entity}` and `GET /tpm/{entity}` from in-memory data (the demo plant by default) with
`since`/`startRow`/`limit` paging, and can be told to fail: the next N requests, or every request to a path.
Tests drive it through `MockState`; people through `POST /_control/*`.

    python -m central.integration.mock_server --port 9100 [--data file.json] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from central.domain.clock import iso
from central.services import demo_plant

Item = dict[str, Any]

# (system, entity) → (entityType on the wire, business key of an item)
ENTITIES: dict[tuple[str, str], tuple[str, Callable[[Item], str]]] = {
    ("erp", "routes"): ("ROUTING", lambda i: str(i["header"]["routeNo"])),
    ("erp", "work-orders"): ("WORK_ORDER", lambda i: str(i["woNo"])),
    ("erp", "materials"): ("MATERIAL", lambda i: str(i["materialCode"])),
    ("erp", "boms"): ("BOM", lambda i: f"{i['parentCode']}:{i['childCode']}"),
    ("erp", "work-centers"): ("WORK_CENTER", lambda i: str(i["workCenterCode"])),
    ("tpm", "equipment"): ("EQUIPMENT", lambda i: str(i["equipmentCode"])),
    ("tpm", "status-logs"): ("STATUS_LOG", lambda i: f"{i['equipmentCode']}:{i['startedAt']}"),
    ("tpm", "maintenance-tasks"): ("MAINTENANCE_TASK", lambda i: str(i["taskNo"])),
}
_STAMP_FIELDS = ("updatedAt", "endedAt", "completedAt", "startedAt", "scheduledDate")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def stamp(item: Item) -> datetime:
    """When an item last changed: its updatedAt (routes: header.modifiedAt), else its newest time field."""
    header = item.get("header") if isinstance(item.get("header"), dict) else {}
    for value in (*(item.get(f) for f in _STAMP_FIELDS), header.get("modifiedAt")):
        if (dt := _parse(value)) is not None:
            return dt
    return _EPOCH


def page_of(
    system: str, entity: str, items: Iterable[Item], since: datetime | None, start_row: int, limit: int
) -> dict[str, Any]:
    """Items changed at or after `since`, oldest first (then by key), rows [start_row, start_row + limit)."""
    entity_type, key = ENTITIES[(system, entity)]
    chosen = sorted(
        (i for i in items if since is None or stamp(i) >= since), key=lambda i: (stamp(i), key(i))
    )
    rows = chosen[start_row : start_row + limit]
    has_more = start_row + limit < len(chosen)
    newest = max((stamp(i) for i in rows), default=None)
    cursor: dict[str, Any] = {"nextSyncAt": iso(newest), "hasMore": has_more}
    if has_more:
        cursor["nextStartRow"] = start_row + len(rows)
    return {"sourceSystem": system.upper(), "entityType": entity_type, "cursor": cursor, "items": rows}


@dataclass
class MockState:
    """The server's data and failure switches; tests change them between requests."""

    data: dict[str, dict[str, list[Item]]]
    api_key: str | None = None
    fail_next: int = 0
    fail_status: int = 500
    failing_paths: set[str] = field(default_factory=set)
    canned: list[str] = field(default_factory=list)  # the next answers, verbatim (200): broken upstreams
    delay_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    def items(self, system: str, entity: str) -> list[Item]:
        return self.data.setdefault(system, {}).setdefault(entity, [])

    def put(self, system: str, entity: str, *items: Item) -> None:
        """Adds items, replacing those with the same business key."""
        key = ENTITIES[(system, entity)][1]
        rows = self.items(system, entity)
        for item in items:
            rows[:] = [r for r in rows if key(r) != key(item)] + [copy.deepcopy(item)]

    def remove(self, system: str, entity: str, business_key: str) -> None:
        key = ENTITIES[(system, entity)][1]
        rows = self.items(system, entity)
        rows[:] = [r for r in rows if key(r) != business_key]

    def fail(self, times: int = 1, status: int = 500) -> None:
        """The next `times` data requests answer `status`."""
        self.fail_next, self.fail_status = times, status

    def calls(self, path: str) -> int:
        return sum(1 for r in self.requests if r["path"] == path)


STATE: web.AppKey[MockState] = web.AppKey("mock_state", MockState)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _serve(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    system, entity = request.match_info["system"], request.match_info["entity"]
    state.requests.append({"path": request.path, "query": dict(request.query)})
    if state.delay_seconds:
        await asyncio.sleep(state.delay_seconds)  # a slow upstream, for timeout and overlap tests
    if state.api_key and request.headers.get("Authorization") != f"Bearer {state.api_key}":
        return _error(401, "bad or missing API key")
    if (system, entity) not in ENTITIES:
        return _error(404, f"unknown entity {system}/{entity}")
    if request.path in state.failing_paths:
        return _error(state.fail_status, "this path is configured to fail")
    if state.fail_next > 0:
        state.fail_next -= 1
        return _error(state.fail_status, "injected failure")
    if state.canned:
        return web.Response(text=state.canned.pop(0), content_type="application/json")
    try:
        since = _parse(request.query["since"]) if request.query.get("since") else None
        if request.query.get("since") and since is None:
            raise ValueError("since")
        start_row = int(request.query.get("startRow", "0"))
        limit = int(request.query.get("limit", "200"))
        if start_row < 0 or not 1 <= limit <= 1000:
            raise ValueError("range")
    except ValueError:
        return _error(400, "bad since/startRow/limit")
    return web.json_response(page_of(system, entity, state.items(system, entity), since, start_row, limit))


async def _control_data(request: web.Request) -> web.Response:
    """Replaces the data of every system/entity named in the body: {"erp": {"routes": […]}, …}."""
    body = await request.json()
    state = request.app[STATE]
    for system, entities in body.items():
        for entity, items in entities.items():
            if (system, entity) not in ENTITIES:
                return _error(400, f"unknown entity {system}/{entity}")
            state.data.setdefault(system, {})[entity] = list(items)
    return web.json_response({"ok": True})


async def _control_failures(request: web.Request) -> web.Response:
    """{failNext, status, paths[], bodies[], delaySeconds}: each field given replaces the current one."""
    body = await request.json()
    state = request.app[STATE]
    state.fail_next = int(body.get("failNext", state.fail_next))
    state.fail_status = int(body.get("status", state.fail_status))
    state.failing_paths = set(body.get("paths", state.failing_paths))
    state.canned = [str(b) for b in body.get("bodies", state.canned)]
    state.delay_seconds = float(body.get("delaySeconds", state.delay_seconds))
    return web.json_response({"ok": True})


async def _control_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": request.app[STATE].requests})


def create_mock_app(
    data: dict[str, dict[str, list[Item]]] | None = None, *, api_key: str | None = None
) -> web.Application:
    """The mock ERP/TPM app; `data` defaults to the demo plant (`default_data()`)."""
    app = web.Application()
    app[STATE] = MockState(data=copy.deepcopy(data) if data is not None else default_data(), api_key=api_key)
    app.router.add_get("/{system:erp|tpm}/{entity}", _serve)
    app.router.add_post("/_control/data", _control_data)
    app.router.add_post("/_control/failures", _control_failures)
    app.router.add_get("/_control/requests", _control_requests)
    return app


# ---- the demo data set ----------------------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    """A fixed timestamp `minutes` after T0 (the demo data must hash the same on every run)."""
    return iso(T0 + timedelta(minutes=minutes)) or ""


def route(route_no: str, product: str, process_type: str, steps: list[tuple[int, str, str]], t: int) -> Item:
    """An ERP route item; steps = (stepNo, processCode, workCenterCode); the first one needs FAI."""
    return {
        "header": {
            "routeNo": route_no,
            "routeName": f"ERP route {route_no}",
            "productCode": product,
            "processType": process_type,
            "modifiedAt": at(t),
        },
        "steps": [
            {
                "stepNo": no,
                "processCode": code,
                "processName": code.replace("_", " ").title(),
                "workCenterCode": wc,
                "departmentCode": "D-" + process_type,
                "firstPieceInspect": i == 0,
            }
            for i, (no, code, wc) in enumerate(steps)
        ],
        "updatedAt": at(t),
    }


def default_data() -> dict[str, dict[str, list[Item]]]:
    """ERP and TPM data matching the demo plant (demo-plant.md): its materials, BOM and equipment."""
    smt = [(10, "PRINTING", "WC-SMT-A"), (20, "SPI", "WC-SMT-A"), (30, "MOUNTING", "WC-SMT-A")]
    smt += [(40, "REFLOW", "WC-SMT-A"), (50, "AOI", "WC-SMT-A")]
    dip = [(10, "DIP_INSERT", "WC-DIP-A"), (20, "WAVE_SOLDER", "WC-DIP-A")]
    dip += [(30, "CONFORMAL_COAT", "WC-DIP-A"), (40, "FUNC_TEST", "WC-DIP-A")]
    materials = [*demo_plant.MATERIALS, ("MAT-004", "Connector 2x5", "THT", "PCS")]
    boms = [*demo_plant.BOM, ("P-3001", "MAT-001", 4.0), ("P-3001", "MAT-004", 1.0)]
    stations = [code for line in demo_plant.TPM_LINES for code in demo_plant.stations_of(line)]
    wos = [
        ("ERP-WO-3001", "P-3001", None, "1"),
        ("ERP-WO-3002", "P-3002", "ERP-RT-3002", "2"),
        ("ERP-WO-1001", "P-1001", "PCBA-STD-V1", "3"),
        ("ERP-WO-0999", "P-1001", "PCBA-STD-V1", "5"),
    ]
    return {
        "erp": {
            "work-centers": [
                {"workCenterCode": code, "name": name, "departmentCode": dept, "updatedAt": at(i)}
                for i, (code, name, dept) in enumerate(
                    [("WC-SMT-A", "SMT Work Center A", "D-SMT"), ("WC-DIP-A", "DIP Work Center A", "D-DIP")]
                )
            ],
            "materials": [
                {"materialCode": c, "name": n, "category": cat, "unit": u, "updatedAt": at(i)}
                for i, (c, n, cat, u) in enumerate(materials)
            ],
            "boms": [
                {"parentCode": p, "childCode": c, "qty": q, "unit": "PCS", "updatedAt": at(i)}
                for i, (p, c, q) in enumerate(boms)
            ],
            "routes": [
                route("ERP-RT-3001", "P-3001", "SMT", smt, 10),
                route("ERP-RT-3002", "P-3002", "DIP", dip, 11),
            ],
            "work-orders": [
                {
                    "woNo": wo,
                    "productCode": product,
                    "plannedQty": 100,
                    **({"routingCode": routing} if routing else {}),
                    "status": status,
                    "pickStatus": "1",
                    "dueDate": at(7 * 24 * 60),
                    "updatedAt": at(20 + i),
                }
                for i, (wo, product, routing, status) in enumerate(wos)
            ],
        },
        "tpm": {
            "equipment": [
                {"equipmentCode": code, "name": code, "status": "normal", "updatedAt": at(i)}
                for i, code in enumerate(stations)
            ],
            "status-logs": [
                {"equipmentCode": "ST-REFLOW-01", "status": "maintenance", "reason": "PM",
                 "startedAt": at(-120), "endedAt": at(-60)},
            ],
            "maintenance-tasks": [
                {"taskNo": "MT-PM-0001", "equipmentCode": "ST-MOUNT-01", "type": "PM", "status": "COMPLETED",
                 "startedAt": at(-120), "completedAt": at(-90), "updatedAt": at(-90)},
            ],
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mock ERP/TPM server for the MES pull sync")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--data", type=Path, help='JSON file {"erp": {"routes": [...]}, "tpm": {...}}')
    parser.add_argument("--api-key", help="require `Authorization: Bearer <key>`")
    args = parser.parse_args(argv)
    data = json.loads(args.data.read_text(encoding="utf-8")) if args.data else None
    web.run_app(create_mock_app(data, api_key=args.api_key), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
