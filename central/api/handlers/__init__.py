"""Every handler module's router, in the order they appear in the OpenAPI document."""

from central.api.handlers import audit, auth, catalog, plant, routing, system, tpm, users

ROUTERS = [
    system.router,
    auth.router,
    users.router,
    plant.router,
    routing.router,
    catalog.router,
    tpm.router,
    audit.router,
]
