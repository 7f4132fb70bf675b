"""Every entity's allowed status transitions, in one place (domain.md §3). Nothing else assigns `status`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from central.domain.errors import Rejected


class HasStatus(Protocol):
    status: Any


@dataclass(frozen=True)
class Machine:
    """`table[action] = {from: to}`; `refusals[action]` = the code when the current status is not a `from`."""

    entity: str
    states: frozenset[str]
    table: dict[str, dict[str, str]]
    refusals: dict[str, str]

    def target(self, current: str, action: str) -> str:
        moves = self.table[action]
        if current not in moves:
            code = self.refusals.get(action, f"INVALID_{self.entity.upper()}_STATUS")
            raise Rejected(code, f"{self.entity} in status {current} cannot {action.replace('_', ' ')}")
        return moves[current]

    def allows(self, current: str, action: str) -> bool:
        return current in self.table[action]

    def apply(self, obj: HasStatus, action: str) -> str:
        """Moves `obj` along `action`; returns the previous status."""
        before = obj.status
        obj.status = self.target(before, action)
        return before


def _all(states: set[str], to: str, *, but: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    return {s: to for s in states - set(but)}


WO_STATES = {"RECEIVED", "RELEASED", "IN_PROGRESS", "COMPLETED"}
WORK_ORDER = Machine(
    "WorkOrder",
    frozenset(WO_STATES),
    {
        "release": {"RECEIVED": "RELEASED"},
        "start": {"RELEASED": "IN_PROGRESS", "IN_PROGRESS": "IN_PROGRESS"},
        "close": {"RECEIVED": "COMPLETED", "RELEASED": "COMPLETED", "IN_PROGRESS": "COMPLETED"},
        # ERP-driven status sync: any status except COMPLETED may move; COMPLETED never regresses.
        "erp_received": _all(WO_STATES, "RECEIVED", but={"COMPLETED"}),
        "erp_released": _all(WO_STATES, "RELEASED", but={"COMPLETED"}),
        "erp_in_progress": _all(WO_STATES, "IN_PROGRESS", but={"COMPLETED"}),
        "erp_completed": _all(WO_STATES, "COMPLETED"),
    },
    {
        "release": "WORK_ORDER_NOT_RECEIVED",
        "start": "WORK_ORDER_NOT_RELEASED",
        "close": "WORK_ORDER_COMPLETED",
    },
)

RUN_STATES = {"PREP", "AUTHORIZED", "IN_PROGRESS", "ON_HOLD", "COMPLETED", "CLOSED_REWORK", "SCRAPPED"}
RUN_TERMINAL = frozenset({"COMPLETED", "CLOSED_REWORK", "SCRAPPED"})
RUN = Machine(
    "Run",
    frozenset(RUN_STATES),
    {
        "authorize": {"PREP": "AUTHORIZED"},
        "revoke": {"AUTHORIZED": "PREP"},
        "start": {"AUTHORIZED": "IN_PROGRESS"},
        "complete": {"IN_PROGRESS": "COMPLETED"},
        "hold": {"IN_PROGRESS": "ON_HOLD"},
        "mrb_release": {"ON_HOLD": "COMPLETED"},
        "mrb_rework": {"ON_HOLD": "CLOSED_REWORK"},
        "mrb_scrap": {"ON_HOLD": "SCRAPPED"},
    },
    {
        "authorize": "RUN_NOT_READY",
        "revoke": "RUN_NOT_AUTHORIZED",
        "start": "RUN_NOT_AUTHORIZED",
        "complete": "RUN_NOT_CLOSABLE",
        "hold": "RUN_NOT_CLOSABLE",
        "mrb_release": "RUN_NOT_ON_HOLD",
        "mrb_rework": "RUN_NOT_ON_HOLD",
        "mrb_scrap": "RUN_NOT_ON_HOLD",
    },
)

UNIT_STATES = {"QUEUED", "IN_STATION", "OUT_FAILED", "DONE", "ON_HOLD", "SCRAPPED"}
UNIT_TERMINAL = frozenset({"DONE", "SCRAPPED"})
UNIT = Machine(
    "Unit",
    frozenset(UNIT_STATES),
    {
        "track_in": {"QUEUED": "IN_STATION"},
        "pass_next": {"IN_STATION": "QUEUED"},
        "pass_last": {"IN_STATION": "DONE"},
        "fail": {"IN_STATION": "OUT_FAILED"},
        # One ingest event moves a queued unit through a whole step.
        "ingest_pass_next": {"QUEUED": "QUEUED"},
        "ingest_pass_last": {"QUEUED": "DONE"},
        "ingest_fail": {"QUEUED": "OUT_FAILED"},
        # Dispositions (Ours: the unit must have failed, or be on hold).
        "rework": {"OUT_FAILED": "QUEUED", "ON_HOLD": "QUEUED"},
        "scrap": {"OUT_FAILED": "SCRAPPED", "ON_HOLD": "SCRAPPED", "QUEUED": "SCRAPPED"},
        "hold": {"OUT_FAILED": "ON_HOLD", "QUEUED": "ON_HOLD"},
        "release": {"ON_HOLD": "QUEUED"},
        "mrb_scrap": _all(UNIT_STATES, "SCRAPPED"),
        # MRB rework moves every unit of the parent run, even scrapped ones (reference behaviour).
        "mrb_rework": _all(UNIT_STATES, "QUEUED"),
    },
    {
        "track_in": "UNIT_NOT_QUEUED",
        "rework": "UNIT_NOT_FAILED",
        "hold": "UNIT_NOT_FAILED",
        "scrap": "UNIT_NOT_FAILED",
        "release": "UNIT_NOT_HELD",
    },
)

INSPECTION_STATES = {"PENDING", "INSPECTING", "PASS", "FAIL", "CANCELLED"}
INSPECTION = Machine(
    "Inspection",
    frozenset(INSPECTION_STATES),
    {"start": {"PENDING": "INSPECTING"}, "pass": {"INSPECTING": "PASS"}, "fail": {"INSPECTING": "FAIL"}},
    {
        "start": "INVALID_INSPECTION_STATUS",
        "pass": "INSPECTION_NOT_INSPECTING",
        "fail": "INSPECTION_NOT_INSPECTING",
    },
)

DEFECT = Machine(
    "Defect",
    frozenset({"RECORDED", "DISPOSITIONED", "CLOSED"}),
    {
        "disposition": {"RECORDED": "DISPOSITIONED"},
        "scrap": {"RECORDED": "CLOSED"},
        "close": {"DISPOSITIONED": "CLOSED"},
    },
    {
        "disposition": "ALREADY_DISPOSITIONED",
        "scrap": "ALREADY_DISPOSITIONED",
        "close": "DEFECT_NOT_DISPOSITIONED",
    },
)

REWORK_TASK = Machine(
    "ReworkTask",
    frozenset({"OPEN", "DONE", "CANCELLED"}),
    {"complete": {"OPEN": "DONE"}, "cancel": {"OPEN": "CANCELLED"}},
    {"complete": "REWORK_NOT_OPEN", "cancel": "REWORK_NOT_OPEN"},
)

MES_EVENT = Machine(
    "MesEvent",
    frozenset({"PENDING", "PROCESSING", "COMPLETED", "FAILED"}),
    {
        "claim": {"PENDING": "PROCESSING", "FAILED": "PROCESSING"},
        # Taking back an event a crashed worker left in PROCESSING (the caller checks it is stale).
        "reclaim": {"PROCESSING": "PROCESSING"},
        "succeed": {"PROCESSING": "COMPLETED"},
        "fail": {"PROCESSING": "FAILED"},
        "retry": {"FAILED": "PENDING", "PENDING": "PENDING"},
    },
    {"claim": "EVENT_NOT_CLAIMABLE"},
)

# Loading (domain.md §3 "Loading"): a run's expectation per slot, and the scan records.
LOADING_EXPECTATION = Machine(
    "LoadingExpectation",
    frozenset({"PENDING", "LOADED", "MISMATCH"}),
    {
        "load": {"PENDING": "LOADED", "MISMATCH": "LOADED"},  # PASS / WARNING scan
        "mismatch": {"PENDING": "MISMATCH", "MISMATCH": "MISMATCH"},  # FAIL scan
        "replace": {"LOADED": "LOADED"},  # replace with a fitting lot
        "replace_fail": {"LOADED": "MISMATCH"},  # replace with a wrong lot
    },
    {
        "load": "SLOT_ALREADY_LOADED",
        "mismatch": "SLOT_ALREADY_LOADED",
        "replace": "SLOT_NOT_LOADED",
        "replace_fail": "SLOT_NOT_LOADED",
    },
)

LOADING_RECORD = Machine(
    "LoadingRecord",
    frozenset({"LOADED", "UNLOADED", "REPLACED"}),
    {"replace": {"LOADED": "REPLACED"}},
    {"replace": "LOADING_RECORD_NOT_LOADED"},
)

MACHINES = (
    WORK_ORDER,
    RUN,
    UNIT,
    INSPECTION,
    DEFECT,
    REWORK_TASK,
    MES_EVENT,
    LOADING_EXPECTATION,
    LOADING_RECORD,
)
