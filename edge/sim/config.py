"""Configuration of the simulated line (`mes-sim line --config FILE`), validated once with the field path."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.sim import layout

StationKind = Literal["print", "mount", "reflow", "spi", "aoi", "ict"]
MODBUS_KINDS = ("print", "mount", "reflow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SnSource(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    """Board serial numbers: a list, or prefix + zero-padded number (central's `generate-units` format)."""

    prefix: str | None = Field(default=None, max_length=60)
    start: int = Field(default=1, ge=0)
    width: int = Field(default=4, ge=1, le=12)
    sns: list[str] | None = Field(default=None, alias="list")

    @model_validator(mode="after")
    def _one(self) -> SnSource:
        if (self.prefix is None) == (self.sns is None):
            raise ValueError("give either prefix (with start/width) or list")
        if self.sns is not None and not self.sns:
            raise ValueError("list: must not be empty")
        return self

    def sn(self, i: int) -> str | None:
        """The i-th board's SN (0-based), None when a list is exhausted."""
        if self.sns is not None:
            return self.sns[i] if i < len(self.sns) else None
        return f"{self.prefix}{self.start + i:0{self.width}d}"


class SimStation(_Strict):
    """One machine of the line, in flow order: print/mount/reflow are Modbus PLCs, spi/aoi/ict testers."""

    code: str = Field(min_length=1, max_length=64)
    kind: StationKind
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 = any free port (tests)")
    unit_id: int = Field(default=1, ge=1, le=247)
    buffer: int = Field(default=32, ge=0, description="records kept by the machine (0 = last record only)")
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    lot_size: int = Field(default=4, ge=1, le=layout.LOT_MAX_SNS, description="reflow: boards per oven lot")

    @model_validator(mode="after")
    def _limits(self) -> SimStation:
        limit = layout.max_buffer(self.kind)
        if self.buffer > limit:
            raise ValueError(f"buffer: at most {limit} records for a {self.kind} station")
        if self.kind != "reflow" and self.lot_size != 4:
            raise ValueError("lot_size: only a reflow station makes lots")
        return self

    @property
    def protocol(self) -> str:
        return "modbus" if self.kind in MODBUS_KINDS else "opcua"


class SimLineConfig(_Strict):
    code: str = "LINE-B"
    takt: float = Field(default=2.0, gt=0, le=3600, description="seconds per board per station")
    boards: int = Field(default=0, ge=0, description="boards to produce; 0 = until stopped")
    seed: int | None = None
    run_no: str | None = Field(
        default=None, description="written into tester records (SPI/AOI results need it)"
    )
    ground_truth: Path | None = Field(default=None, description="JSON-lines log of every record made")
    sn: SnSource
    stations: list[SimStation] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SimLineConfig:
        codes = [s.code for s in self.stations]
        for i, c in enumerate(codes):
            if c in codes[:i]:
                raise ValueError(f"stations.{i}.code: {c!r} is listed twice")
        ports = [(s.host, s.port) for s in self.stations if s.port]
        for i, p in enumerate(ports):
            if p in ports[:i]:
                raise ValueError(f"stations: port {p[1]} on {p[0]} is used twice")
        return self


class SimConfigError(Exception):
    pass


def load_sim_config(path: Path) -> SimLineConfig:
    """Read and validate a TOML file; the error lists every problem with its path."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SimConfigError(f"{path}: {exc}") from exc
    line = data.pop("line", {})
    try:
        return SimLineConfig.model_validate({**line, **data})
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise SimConfigError(f"{path}:\n  " + "\n  ".join(lines)) from exc
