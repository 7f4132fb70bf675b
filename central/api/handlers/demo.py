"""Load the demo plant over HTTP (demo-plant.md; only when MES_ALLOW_DEMO_SEED=true)."""

from __future__ import annotations

from central.api.registry import Router
from central.api.request import Req
from central.domain.errors import Forbidden
from central.schemas.demo import DemoSeedIn, DemoSeedOut
from central.services import demo_seed

router = Router(tag="system", entity_type="SYSTEM_CONFIG")


@router.post("/system/demo-seed", perms=("system:demo_seed",), action="DEMO_SEED")
async def seed_demo(rq: Req, body: DemoSeedIn | None = None) -> DemoSeedOut:
    """Load the demo plant (refused on production data unless force); returns the edge API key."""
    if not rq.settings.allow_demo_seed:
        raise Forbidden("DEMO_SEED_DISABLED", "Demo seeding is disabled (set MES_ALLOW_DEMO_SEED=true)")
    return await rq.write(demo_seed.seed_demo, rq.settings, force=bool(body and body.force))
