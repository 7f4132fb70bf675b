"""The OpenAPI document validates as 3.1 and lists exactly the routes the server has."""

from __future__ import annotations

from openapi_spec_validator import validate

from central.api.app import all_endpoints
from tests.client import Api


async def test_openapi_document_is_valid_3_1_and_complete(api: Api) -> None:
    r = await api.client.get("/api/openapi.json")
    doc = await r.json()
    assert r.status == 200 and doc["openapi"].startswith("3.1")
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(ep.method, "/api" + ep.path) for ep in all_endpoints()}
    router_routes = {
        (res.method, res.resource.canonical) for res in api.client.app.router.routes() if res.method != "HEAD"
    }
    assert documented == served == router_routes


async def test_openapi_uses_the_handlers_schemas(api: Api) -> None:
    doc = await (await api.client.get("/api/openapi.json")).json()
    sign_in = doc["paths"]["/api/auth/sign-in/email"]["post"]
    body_ref = sign_in["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert set(body["required"]) == {"email", "password"}
    ok_schema = sign_in["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok_schema["properties"]["data"]["$ref"].endswith("/SignInOut")
    assert sign_in["security"] == []
    roles = doc["paths"]["/api/roles"]["get"]
    assert "system:role_manage" in roles["description"]


async def test_docs_page_renders_every_operation(api: Api) -> None:
    r = await api.client.get("/api/docs")
    html = await r.text()
    assert r.status == 200 and r.content_type == "text/html"
    for ep in all_endpoints():
        assert f"/api{ep.path}".replace("{", "{") in html
