"""Request/response shapes of TPM equipment and maintenance tasks (local copies of the TPM system)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, Field, computed_field

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime
from central.schemas.routing import Code

# TPM status/type words are the TPM system's own strings ("normal", "REPAIR", "in_progress", …).
TpmWord = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_ .\-]*$")]


class TpmEquipmentCreate(CamelModel):
    equipment_code: Code
    name: str | None = Field(None, max_length=200)
    status: TpmWord = "normal"


class TpmEquipmentUpdate(CamelModel):
    name: str | None = Field(None, max_length=200)
    status: TpmWord | None = None


class TpmEquipmentQuery(ListQuery):
    status: str | None = Field(None, max_length=500)


class TpmEquipmentOut(OutModel):
    id: int
    equipment_code: str
    name: str | None
    status: str
    meta: dict[str, Any]
    created_at: UtcTime
    updated_at: UtcTime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def available(self) -> bool:
        """Status "normal" (any case) = available to production (the track-in TPM gate)."""
        return self.status.lower() == "normal"


class TpmTaskCreate(CamelModel):
    task_no: Code
    equipment_code: str = Field(min_length=1, max_length=64)
    type: TpmWord | None = None
    status: TpmWord
    started_at: AwareDatetime | None = None


class TpmTaskUpdate(CamelModel):
    status: TpmWord | None = None
    type: TpmWord | None = None
    completed_at: AwareDatetime | None = None


class TpmTaskQuery(ListQuery):
    equipment_code: str | None = Field(None, max_length=500)
    status: str | None = Field(None, max_length=500)


class TpmTaskOut(OutModel):
    id: int
    task_no: str
    equipment_code: str
    type: str | None
    status: str
    started_at: UtcTime | None
    completed_at: UtcTime | None
    meta: dict[str, Any]
    created_at: UtcTime
    updated_at: UtcTime
