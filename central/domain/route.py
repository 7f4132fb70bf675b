"""Reading a compiled route snapshot (domain.md §2): steps in stepNo order, first/next step."""

from __future__ import annotations

from typing import Any

Step = dict[str, Any]


def steps(snapshot: dict[str, Any] | None) -> list[Step]:
    return sorted((snapshot or {}).get("steps") or [], key=lambda s: int(s["stepNo"]))


def step(snapshot: dict[str, Any] | None, step_no: int) -> Step | None:
    return next((s for s in steps(snapshot) if int(s["stepNo"]) == step_no), None)


def first_step_no(snapshot: dict[str, Any] | None) -> int | None:
    ordered = steps(snapshot)
    return int(ordered[0]["stepNo"]) if ordered else None


def next_step_no(snapshot: dict[str, Any] | None, current: int) -> int | None:
    """Smallest stepNo greater than `current` in sorted order (never current + 1: steps are sparse)."""
    return next((int(s["stepNo"]) for s in steps(snapshot) if int(s["stepNo"]) > current), None)


def requires_fai(snapshot: dict[str, Any] | None) -> bool:
    return any(s.get("requiresFAI") for s in steps(snapshot))


def station_fits(step: Step, *, station_id: int, station_type: str, group_id: int | None) -> bool:
    """domain.md §2: same type ∧ (no allowed list ∨ listed) ∧ (no group ∨ the station's group)."""
    allowed = {str(x) for x in step.get("allowedStationIds") or ()}  # ids may arrive as digit strings
    group = step.get("stationGroupId")
    return (
        step.get("stationType") == station_type
        and (not allowed or str(station_id) in allowed)
        and (group is None or group == group_id)
    )
