"""Loading scans (domain.md §6 Verify / Replace): barcode → lot, judge against the load table, lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from central.db.models import (
    FeederSlot,
    LoadingRecord,
    Material,
    MaterialLot,
    Run,
    RunSlotExpectation,
)
from central.domain.clock import iso, utcnow
from central.domain.errors import Conflict, NotFound, Rejected
from central.domain.states import LOADING_EXPECTATION, LOADING_RECORD
from central.schemas.loading import ReplaceBody, VerifyBody
from central.services.loading import prep_run, record_fields
from central.services.loading_config import ENTITY
from central.services.uow import UnitOfWork

SEPARATORS = ("|", ":", "@", "#")  # barcode "material<sep>lot", tried in this order
LOCK_AFTER = 3  # consecutive FAIL scans that lock a slot


# ---- shared guards -------------------------------------------------------------------------------


def split_barcode(barcode: str) -> tuple[str, str] | None:
    """`MAT|LOT` → (MAT, LOT): the first of `|` `:` `@` `#` (in that order) not at either end; else None."""
    for sep in SEPARATORS:
        i = barcode.find(sep)
        if 0 < i < len(barcode) - 1:
            material, lot = barcode[:i].strip(), barcode[i + 1 :].strip()
            if material and lot:
                return material, lot
    return None


def _operator(uow: UnitOfWork, given: str | None) -> str:
    if given and given.strip():
        return given.strip()
    if uow.actor.user_id is not None and uow.actor.name:  # session user or the API key's user
        return uow.actor.name
    raise Rejected("OPERATOR_REQUIRED", "An operator is required (operatorId or a signed-in user)")


@dataclass
class SlotScan:
    """A slot of the run's line, locked for the scan, with the run's expectation for it."""

    slot: FeederSlot
    expectation: RunSlotExpectation


async def _slot(uow: UnitOfWork, run: Run, slot_code: str) -> SlotScan:
    stmt = select(FeederSlot).where(FeederSlot.line_id == run.line_id, FeederSlot.slot_code == slot_code)
    slot = await uow.session.scalar(stmt.with_for_update())
    if slot is None:
        raise NotFound("SLOT_NOT_FOUND", f"Slot {slot_code} not found on the line of run {run.run_no}")
    if slot.is_locked:
        raise Conflict(
            "SLOT_LOCKED",
            f"Slot {slot_code} is locked ({slot.locked_reason}); it must be unlocked first",
            details={"slotId": slot.id, "lockedAt": iso(slot.locked_at)},
        )
    exp = await uow.session.scalar(
        select(RunSlotExpectation)
        .where(RunSlotExpectation.run_id == run.id, RunSlotExpectation.slot_id == slot.id)
        .with_for_update()
    )
    if exp is None:
        raise Rejected(
            "SLOT_EXPECTATION_MISSING",
            f"Run {run.run_no} has no expectation for slot {slot_code} (load table?)",
        )
    return SlotScan(slot, exp)


async def _resolve_barcode(uow: UnitOfWork, barcode: str) -> tuple[str, str, MaterialLot | None]:
    """(materialCode, lotNo, existing lot or None when a split barcode names a new lot)."""
    s = uow.session
    parts = split_barcode(barcode)
    if parts is not None:
        code, lot_no = parts
        lot = await s.scalar(
            select(MaterialLot).where(MaterialLot.material_code == code, MaterialLot.lot_no == lot_no)
        )
        return code, lot_no, lot
    lots = list((await s.scalars(select(MaterialLot).where(MaterialLot.lot_no == barcode).limit(20))).all())
    if not lots:
        raise NotFound("MATERIAL_LOT_NOT_FOUND", f"No material lot {barcode}")
    if len(lots) > 1:
        raise Rejected(
            "MATERIAL_LOT_AMBIGUOUS",
            f"Lot {barcode} exists for several materials; scan material{SEPARATORS[0]}lot",
            details={"materialCodes": sorted({x.material_code for x in lots})},
        )
    return lots[0].material_code, lots[0].lot_no, lots[0]


async def _ensure_lot(uow: UnitOfWork, code: str, lot_no: str, lot: MaterialLot | None) -> MaterialLot:
    """The scanned lot, created (upsert) when a `material|lot` barcode names one not seen before."""
    if lot is not None:
        return lot
    s = uow.session
    new = MaterialLot(material_code=code, lot_no=lot_no, meta={"source": "LOADING_SCAN"})
    try:
        async with s.begin_nested():
            s.add(new)
            await s.flush()
    except IntegrityError:  # created concurrently by another scan
        found = await s.scalar(
            select(MaterialLot).where(MaterialLot.material_code == code, MaterialLot.lot_no == lot_no)
        )
        if found is None:
            raise
        return found
    uow.audit(
        new.id,
        f"{code}/{lot_no}",
        entity_type="MATERIAL_LOT",
        action="MATERIAL_LOT_CREATE",
        after={"materialCode": code, "lotNo": lot_no},
        payload={"source": "LOADING_SCAN"},
    )
    return new


def _judge(code: str, exp: RunSlotExpectation) -> tuple[str, str | None]:
    if code == exp.expected_material_code:
        return "PASS", None
    alternates = [str(a) for a in exp.alternates or []]
    if code in alternates:
        return "WARNING", None
    allowed = ", ".join([exp.expected_material_code, *alternates])
    return "FAIL", f"Material {code} does not match slot expectation ({allowed})"


def _state(st: SlotScan) -> dict[str, Any]:
    return {
        "expectationStatus": st.expectation.status,
        "loadedMaterialCode": st.expectation.loaded_material_code,
        "failedAttempts": st.slot.failed_attempts,
        "isLocked": st.slot.is_locked,
        "currentMaterialLotId": st.slot.current_material_lot_id,
    }


async def _scan(
    uow: UnitOfWork,
    run: Run,
    st: SlotScan,
    lot: MaterialLot,
    body: VerifyBody | ReplaceBody,
    operator: str,
    *,
    replacing: bool,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Judge the lot against the expectation, write the record and move expectation and slot."""
    s = uow.session
    now = utcnow()
    exp, slot = st.expectation, st.slot
    before = _state(st)
    result, fail_reason = _judge(lot.material_code, exp)
    material = await s.scalar(select(Material).where(Material.code == lot.material_code))
    good = result != "FAIL"
    rec = LoadingRecord(
        run_id=run.id,
        slot_id=slot.id,
        material_lot_id=lot.id,
        material_code=lot.material_code,
        expected_code=exp.expected_material_code,
        status="LOADED" if good else "UNLOADED",
        verify_result=result,
        fail_reason=fail_reason,
        loaded_at=now,
        loaded_by=operator,
        package_qty=body.package_qty,
        reviewed_by=body.reviewed_by or None,
        reviewed_at=now if body.reviewed_by else None,
        material_validation="KNOWN" if material is not None else "UNKNOWN",
        meta=meta,
    )
    s.add(rec)
    if good:
        LOADING_EXPECTATION.apply(exp, "replace" if replacing else "load")
        exp.loaded_material_code, exp.loaded_at, exp.loaded_by = lot.material_code, now, operator
        slot.current_material_lot_id = lot.id
        slot.failed_attempts, slot.is_locked, slot.locked_at, slot.locked_reason = 0, False, None, None
    else:
        LOADING_EXPECTATION.apply(exp, "replace_fail" if replacing else "mismatch")
        if replacing:  # the old reel is off and the new one is wrong: nothing valid sits in the slot
            slot.current_material_lot_id = None
            exp.loaded_material_code, exp.loaded_at, exp.loaded_by = None, None, None
        slot.failed_attempts = (slot.failed_attempts or 0) + 1
        if slot.failed_attempts >= LOCK_AFTER and not slot.is_locked:
            slot.is_locked, slot.locked_at = True, now
            slot.locked_reason = (
                f"{slot.failed_attempts} consecutive failed scans (last: {lot.material_code})"
            )
    await s.flush()
    display = f"{run.run_no}/{slot.slot_code}"
    uow.audit(
        rec.id,
        display,
        entity_type=ENTITY,
        action="LOADING_REPLACE" if replacing else "LOADING_VERIFY",
        before=before,
        after={**_state(st), "verifyResult": result, "materialCode": lot.material_code, "lotNo": lot.lot_no},
        payload={**(uow.ctx.payload or {}), "verifyResult": result, "failReason": fail_reason},
    )
    if slot.is_locked and not before["isLocked"]:
        uow.audit(
            slot.id,
            slot.slot_code,
            entity_type=ENTITY,
            action="FEEDER_SLOT_LOCK",
            before={"isLocked": False},
            after={
                "isLocked": True,
                "lockedReason": slot.locked_reason,
                "failedAttempts": slot.failed_attempts,
            },
        )
    return _scan_out(rec, run, st, lot, material)


def _scan_out(
    rec: LoadingRecord,
    run: Run,
    st: SlotScan,
    lot: MaterialLot,
    material: Material | None,
    *,
    idempotent: bool = False,
) -> dict[str, Any]:
    return {
        **record_fields(rec, run.run_no, st.slot.slot_code, lot.lot_no),
        "is_idempotent": idempotent,
        "material_known": material is not None,
        "material_name": material.name if material is not None else None,
        "expectation_status": st.expectation.status,
        "failed_attempts": st.slot.failed_attempts,
        "slot_locked": st.slot.is_locked,
    }


async def _loaded_records(uow: UnitOfWork, run: Run, slot: FeederSlot) -> list[LoadingRecord]:
    stmt = (
        select(LoadingRecord)
        .where(
            LoadingRecord.run_id == run.id, LoadingRecord.slot_id == slot.id, LoadingRecord.status == "LOADED"
        )
        .order_by(LoadingRecord.loaded_at.desc(), LoadingRecord.id.desc())
    )
    return list((await uow.session.scalars(stmt)).all())


# ---- verify / replace ----------------------------------------------------------------------------


async def verify(uow: UnitOfWork, body: VerifyBody) -> dict[str, Any]:
    operator = _operator(uow, body.operator_id)
    run = await prep_run(uow, body.run_no)
    st = await _slot(uow, run, body.slot_code)
    code, lot_no, lot = await _resolve_barcode(uow, body.material_lot_barcode)
    exp = st.expectation
    if exp.status == "LOADED":
        current = await _loaded_records(uow, run, st.slot)
        if code == exp.loaded_material_code and current:
            rec = current[0]
            rec_lot = await uow.session.get(MaterialLot, rec.material_lot_id)
            material = await uow.session.scalar(select(Material).where(Material.code == rec.material_code))
            assert rec_lot is not None
            uow.audit(
                rec.id,
                f"{run.run_no}/{st.slot.slot_code}",
                entity_type=ENTITY,
                action="LOADING_VERIFY",
                payload={**(uow.ctx.payload or {}), "isIdempotent": True},
            )
            return _scan_out(rec, run, st, rec_lot, material, idempotent=True)
        raise Conflict(
            "SLOT_ALREADY_LOADED",
            f"Slot {st.slot.slot_code} is loaded with {exp.loaded_material_code}; use replace to change it",
        )
    lot = await _ensure_lot(uow, code, lot_no, lot)
    return await _scan(
        uow, run, st, lot, body, operator, replacing=False, meta={"barcode": body.material_lot_barcode}
    )


async def replace(uow: UnitOfWork, body: ReplaceBody) -> dict[str, Any]:
    operator = _operator(uow, body.operator_id)
    run = await prep_run(uow, body.run_no)
    reason = (body.reason or "").strip()
    if not reason:
        raise Rejected("REASON_REQUIRED", "A reason is required to replace a loaded lot")
    st = await _slot(uow, run, body.slot_code)
    if st.expectation.status != "LOADED":
        raise Rejected(
            "SLOT_NOT_LOADED",
            f"Slot {body.slot_code} is {st.expectation.status}; verify loads it, not replace",
        )
    code, lot_no, lot = await _resolve_barcode(uow, body.new_material_lot_barcode)
    lot = await _ensure_lot(uow, code, lot_no, lot)
    now = utcnow()
    olds = await _loaded_records(uow, run, st.slot)
    for old in olds:
        LOADING_RECORD.apply(old, "replace")
        old.unloaded_at, old.unloaded_by = now, operator
    meta = {
        "barcode": body.new_material_lot_barcode,
        "replaceReason": reason,
        "replacedRecordIds": [r.id for r in olds],
    }
    return await _scan(uow, run, st, lot, body, operator, replacing=True, meta=meta)
