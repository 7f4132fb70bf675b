"""Every handler module's router, in the order they appear in the OpenAPI document."""

from central.api.handlers import (
    audit,
    auth,
    catalog,
    demo,
    execution,
    plant,
    readiness,
    route_config,
    routing,
    runs,
    system,
    tpm,
    trace,
    users,
    work_orders,
)

ROUTERS = [
    system.router,
    demo.router,
    auth.router,
    users.router,
    plant.router,
    routing.router,
    route_config.router,
    catalog.router,
    tpm.router,
    readiness.router,
    work_orders.router,
    runs.router,
    execution.router,
    trace.router,
    audit.router,
]
