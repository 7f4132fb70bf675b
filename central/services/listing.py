"""Pagination, sort and search with allow-lists (api.md Lists); never string-built SQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.domain.errors import MesError
from central.schemas.base import ListQuery


def split_csv(value: str | None) -> list[str]:
    """Multi-value filters are comma-separated: status=PREP,AUTHORIZED."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def order_by(sort: str | None, allowed: dict[str, Any], default: str = "createdAt.desc") -> list[Any]:
    """`sort=field.asc,rel.field.desc` against the endpoint's allow-list; unknown → 422."""
    clauses = []
    for part in split_csv(sort) or [default]:
        field, _, direction = part.rpartition(".")
        if not field:
            field, direction = direction, "asc"
        direction = direction.lower()
        if field not in allowed or direction not in ("asc", "desc"):
            raise MesError(
                "VALIDATION_FAILED",
                f"Unsupported sort {part!r}; allowed: {', '.join(sorted(allowed))} with .asc or .desc",
                422,
                details=[
                    {"loc": ["query", "sort"], "msg": f"unsupported sort {part!r}", "type": "value_error"}
                ],
            )
        col = allowed[field]
        clauses.append(col.asc() if direction == "asc" else col.desc())
    return clauses


def search_filter(term: str | None, columns: list[Any]) -> ColumnElement[bool] | None:
    if not term or not columns:
        return None
    # LIKE wildcards in the user's text are matched literally.
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(*(func.lower(c).like(f"%{escaped}%", escape="\\") for c in columns))


async def paginate(
    session: AsyncSession,
    stmt: Select[Any],
    q: ListQuery,
    *,
    sort_fields: dict[str, Any],
    search: list[Any] | None = None,
    default_sort: str = "createdAt.desc",
    scalars: bool = True,
) -> dict[str, Any]:
    cond = search_filter(q.search, search or [])
    if cond is not None:
        stmt = stmt.where(cond)
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    ordered = stmt.order_by(*order_by(q.sort, sort_fields, default_sort))
    pk = stmt.column_descriptions[0]["entity"]
    if pk is not None and hasattr(pk, "id"):
        ordered = ordered.order_by(pk.id.desc())  # stable pages when sort keys tie
    ordered = ordered.limit(q.page_size).offset((q.page - 1) * q.page_size)
    rows = (await session.scalars(ordered)).all() if scalars else (await session.execute(ordered)).all()
    return {"items": list(rows), "total": total or 0, "page": q.page, "page_size": q.page_size}
