"""Demo plant seed: request options and the summary of what was loaded."""

from __future__ import annotations

from central.schemas.base import CamelModel, OutModel


class DemoSeedIn(CamelModel):
    force: bool = False


class DemoSeedOut(OutModel):
    """Rows created per kind, whether force was used, and the edge agent's API key (shown once)."""

    roles: int
    users: int
    line_bindings: int
    station_bindings: int
    api_keys: int
    lines: int
    station_groups: int
    stations: int
    tpm_equipment: int
    operations: int
    data_specs: int
    routings: int
    execution_configs: int
    route_versions: int
    materials: int
    material_lots: int
    bom_items: int
    feeder_slots: int
    slot_mappings: int
    stencil_bindings: int
    stencil_status_records: int
    solder_paste_bindings: int
    solder_paste_status_records: int
    oqc_sampling_rules: int
    work_orders: int
    runs: int
    units: int
    forced: bool
    edge_api_key: str
