"""Walks every state machine table: each allowed move lands where the table says, every other is refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from central.domain.errors import Rejected
from central.domain.states import MACHINES, RUN, UNIT, WORK_ORDER, Machine


@dataclass
class Thing:
    status: str


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.entity)
def test_every_transition_of_the_table(machine: Machine) -> None:
    for action, moves in machine.table.items():
        assert set(moves) <= machine.states and set(moves.values()) <= machine.states, action
        for state in sorted(machine.states):
            thing = Thing(state)
            if state in moves:
                assert machine.apply(thing, action) == state
                assert thing.status == moves[state]
            else:
                with pytest.raises(Rejected) as err:
                    machine.apply(thing, action)
                assert thing.status == state  # a refused move changes nothing
                assert err.value.code == machine.refusals.get(
                    action, f"INVALID_{machine.entity.upper()}_STATUS"
                )


def test_documented_refusal_codes() -> None:
    with pytest.raises(Rejected, match="cannot release") as e:
        WORK_ORDER.target("RELEASED", "release")
    assert e.value.code == "WORK_ORDER_NOT_RECEIVED"
    assert RUN.target("PREP", "authorize") == "AUTHORIZED"
    with pytest.raises(Rejected) as e:
        RUN.target("IN_PROGRESS", "authorize")
    assert e.value.code == "RUN_NOT_READY"
    with pytest.raises(Rejected) as e:
        RUN.target("IN_PROGRESS", "mrb_scrap")
    assert e.value.code == "RUN_NOT_ON_HOLD"


def test_completed_work_order_never_regresses_through_erp() -> None:
    for action in ("erp_received", "erp_released", "erp_in_progress"):
        assert not WORK_ORDER.allows("COMPLETED", action)
    assert WORK_ORDER.target("IN_PROGRESS", "erp_received") == "RECEIVED"


def test_terminal_units_cannot_be_tracked() -> None:
    for state in ("DONE", "SCRAPPED", "OUT_FAILED", "ON_HOLD", "IN_STATION"):
        assert not UNIT.allows(state, "track_in")
