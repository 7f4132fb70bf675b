"""Loads the demo plant (demo-plant.md) through the ORM; refuses on a database with production data."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from central.config import Settings
from central.db.models import (
    ApiKey,
    BomItem,
    DataCollectionSpec,
    ExecutableRouteVersion,
    FeederSlot,
    Line,
    LineSolderPaste,
    LineStencil,
    Material,
    MaterialLot,
    Operation,
    OqcSamplingRule,
    Role,
    RouteExecutionConfig,
    Routing,
    RoutingStep,
    Run,
    SlotMaterialMapping,
    SolderPasteStatusRecord,
    Station,
    StationGroup,
    StencilStatusRecord,
    TpmEquipment,
    Unit,
    User,
    UserLineBinding,
    UserRoleAssignment,
    UserStationBinding,
    WorkOrder,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, Rejected
from central.services import demo_plant as P
from central.services.auth import create_api_key
from central.services.bootstrap import ensure_preset_roles
from central.services.compile import compile_routing
from central.services.edges import upsert_edge
from central.services.security import hash_secret
from central.services.uow import UnitOfWork
from central.services.users import machine_user


class DemoSeedRefused(Conflict):
    """The database already holds production data and the caller did not ask for force."""

    def __init__(self, message: str) -> None:
        super().__init__("DEMO_SEED_REFUSED", message)


class _Seeder:
    """Natural-key upserts that never change an existing row, counting what they create."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.s = uow.session
        self.created: Counter[str] = Counter(dict.fromkeys(P.SUMMARY_KEYS, 0))
        self.now = utcnow()
        self.ids: dict[str, dict[str, int]] = {k: {} for k in ("lines", "groups", "stations", "ops", "specs")}
        self.versions: dict[str, ExecutableRouteVersion] = {}

    async def get_or_add(self, kind: str, model: Any, key: dict[str, Any], values: dict[str, Any]) -> Any:
        row = await self.s.scalar(select(model).filter_by(**key).limit(1))
        if row is None:
            row = model(**key, **values)
            self.s.add(row)
            await self.s.flush()
            self.created[kind] += 1
        return row

    def id(self, kind: str, code: str) -> int:
        return self.ids[kind][code]

    async def plant(self) -> None:
        for code, name, ptype, enabled in P.LINES:
            meta = {"readinessChecks": {"enabled": list(enabled)}}
            line = await self.get_or_add(
                "lines", Line, {"code": code}, {"name": name, "process_type": ptype, "meta": meta}
            )
            self.ids["lines"][code] = line.id
        for gcode, gname, line_code, members in P.GROUPS:
            line_id = self.id("lines", line_code)
            g = await self.get_or_add(
                "stationGroups", StationGroup, {"code": gcode}, {"name": gname, "line_id": line_id}
            )
            self.ids["groups"][gcode] = g.id
            for scode, sname, stype in members:
                values = {"name": sname, "line_id": line_id, "group_id": g.id, "station_type": stype}
                self.ids["stations"][scode] = (
                    await self.get_or_add("stations", Station, {"code": scode}, values)
                ).id
                if line_code in P.TPM_LINES:
                    values = {
                        "name": f"{sname} Equipment",
                        "status": "normal",
                        "meta": {"lineCode": line_code},
                    }
                    await self.get_or_add("tpmEquipment", TpmEquipment, {"equipment_code": scode}, values)
        for code, name, dtype, key_quality in P.OPERATIONS:
            values = {"name": name, "default_type": dtype, "is_key_quality": key_quality}
            self.ids["ops"][code] = (
                await self.get_or_add("operations", Operation, {"code": code}, values)
            ).id
        for op, name, trigger, spec, required in P.SPECS:
            key = {"operation_id": self.id("ops", op), "name": name}
            values = {
                "item_type": "KEY",
                "data_type": "NUMBER",
                "method": "AUTO",
                "trigger_type": trigger,
                "spec": spec,
                "is_required": required,
            }
            self.ids["specs"][name] = (await self.get_or_add("dataSpecs", DataCollectionSpec, key, values)).id

    async def routings(self) -> None:
        types = {code: dtype for code, _n, dtype, _k in P.OPERATIONS}
        for code, name, ptype, product, with_configs, steps in P.ROUTINGS:
            r = await self.s.scalar(select(Routing).where(Routing.code == code))
            if r is None:
                r = Routing(code=code, name=name, product_code=product, process_type=ptype, version="1.0")
                self.s.add(r)
                await self.s.flush()
                self.created["routings"] += 1
                for no, op, group, fai in steps:
                    st = RoutingStep(
                        routing_id=r.id,
                        step_no=no,
                        operation_id=self.id("ops", op),
                        station_group_id=self.id("groups", group),
                        station_type=types[op],
                        is_last=no == steps[-1][0],
                        requires_fai=fai,
                    )
                    self.s.add(st)
                    await self.s.flush()
                    if with_configs:
                        self.s.add(self._step_config(r.id, st, op, types[op]))
                        self.created["executionConfigs"] += 1
                await self.s.flush()
            self.versions[code] = await self._ready_version(r)

    def _step_config(self, routing_id: int, st: RoutingStep, op: str, stype: str) -> RouteExecutionConfig:
        return RouteExecutionConfig(
            routing_id=routing_id,
            routing_step_id=st.id,
            station_type=stype,
            station_group_id=st.station_group_id,
            allowed_station_ids=[],
            requires_fai=False,
            requires_authorization=False,
            data_spec_ids=[self.id("specs", name) for o, name, *_ in P.SPECS if o == op],
            ingest_mapping=P.ingest_mapping(stype) if stype != "MANUAL" else None,
        )

    async def _ready_version(self, r: Routing) -> ExecutableRouteVersion:
        """Newest READY version; compiles when there is none (on a fresh database: version 1)."""
        v = await self.s.scalar(
            select(ExecutableRouteVersion)
            .where(ExecutableRouteVersion.routing_id == r.id, ExecutableRouteVersion.status == "READY")
            .order_by(ExecutableRouteVersion.version_no.desc())
            .limit(1)
        )
        if v is None:
            v = await compile_routing(self.uow, r.code)
            self.created["routeVersions"] += 1
            if v.status != "READY":
                raise Rejected(
                    "DEMO_SEED_ROUTE_INVALID", f"Routing {r.code} compiled INVALID: {v.errors_json}"
                )
        return v

    async def materials(self) -> None:
        for code, name, category, unit in P.MATERIALS:
            values = {"name": name, "category": category, "unit": unit}
            await self.get_or_add("materials", Material, {"code": code}, values)
        for material, lot in P.MATERIAL_LOTS:
            await self.get_or_add("materialLots", MaterialLot, {"material_code": material, "lot_no": lot}, {})
        for parent, child, qty in P.BOM:
            values = {"qty": qty, "numerator": qty, "denominator": 1.0, "unit": "PCS"}
            await self.get_or_add("bomItems", BomItem, {"parent_code": parent, "child_code": child}, values)
        for line, slot_code, name, pos, material, product, routing, prio in P.SLOTS:
            key = {"line_id": self.id("lines", line), "slot_code": slot_code}
            slot = await self.get_or_add("feederSlots", FeederSlot, key, {"name": name, "position": pos})
            values = {
                "product_code": product,
                "routing_id": self.versions[routing].routing_id,
                "priority": prio,
            }
            key = {"slot_id": slot.id, "material_code": material}
            await self.get_or_add("slotMappings", SlotMaterialMapping, key, {**values, "is_alternate": False})
        for product, line, routing, stype, value, prio in P.OQC_RULES:
            key = {
                "product_code": product,
                "line_id": self.id("lines", line) if line else None,
                "routing_id": self.versions[routing].routing_id if routing else None,
                "sampling_type": stype,
                "sample_value": value,
            }
            await self.get_or_add(
                "oqcSamplingRules", OqcSamplingRule, key, {"priority": prio, "is_active": True}
            )

    async def consumables(self) -> None:
        n = self.now
        seed = {"source": "MANUAL", "operator_id": "seed", "event_time": n, "received_at": n}
        for line, stencil, paste in P.CONSUMABLES:
            line_id = self.id("lines", line)
            for kind, model, field, value in (
                ("stencilBindings", LineStencil, "stencil_id", stencil),
                ("solderPasteBindings", LineSolderPaste, "lot_id", paste),
            ):
                current = select(model.id).where(model.line_id == line_id, model.is_current.is_(True))
                if await self.s.scalar(current) is None:  # an existing current binding is left alone
                    key = {"line_id": line_id, field: value}
                    await self.get_or_add(
                        kind, model, key, {"is_current": True, "bound_at": n, "bound_by": "seed"}
                    )
            values = {
                **seed,
                "stencil_id": stencil,
                "status": "READY",
                "tension_value": 45.0,
                "last_cleaned_at": n,
            }
            await self.get_or_add(
                "stencilStatusRecords", StencilStatusRecord, {"event_id": f"seed-{stencil}"}, values
            )
            values = {
                **seed,
                "lot_id": paste,
                "status": "COMPLIANT",
                "expires_at": n + timedelta(days=30),
                "thawed_at": n - timedelta(hours=2),
                "stirred_at": n - timedelta(hours=1),
            }
            key = {"event_id": f"seed-{paste}"}
            await self.get_or_add("solderPasteStatusRecords", SolderPasteStatusRecord, key, values)

    async def users(self, settings: Settings) -> None:
        before = await self.s.scalar(select(func.count()).select_from(Role)) or 0
        roles = await ensure_preset_roles(self.s)
        self.created["roles"] += len(roles) - before
        hashes: dict[str, str] = {}  # scrypt costs ~50 ms: hash each distinct password once
        for email, name, role, lines, stations in P.USERS:
            if await self.s.scalar(select(User.id).where(User.email == email)) is not None:
                continue
            secret = (
                settings.seed_admin_password if role == "admin" else settings.seed_test_password
            ).get_secret_value()
            if secret not in hashes:
                hashes[secret] = await asyncio.to_thread(hash_secret, secret)
            user = User(
                email=email, name=name, password_hash=hashes[secret], is_active=True, email_verified=True
            )
            self.s.add(user)
            await self.s.flush()
            self.created["users"] += 1
            self.s.add(UserRoleAssignment(user_id=user.id, role_id=roles[role].id))
            for line in lines:
                self.s.add(UserLineBinding(user_id=user.id, line_id=self.id("lines", line)))
                self.created["lineBindings"] += 1
            for code in [c for s in stations for c in (P.stations_of(s[1:]) if s[0] == "@" else [s])]:
                self.s.add(UserStationBinding(user_id=user.id, station_id=self.id("stations", code)))
                self.created["stationBindings"] += 1
        await self.s.flush()

    async def edge_key(self) -> str:
        code, name, perms = P.EDGE_ROLE
        values = {"name": name, "permissions": perms, "data_scope": "ALL", "is_system": False}
        await self.get_or_add("roles", Role, {"code": code}, values)
        user_id = await machine_user(self.uow, P.EDGE_KEY_NAME, code)
        # A key is shown only once, so a re-seed rotates it: older edge-line-b keys are revoked.
        await self.s.execute(
            update(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.name == P.EDGE_KEY_NAME, ApiKey.revoked_at.is_(None))
            .values(revoked_at=self.now)
        )
        _row, key = await create_api_key(self.uow, name=P.EDGE_KEY_NAME, user_id=user_id)
        self.created["apiKeys"] += 1
        # The same identity applies the edge's MQTT events (edge.md rule 8).
        await upsert_edge(self.uow, P.EDGE_KEY_NAME, "LINE-B", user_id)
        return key

    async def business(self) -> None:
        for wo_no, product, routing, qty, status, run in P.WORK_ORDERS:
            version = self.versions[routing]
            values: dict[str, Any] = {
                "product_code": product,
                "planned_qty": float(qty),
                "routing_id": version.routing_id,
                "status": status,
                "pick_status": "2",
                "meta": {},
            }
            if run is not None:
                line = run[1]
                dispatch = {"lineId": self.id("lines", line), "lineCode": line, "stationGroupId": None}
                values["meta"] = {
                    "dispatch": {**dispatch, "stationGroupCode": None, "dispatchedAt": iso(self.now)}
                }
            wo = await self.get_or_add("workOrders", WorkOrder, {"wo_no": wo_no}, values)
            if run is None:
                continue
            run_no, line, plan_qty, shift, changeover, sns = run
            values = {
                "wo_id": wo.id,
                "line_id": self.id("lines", line),
                "route_version_id": version.id,
                "plan_qty": plan_qty,
                "status": "PREP",
                "shift_code": shift,
                "changeover_no": changeover,
            }
            r = await self.get_or_add("runs", Run, {"run_no": run_no}, values)
            first = min((int(x["stepNo"]) for x in version.snapshot_json.get("steps") or []), default=1)
            for sn in sns:
                values = {"wo_id": wo.id, "run_id": r.id, "status": "QUEUED", "current_step_no": first}
                await self.get_or_add("units", Unit, {"sn": sn}, values)


async def seed_demo(uow: UnitOfWork, settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """Loads the demo plant; 409 DEMO_SEED_REFUSED when any line, work order or run exists, unless `force`.

    With `force` only missing rows are added (natural keys: code, email, woNo, runNo, sn, …) and existing rows
    stay untouched, except the edge API key, which is rotated. Returns the counts of rows created per kind,
    `forced`, and the plaintext edge key `edgeApiKey` (shown once; never logged).
    """
    s = uow.session
    lines, wos, runs = [
        await s.scalar(select(func.count()).select_from(m)) or 0 for m in (Line, WorkOrder, Run)
    ]
    if (lines or wos or runs) and not force:
        raise DemoSeedRefused(
            f"The database already holds production data ({lines} lines, {wos} work orders, {runs} runs); "
            'the demo plant loads only into an empty database. Use --force (HTTP body {"force": true}) '
            "to add just the missing demo rows."
        )
    seeder = _Seeder(uow)
    await seeder.plant()
    await seeder.routings()
    await seeder.materials()
    await seeder.consumables()
    await seeder.users(settings)
    edge_key = await seeder.edge_key()
    await seeder.business()
    counts = dict(seeder.created)
    uow.audit(
        None,
        "demo plant",
        entity_type="SYSTEM_CONFIG",
        action="DEMO_SEED",
        payload={"force": force, **counts},
    )
    return {**counts, "forced": force, "edgeApiKey": edge_key}
