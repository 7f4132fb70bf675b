"""Readiness checks, waivers, exceptions board and per-line configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from central.schemas.base import MAX_PAGE, CamelModel

ItemType = Literal["EQUIPMENT", "MATERIAL", "ROUTE", "STENCIL", "SOLDER_PASTE", "LOADING"]


class LatestQuery(CamelModel):
    type: Literal["PRECHECK", "FORMAL"] | None = None


class WaiveBody(CamelModel):
    reason: str = Field(min_length=1, max_length=2000)


class ExceptionsQuery(CamelModel):
    line_id: str | None = Field(None, max_length=64)
    status: str | None = Field(None, max_length=100)
    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None
    page: int = Field(1, ge=1, le=MAX_PAGE)
    limit: int = Field(20, ge=1, le=100)


class ReadinessConfig(CamelModel):
    # Only the types of the current phase; PREP_* and TIME_RULE come later (→ 422 now).
    enabled: list[ItemType] = Field(max_length=20)
