"""The profile loader: a valid profile loads completely; each broken variant names file, line and reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.errors import ConfigError, SchemaViolation
from gateway.profiles import ProfileLoadError, ProfileProblem, ValueSource, load_profiles
from gateway.pseudonyms import Pseudonymiser

WriteProfile = Callable[..., Path]


def line_of(text: str, needle: str) -> int:
    """The line holding `needle` (`needle#2`: its second occurrence)."""
    needle, _, nth = needle.partition("#")
    occurrence = int(nth or 1)
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in the profile")


def problems(folder: Path, pseudonymiser: Pseudonymiser, environ: dict[str, str] | None = None) -> list[ProfileProblem]:
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV if environ is None else environ)
    assert isinstance(caught.value, ConfigError)
    return caught.value.problems


def test_valid_profile_loads(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    profile_set = load_profiles(write_profile(), pseudonymiser=pseudonymiser, environ=ENV)
    profile = profile_set.profiles["carrier-xx-test"]
    assert profile.upstream.base_url == "http://127.0.0.1:9999/carrier"
    assert profile.upstream.retries == 1  # a plain ${VAR:-1} is typed like the literal
    assert profile.upstream.keep_alive  # the default


def test_keep_alive_false_loads(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = VALID_PROFILE.replace("retries: ${TEST_RETRIES:-1}", "retries: 1\n  keep_alive: false", 1)
    profile = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles["carrier-xx-test"]
    assert profile.upstream.keep_alive is False
    assert profile.upstream.auth is not None
    assert profile.upstream.auth.value == "Bearer secret-token-value"
    assert "secret-token-value" not in repr(profile)
    assert profile.limits.max_concurrency == 4
    route = profile.route("create-shipment")
    assert route.subject == ValueSource("body", "recipient.customer_id")
    assert route.residency == ValueSource("value", "", "VN")
    assert route.media_types == ("application/json",)
    assert profile.route("track").purposes == ("delivery", "support")
    assert route.read(route.subject, {"recipient": {"customer_id": "c-9"}}, (), {}, {}) == "c-9"
    assert route.path_params == ("shipment_id",)


def test_missing_environment_variable(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    found = problems(write_profile(), pseudonymiser, environ={})
    assert found == [ProfileProblem(str(write_profile() / "carrier-xx-test.yaml"),
                                    line_of(VALID_PROFILE, "token: ${TEST_CARRIER_TOKEN}"),
                                    "environment variable TEST_CARRIER_TOKEN is not set (and has no default)")]


BROKEN = [
    # (replace this, with this, the line holding this text, a fragment of the reason)
    ("id: carrier-xx-test", "id: carrier-yy-test", "id: carrier-yy-test", "must equal the file name"),
    ("  - id: track", "  - id: create-shipment", "  - id: create-shipment#2", "duplicate route id"),
    ("      path:\n        shipment_id: keep\n      headers:", "      headers:", "path: /shipments/{shipment_id}",
     "path parameter {shipment_id} has no policy under request.path"),
    ("    consent: null", "    consent: marketing", "consent: marketing",
     "consent purpose 'marketing' is not declared"),
    ("    purpose: delivery", "    purpose: legal_obligation", "purpose: legal_obligation",
     "needs legal_reference_required: true"),
    ("note: \"ring twice, my phone is [redacted:phone]\"", "note: \"ring twice, my phone is +84912345678\"",
     "  - name: a shipment", "example 'a shipment' fails: body note"),
    ("expect_error: {status: 422, paths: [recipient.phone]}", "expect_error: {status: 422, paths: [order_id]}",
     "  - name: a bad phone", "expected refusal at order_id"),
    ("category: carrier", "category: courier", "category: courier", "category"),
    ("jurisdiction: VN", "jurisdiction: vn", "jurisdiction: vn", "jurisdiction"),
    ("    legal_basis: contract\n    subject", "    legal_basis: contract\n    colour: red\n    subject",
     "colour: red", "unknown key(s) 'colour'"),
    ("        order_id: keep", "        order_id: {pseudonymise: {type: ssn, mode: hmac}}", "order_id: {pseudonymise",
     "pseudonymise type must be one of"),
    ("        order_id: keep", "        order_id: keep\n        order_id.x: keep", "order_id.x: keep",
     "already has an action"),
    ("        tracking_number: keep", "        tracking_number: keep\n        tracking_number: drop",
     "tracking_number: drop", "duplicate key 'tracking_number'"),
    ("        shipment_id: keep\n      headers", "        shipment_id: drop\n      headers", "shipment_id: drop",
     "cannot be dropped"),
    ("        order_id: keep", "        order_id: {reidentify: {type: phone}}", "order_id: {reidentify",
     "responses only"),
    ("          order_id: {type: string}", "          order_id: {type: strin}", "schema:", "not valid JSON Schema"),
    ("timeouts: {connect: 1.0, total: 5.0}", "timeouts: {connect: 9.0, total: 5.0}", "timeouts:",
     "connect timeout cannot exceed"),
    ("  - id: track\n    method: GET\n    path: /shipments/{shipment_id}/tracking",
     "  - id: track\n    method: POST\n    path: /shipments/{shipment_id}", "path: /shipments/{shipment_id}#2",
     "same method and path shape"),
    ("retries: ${TEST_RETRIES:-1}", "retries: [", "retries: [", "YAML syntax"),
    ("retries: ${TEST_RETRIES:-1}", "retries: 1\n  keep_alive: nope", "keep_alive: nope", "must be of type boolean"),
    ("        shipment_id: keep\n      headers",
     "        shipment_id: keep\n      path_schema:\n        order: {type: string}\n      headers",
     "order: {type: string}", "request.path_schema.order is not a parameter"),
    ("        shipment_id: keep\n      headers",
     "        shipment_id: keep\n      path_schema:\n        shipment_id: {type: strin}\n      headers",
     "shipment_id: {type: strin}", "request.path_schema.shipment_id: schema is not valid"),
]


@pytest.mark.parametrize(("old", "new", "line_text", "reason"), BROKEN, ids=[case[3][:40] for case in BROKEN])
def test_each_check_names_file_line_and_reason(write_profile: WriteProfile, pseudonymiser: Pseudonymiser, old: str,
                                               new: str, line_text: str, reason: str) -> None:
    assert old in VALID_PROFILE
    text = VALID_PROFILE.replace(old, new, 1)
    folder = write_profile(text)
    found = problems(folder, pseudonymiser)
    assert any(reason in problem.reason for problem in found), found
    matching = next(problem for problem in found if reason in problem.reason)
    assert matching.file == str(folder / "carrier-xx-test.yaml")
    expected_line = line_of(text, line_text)
    # A YAML syntax error is reported where the parser notices it: at or just after the bad line.
    assert matching.line is not None
    assert 0 <= matching.line - expected_line <= (2 if "YAML" in reason else 0), (matching, expected_line)
    assert str(matching).startswith(f"{matching.file}:{matching.line}: ")


def test_problems_of_all_files_are_collected(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    write_profile(VALID_PROFILE.replace("consent: null", "consent: nope"))
    folder = write_profile(VALID_PROFILE.replace("id: carrier-xx-test", "id: other-zz"), name="other-zz.yaml")
    (folder / "other-zz.yaml").write_text(
        VALID_PROFILE.replace("id: carrier-xx-test", "id: other-zz").replace("category: carrier", "category: x"))
    found = problems(folder, pseudonymiser)
    assert {Path(problem.file).name for problem in found} == {"carrier-xx-test.yaml", "other-zz.yaml"}
    message = str(ProfileLoadError(found))
    assert "carrier-xx-test.yaml:" in message
    assert "other-zz.yaml:" in message


def test_secrets_are_never_quoted_in_problems(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = VALID_PROFILE.replace("    token: ${TEST_CARRIER_TOKEN}", "    token: ${TEST_CARRIER_TOKEN}\n    extra: 1")
    found = problems(write_profile(text), pseudonymiser)
    assert found
    assert all("secret-token-value" not in str(problem) for problem in found)


def test_secret_from_a_file(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = VALID_PROFILE.replace("    type: bearer\n    token: ${TEST_CARRIER_TOKEN}",
                                 "    type: header\n    header: X-Api-Key\n    value_file: api.key")
    folder = write_profile(text)
    (folder / "api.key").write_text("from-file\n")
    auth = load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV).profiles["carrier-xx-test"].upstream.auth
    assert auth is not None
    assert (auth.header, auth.value) == ("X-Api-Key", "from-file")
    (folder / "api.key").unlink()
    assert "cannot read value_file" in problems(folder, pseudonymiser)[0].reason


def test_empty_or_missing_folder(tmp_path: Path, pseudonymiser: Pseudonymiser) -> None:
    for folder in (tmp_path, tmp_path / "missing"):
        with pytest.raises(ProfileLoadError) as caught:
            load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV)
        assert caught.value.problems[0].line is None


SUBSTITUTED = [
    # (replace this, with this (a value from the environment), the environment value, the path and rule)
    ("base_url: ${TEST_CARRIER_URL:-http://127.0.0.1:9999/carrier}", "base_url: ${TEST_CARRIER_URL}",
     "https://svc-user:S3cr3t-Pw@carrier.example/v1", "upstream.base_url: does not match the required pattern"),
    ("retries: ${TEST_RETRIES:-1}", "retries: ${TEST_RETRIES}", "S3cr3t-Pw", "upstream.retries: must be of type"),
    ("retries: ${TEST_RETRIES:-1}", "retries: ${TEST_RETRIES}", "99", "upstream.retries: must be at most 5"),
    ("jurisdiction: VN", "jurisdiction: ${TEST_JURISDICTION}", "S3cr3t-Pw",
     "jurisdiction: does not match the required pattern"),
    ("category: carrier", "category: ${TEST_CATEGORY}", "S3cr3t-Pw", "category: must be one of: analytics"),
    ("name: Test carrier", "name: ${TEST_NAME}", "S3cr3t-Pw" * 30, "name: must have at most 200 character(s)"),
    ("    consent: null", "    consent: ${TEST_CONSENT}", "S3cr3t Pw", "routes.0.consent: "),
]


@pytest.mark.parametrize(("old", "new", "value", "reason"), SUBSTITUTED, ids=[case[3][:40] for case in SUBSTITUTED])
def test_schema_problems_name_path_and_rule_never_the_value(write_profile: WriteProfile, pseudonymiser: Pseudonymiser,
                                                           old: str, new: str, value: str, reason: str) -> None:
    """Auth review F8: jsonschema's messages quote the value, and a value may come from the environment
    (a password in a URL); the reload's 422 body and log line show these reasons."""
    assert old in VALID_PROFILE
    text = VALID_PROFILE.replace(old, new, 1)
    variable = new.split("${", 1)[1].split("}", 1)[0]
    environ = {**ENV, variable: value}
    found = problems(write_profile(text), pseudonymiser, environ=environ)
    assert any(reason in problem.reason for problem in found), found
    matching = next(problem for problem in found if reason in problem.reason)
    assert matching.line == line_of(text, new.strip().split("\n")[0])
    message = str(ProfileLoadError(found))
    assert "S3cr3t" not in message
    assert value not in message


def test_a_path_parameter_schema_refuses_a_value_that_does_not_fit(write_profile: WriteProfile,
                                                                   pseudonymiser: Pseudonymiser) -> None:
    """`request.path_schema` pins a path parameter like a body field: a value that does not fit is refused
    (422 schema-violation at `path:NAME`, the rule named, never the value) before it reaches the partner's
    URL; one that fits passes unchanged."""
    text = VALID_PROFILE.replace(
        "        shipment_id: keep\n      headers",
        "        shipment_id: keep\n      path_schema:\n"
        "        shipment_id: {type: string, pattern: '^S-[0-9]{1,6}$'}\n      headers", 1)
    route = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles[
        "carrier-xx-test"].route("create-shipment")
    body = {"order_id": "O-1", "recipient": {"phone": "+84912345678"}}
    minimised = route.policy.minimise_request(body, (), {"shipment_id": "S-17"}, {})
    assert minimised.path_params == {"shipment_id": "S-17"}
    assert "path:shipment_id" in minimised.report.kept
    with pytest.raises(SchemaViolation) as caught:
        route.policy.minimise_request(body, (), {"shipment_id": "490154203237518"}, {})
    assert caught.value.status == 422
    assert [(v.path, v.reason) for v in caught.value.violations] == [
        ("path:shipment_id", "does not match the required pattern")]
    assert "490154203237518" not in str(caught.value)
    # The other route's parameter of the same name has no schema: only the route matcher's rules apply.
    track = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles[
        "carrier-xx-test"].route("track")
    assert track.policy.minimise_request(None, (), {"shipment_id": "X 1"}, {}).path_params == {"shipment_id": "X 1"}
