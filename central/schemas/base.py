"""Base pydantic models shared by the API and the services: camelCase on the wire, snake_case in code."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from central.domain.clock import iso

# Responses carry UTC with `Z` and milliseconds (architecture.md §8).
UtcTime = Annotated[datetime, PlainSerializer(iso, return_type=str | None, when_used="json")]

# Ids are BIGINT: a larger number from a client is refused (422), never sent to the database (5xx).
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]
StepNo = Annotated[int, Field(ge=1, le=1_000_000)]
MAX_PAGE = 1_000_000_000  # page × pageSize stays far inside the BIGINT an OFFSET takes


def parse_row_id(raw: str) -> int | None:
    """An id written as text (path segment, `lineId` filter), or None when it cannot be one.

    `str.isdigit()` alone admits "²" (which int() refuses) and other non-ASCII digits.
    """
    if not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value <= MAX_ROW_ID else None


class CamelModel(BaseModel):
    """Request bodies: camelCase aliases, snake_case names also accepted, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", str_strip_whitespace=True
    )


class OutModel(BaseModel):
    """Responses: built from ORM objects or dicts, serialised by alias."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


T = TypeVar("T")


class Page(OutModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    page_size: int


class ListQuery(CamelModel):
    """The common list query of api.md: page, pageSize (≤100), search, sort=field.asc,other.desc."""

    # Every filter is bounded (200 unless a field says otherwise): any documented query fits the server's
    # request-line limit, so an over-long value gets the 422 envelope, not the HTTP parser's plain 400.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", str_max_length=200
    )

    page: int = Field(1, ge=1, le=MAX_PAGE)
    page_size: int = Field(20, ge=1, le=100)
    search: str | None = Field(None, max_length=200)
    sort: str | None = Field(None, max_length=200)


class Deleted(OutModel):
    id: int | str
    deleted: bool = True


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True)
