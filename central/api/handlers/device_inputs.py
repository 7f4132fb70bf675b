"""SPI/AOI inspection results and device data pushed by equipment or keyed in (domain.md §4.4, §4.5, §11)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.schemas.base import Page
from central.schemas.device_inputs import (
    DeviceDataIn,
    DeviceDataOut,
    DeviceDataQuery,
    DeviceDataReceipt,
    InspectionResultIn,
    InspectionResultOut,
    InspectionResultQuery,
    InspectionResultReceipt,
)
from central.services import device_data, inspection_results
from central.services.device_inputs import PERMS

router = Router(tag="integration", entity_type="INTEGRATION")


@router.post("/integration/inspection-result", perms=PERMS, action=inspection_results.ACTION)
async def receive_inspection_result(rq: Req, body: InspectionResultIn) -> InspectionResultReceipt:
    """Record an SPI/AOI result; a FAIL records its defects and fails that track's track-out."""
    return await rq.write(inspection_results.receive_inspection_result, body)


@router.get("/integration/inspection-results", perms=PERMS)
async def list_inspection_results(rq: Req, query: InspectionResultQuery) -> Page[InspectionResultOut]:
    """SPI/AOI results (runNo, unitSn, stationCode, inspectionType, result: comma lists; event window)."""
    return await rq.read(inspection_results.list_inspection_results, query)


@router.post("/integration/device-data", perms=PERMS, action=device_data.ACTION)
async def receive_device_data(rq: Req, body: DeviceDataIn) -> DeviceDataReceipt:
    """Record device data values against a track or carrier track; never moves a unit."""
    return await rq.write(device_data.receive_device_data, body)


@router.get("/integration/device-data", perms=PERMS)
async def list_device_data(rq: Req, query: DeviceDataQuery) -> Page[DeviceDataOut]:
    """Device-data receipts (eventId, runNo, unitSn, stationCode, source: comma lists; stepNo; window)."""
    return await rq.read(device_data.list_device_data, query)
