"""Request/response shapes of materials, material lots and BOM lines."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from central.schemas.base import CamelModel, ListQuery, OutModel, UtcTime

# Material codes and lot numbers travel in paths (/trace/material-lots/{materialCode}/{lotNo}).
MaterialCode = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s/\\?#%]+$")]
LotNo = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s/\\?#%]+$")]


class MaterialCreate(CamelModel):
    code: MaterialCode
    name: str = Field(min_length=1, max_length=200)
    category: str | None = Field(None, max_length=64)
    unit: str | None = Field(None, max_length=32)


class MaterialQuery(ListQuery):
    category: str | None = Field(None, max_length=500)
    is_active: bool | None = None


class MaterialOut(OutModel):
    id: int
    code: str
    name: str
    category: str | None
    unit: str | None
    source_system: str
    is_active: bool
    created_at: UtcTime
    updated_at: UtcTime


class MaterialLotCreate(CamelModel):
    material_code: MaterialCode
    lot_no: LotNo
    supplier: str | None = Field(None, max_length=200)
    iqc_result: str | None = Field(None, max_length=32, pattern=r"^[A-Z][A-Z_]*$")


class MaterialLotQuery(ListQuery):
    material_code: str | None = Field(None, max_length=500)
    lot_no: str | None = Field(None, max_length=128)


class MaterialLotOut(OutModel):
    id: int
    material_code: str
    lot_no: str
    supplier: str | None
    iqc_result: str | None
    created_at: UtcTime
    updated_at: UtcTime


class BomItemCreate(CamelModel):
    """Quantity as `qty`, or as `numerator`/`denominator` (qty = numerator / denominator); not both."""

    parent_code: MaterialCode
    child_code: MaterialCode
    qty: float | None = Field(None, gt=0, le=1e9)
    numerator: float | None = Field(None, gt=0, le=1e9)
    denominator: float | None = Field(None, gt=0, le=1e9)
    unit: str | None = Field(None, max_length=32)

    @model_validator(mode="after")
    def _one_quantity_form(self) -> BomItemCreate:
        ratio = self.numerator is not None or self.denominator is not None
        if self.qty is None and not ratio:
            raise ValueError("give qty, or numerator (and optionally denominator)")
        if self.qty is not None and ratio:
            raise ValueError("give either qty or numerator/denominator, not both")
        if ratio and self.numerator is None:
            raise ValueError("denominator needs a numerator")
        return self


class BomQuery(ListQuery):
    parent_code: str | None = Field(None, max_length=500)
    child_code: str | None = Field(None, max_length=500)


class BomItemOut(OutModel):
    id: int
    parent_code: str
    child_code: str
    qty: float
    numerator: float
    denominator: float
    unit: str | None
    source_system: str
    created_at: UtcTime
    updated_at: UtcTime
