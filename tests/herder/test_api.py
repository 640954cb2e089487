"""What every route shares: JSON errors, CORS, the OpenAPI schema and docs."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_unknown_route_is_a_json_404():
    response = Client().get("/no/such/route")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "No such route."}


def test_cors_is_open_on_api_routes():
    response = Client().options(
        "/minion/v1/spawn", HTTP_ORIGIN="https://webstrates.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST"
    )
    assert response["Access-Control-Allow-Origin"] == "*"


def test_cors_is_not_opened_on_the_admin():
    response = Client().get("/admin/login/", HTTP_ORIGIN="https://webstrates.example")
    assert "Access-Control-Allow-Origin" not in response


def test_openapi_schema_lists_the_minion_route():
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    operation = schema["paths"]["/minion/v1/spawn"]["post"]
    assert operation["operationId"] == "minion_spawn"
    assert "413" in operation["responses"]


def test_docs_page_renders_with_local_assets():
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"cdn.jsdelivr" not in response.content
