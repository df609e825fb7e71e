"""schemas/openapi.yaml against the running gateway.

- The document is what /openapi.json serves, describes every route the app registers (and nothing it
  does not), every status of the design's egress table, and publishes exactly the request schemas the
  admin handlers validate with.
- schemathesis (its Python API, real sockets to the gateway on an ephemeral port) generates requests from
  the document for the operations, admin and egress endpoints, valid and invalid ones, and finds no 500
  and no response that breaks the document (status, content type, headers, body schema); invalid input
  must be refused with a 4xx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import yaml
from admin_helpers import RAW_SUBJECT, AdminHarness, ThreadedGateway
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.cli.token import mint_token
from gateway.proxy.admin import REQUEST_SCHEMAS

OPENAPI = Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
DESIGN_EGRESS_STATUSES = {"400", "401", "403", "404", "413", "415", "422", "429", "451", "502", "503", "504"}
METHODS = ("get", "post", "put", "patch", "delete")
# Examples per operation and generation mode: small enough for the whole run to take well under a minute
# on a shared 2-core machine.
MAX_EXAMPLES = 12
DISCLOSE_ANALYTICS = "disclose:analytics-infinity-valley:analytics"


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return loaded


async def test_served_document_is_the_shipped_one_and_covers_every_route(admin: AdminHarness) -> None:
    async with admin.session.get(admin.url + "/openapi.json") as resp:
        assert resp.status == 200
        served = orjson.loads(await resp.read())
    document = spec()
    assert served == document
    assert document["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, item in document["paths"].items() for method in item
                 if method in METHODS}
    registered: set[tuple[str, str]] = set()
    for route in admin.gateway.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if route.method == "HEAD":
            continue
        # The egress routes are registered as "*" on /v1/partners/{partner_id}[/{tail:.*}].
        if path.startswith("/v1/partners/"):
            assert route.method == "*"
            continue
        registered.add((route.method, path))
    assert registered <= described, registered - described
    assert described - registered == {(m.upper(), "/v1/partners/{partner_id}/{path}") for m in METHODS}


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_every_status_of_the_design_table_is_described_for_the_egress_route() -> None:
    document = spec()
    egress = document["paths"]["/v1/partners/{partner_id}/{path}"]
    for method in METHODS:
        responses = egress[method]["responses"]
        assert set(responses) >= DESIGN_EGRESS_STATUSES, method
        assert "X-Disclosure-Id" in responses["200"]["headers"]
        for status in DESIGN_EGRESS_STATUSES:
            body = resolve(document, responses[status])["content"]["application/problem+json"]["schema"]
            assert body == {"$ref": "#/components/schemas/Problem"}
    problem = spec()["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert "violations" in problem["properties"]


def test_published_request_schemas_are_the_ones_the_handlers_validate_with() -> None:
    published = spec()["components"]["schemas"]
    for name, schema in REQUEST_SCHEMAS.items():
        assert published[name] == schema, name


def test_no_raw_subject_id_can_be_put_in_a_url_by_the_document() -> None:
    for path, item in spec()["paths"].items():
        assert "subject_id" not in path
        for method, operation in item.items():
            if method not in METHODS:
                continue
            for parameter in operation.get("parameters", []):
                assert "subject_id" not in parameter.get("name", ""), (path, method)


# -- schemathesis against the running server ----------------------------------------------------------------
RESPONSE_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
                   response_headers_conformance, response_schema_conformance]


def _token(gateway: ThreadedGateway, scopes: list[str]) -> str:
    assert gateway.keys.jwt_dev_private is not None
    return mint_token(gateway.keys.jwt_dev_private, subject="privacy-office", scopes=scopes,
                      issuer=gateway.settings.jwt_issuer, audience=gateway.settings.jwt_audience, ttl_seconds=600)


def _run_operation(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str],
                   session: requests.Session, seen: list[int]) -> None:
    checks = RESPONSE_CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=15)
        seen.append(response.status_code)
        assert RAW_SUBJECT not in response.text
        case.validate_response(response, checks=checks, headers=headers)

    try:
        exercise()
    except Unsatisfiable:
        # An operation without parameters or body (/healthz, /readyz) has no invalid input to generate.
        if mode is not GenerationMode.NEGATIVE:
            raise


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_and_no_response_outside_the_document(
    threaded_admin_gateway: ThreadedGateway,
) -> None:
    gateway = threaded_admin_gateway
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", timeout=10)
    # Tokens: an admin (reads and changes, plus one disclosure scope), and none at all.
    admin_token = _token(gateway, ["gateway:admin", "gateway:audit", DISCLOSE_ANALYTICS])
    statuses: dict[str, list[int]] = {}
    exercised = set()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/metrics" or operation.path == "/openapi.json":
                modes = [GenerationMode.POSITIVE]
            else:
                modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            label = f"{operation.method.upper()} {operation.path}"
            exercised.add(label)
            for mode in modes:
                for headers in ({"Authorization": f"Bearer {admin_token}"}, {}):
                    _run_operation(operation, mode, gateway.url, headers, session, statuses.setdefault(label, []))
    assert "POST /v1/admin/subjects/consent" in exercised
    assert "GET /v1/admin/disclosures" in exercised
    assert "POST /v1/partners/{partner_id}/{path}" in exercised
    # The run reached the handlers, not only the authentication in front of them.
    assert 200 in statuses["GET /v1/admin/disclosures"]
    assert 200 in statuses["POST /v1/admin/subjects/hold"]
    assert any(s in (400, 422) for s in statuses["POST /v1/admin/subjects/minor"])
    assert 500 not in {s for codes in statuses.values() for s in codes}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.timeout(120)
def test_egress_answers_on_a_shipped_route_conform_to_the_document(
    threaded_admin_gateway: ThreadedGateway,
) -> None:
    """The generated run above mostly meets unknown partners (404); here the shipped consent-gated route
    answers 200, 403, 400, 415, 422 and 404, and every answer is validated against the egress operation."""
    gateway = threaded_admin_gateway
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", timeout=10)
    operation = schema["/v1/partners/{partner_id}/{path}"]["POST"]
    admin_headers = {"Authorization": "Bearer " + _token(gateway, ["gateway:admin"])}
    disclose_headers = {"Authorization": "Bearer " + _token(gateway, [DISCLOSE_ANALYTICS])}
    url = f"{gateway.url}/v1/partners/analytics-infinity-valley/v1/usage"
    case = operation.Case(path_parameters={"partner_id": "analytics-infinity-valley", "path": "v1/usage"})
    body = {"user": {"id": RAW_SUBJECT, "country": "VN"}, "device": {"model": "X"}, "events": [{"name": "open"}]}
    seen: set[int] = set()

    def send(data: bytes, content_type: str = "application/json", target: str = url) -> requests.Response:
        response = requests.post(target, data=data, timeout=15,
                                 headers={**disclose_headers, "Content-Type": content_type})
        seen.add(response.status_code)
        assert RAW_SUBJECT not in response.text
        case.validate_response(response, checks=RESPONSE_CHECKS, headers=disclose_headers)
        return response

    assert send(orjson.dumps(body)).status_code == 403  # no consent yet
    granted = requests.post(f"{gateway.url}/v1/admin/subjects/consent", headers=admin_headers, timeout=15,
                            json={"subject_id": RAW_SUBJECT, "purpose": "analytics", "action": "grant"})
    assert granted.status_code == 200
    ok = send(orjson.dumps(body))
    assert ok.status_code == 200
    assert ok.headers["X-Disclosure-Id"]
    assert send(orjson.dumps({**body, "events": "none"})).status_code == 422
    assert send(b'{"user": {"id": "a", "id": "b"}}').status_code == 400
    assert send(orjson.dumps(body), "text/plain").status_code == 415
    assert send(orjson.dumps(body), target=url.replace("/v1/usage", "/v2/usage")).status_code == 404

    @hypothesis_settings(max_examples=25, deadline=None, database=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))
    @given(extra=JSON_VALUES)
    def generated(extra: Any) -> None:
        send(orjson.dumps({**body, "device": extra}))
        send(orjson.dumps(extra))

    generated()
    assert seen >= {200, 400, 403, 404, 415, 422}
