"""The loader refuses response header names the gateway owns or that describe the partner's connection or
bytes (review-partner F5), credential header names that would reframe the partner request, and
credentials that cannot travel in a header (F6). Each refusal names file, line and reason; a credential's
value is never quoted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.profiles import ProfileLoadError, ProfileProblem, load_profiles
from gateway.profiles.headers import CREDENTIAL_HEADER_REFUSALS, RESPONSE_HEADER_REFUSALS
from gateway.pseudonyms import Pseudonymiser

WriteProfile = Callable[..., Path]
PROFILE_FILE = "carrier-xx-test.yaml"
BEARER = "    type: bearer\n    token: ${TEST_CARRIER_TOKEN}"
RESPONSE = "    response:\n      body:\n        tracking_number: keep\n"


def line_of(text: str, needle: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), start=1) if needle in line)


def problems(folder: Path, pseudonymiser: Pseudonymiser, environ: dict[str, str] | None = None) -> list[ProfileProblem]:
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV if environ is None else environ)
    return caught.value.problems


def with_response_headers(*names: str) -> str:
    assert RESPONSE in VALID_PROFILE
    lines = "".join(f"        {name}: keep\n" for name in names)
    return VALID_PROFILE.replace(RESPONSE, RESPONSE + "      headers:\n" + lines, 1)


@pytest.mark.parametrize("name", ["x-disclosure-id", "X-Request-ID", "Set-Cookie", "Content-Encoding", "Date",
                                  "SERVER", "Location", "Upgrade", "Trailer", "Connection", "Keep-Alive",
                                  "Transfer-Encoding", "Content-Length", "Alt-Svc", "WWW-Authenticate",
                                  "Access-Control-Allow-Origin", "Clear-Site-Data", "Link",
                                  "Content-Disposition", "Cache-Control", "Expires", "Vary"])
def test_a_reserved_response_header_is_refused_with_file_line_and_reason(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser, name: str) -> None:
    text = with_response_headers("Content-Type", name)
    folder = write_profile(text)
    (problem,) = problems(folder, pseudonymiser)
    assert problem.file == str(folder / PROFILE_FILE)
    assert problem.line == line_of(text, f"        {name}: keep")
    assert problem.reason.startswith(f"route create-shipment: response.headers.{name}: the partner's "
                                     f"{name.lower()!r} header cannot be passed on: ")
    assert problem.reason.endswith(RESPONSE_HEADER_REFUSALS[name.lower()])


def test_every_problem_is_listed(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    found = problems(write_profile(with_response_headers("Date", "Set-Cookie", "x-request-id")), pseudonymiser)
    assert len(found) == 3


def test_ordinary_response_headers_load(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    """Content-Type is declared by most profiles; the gateway writes its own, so it stays allowed."""
    text = with_response_headers("Content-Type", "X-Partner-Note", "Retry-After", "ETag")
    profile = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles["carrier-xx-test"]
    assert set(profile.route("create-shipment").policy.response_actions("headers")) == {
        "Content-Type", "X-Partner-Note", "Retry-After", "ETag"}


@pytest.mark.parametrize("name", ["Content-Length", "host", "Transfer-Encoding", "X-Request-Id", "x-disclosure-id",
                                  "Connection", "Content-Type", "Expect", "Upgrade", "TE"])
def test_a_credential_header_that_reframes_the_request_is_refused(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser, name: str) -> None:
    text = VALID_PROFILE.replace(BEARER, f"    type: header\n    header: {name}\n    value: \"0\"", 1)
    folder = write_profile(text)
    (problem,) = problems(folder, pseudonymiser)
    assert problem.line == line_of(text, f"header: {name}")
    assert problem.reason == (f"upstream.auth.header: {name.lower()!r} cannot carry the credential: "
                              f"{CREDENTIAL_HEADER_REFUSALS[name.lower()]}")


@pytest.mark.parametrize("name", ["X-Api-Key", "Authorization", "apikey"])
def test_an_ordinary_credential_header_loads(write_profile: WriteProfile, pseudonymiser: Pseudonymiser,
                                             name: str) -> None:
    text = VALID_PROFILE.replace(BEARER, f"    type: header\n    header: {name}\n    value: ApiKey k-1", 1)
    auth = load_profiles(write_profile(text), pseudonymiser=pseudonymiser,
                         environ=ENV).profiles["carrier-xx-test"].upstream.auth
    assert auth is not None
    assert (auth.header, auth.value) == (name, "ApiKey k-1")


BAD_CREDENTIALS = {
    "crlf": "abc\r\nX-Injected: 1",
    "lf": "abc\nX-Injected: 1",
    "nul": "abc\x00def",
    "vertical-tab": "abc\x0bdef",
    "del": "abc\x7fdef",
    "tab": "abc\tdef",
    "non-latin-1": "tok\u20acen",
    "latin-1": "caf\u00e9",
    "double-space": "abc  def",
}


@pytest.mark.parametrize("secret", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_a_credential_from_the_environment_that_cannot_travel_is_refused_unquoted(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser, secret: str) -> None:
    folder = write_profile()
    found = problems(folder, pseudonymiser, environ={"TEST_CARRIER_TOKEN": secret})
    (problem,) = found
    assert problem.line == line_of(VALID_PROFILE, "token: ${TEST_CARRIER_TOKEN}")
    assert problem.reason.startswith("upstream.auth.token: the credential must be visible ASCII")
    assert problem.reason.endswith("its value is not shown")
    message = str(ProfileLoadError(found))
    assert secret not in message
    assert "X-Injected" not in message
    assert "\u20ac" not in message
    assert "caf" not in message


@pytest.mark.parametrize("kind", ["header", "basic"])
def test_a_credential_file_with_a_line_break_inside_is_refused(write_profile: WriteProfile,
                                                               pseudonymiser: Pseudonymiser, kind: str) -> None:
    if kind == "header":
        auth, key = "    type: header\n    header: X-Api-Key\n    value_file: api.key", "value_file"
    else:
        auth, key = "    type: basic\n    username: svc\n    password_file: api.key", "password_file"
    text = VALID_PROFILE.replace(BEARER, auth, 1)
    folder = write_profile(text)
    (folder / "api.key").write_text("first-half\r\nsecond-half\n")  # the trailing line break is stripped
    (problem,) = problems(folder, pseudonymiser)
    assert problem.line == line_of(text, f"{key}: api.key")
    assert problem.reason.startswith(f"upstream.auth.{key}: the credential must")
    assert "half" not in problem.reason

    (folder / "api.key").write_text("first-half second-half\n")
    load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV)
    (folder / "api.key").write_bytes(b"\xff\xfe-not-text")
    (problem,) = problems(folder, pseudonymiser)
    assert problem.reason == f"cannot read {key}: it is not UTF-8 text"


def test_basic_credentials_may_be_non_ascii_but_not_control_characters(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    """Basic credentials travel base64-encoded (UTF-8, RFC 7617)."""
    text = VALID_PROFILE.replace(BEARER, "    type: basic\n    username: ${USER_NAME}\n    password: ${PASSWORD}", 1)
    folder = write_profile(text)
    auth = load_profiles(folder, pseudonymiser=pseudonymiser, environ={"USER_NAME": "jos\u00e9",
                                                                       "PASSWORD": "p\u00e4ss w"}
                         ).profiles["carrier-xx-test"].upstream.auth
    assert auth is not None
    assert auth.value.isascii()
    found = problems(folder, pseudonymiser, environ={"USER_NAME": "svc\n", "PASSWORD": "pw\x7f"})
    assert [(problem.line, problem.reason) for problem in found] == [
        (line_of(text, "username:"), "upstream.auth.username: must not contain a control character or line break; "
                                     "its value is not shown"),
        (line_of(text, "password:"), "upstream.auth.password: the credential must not contain a control character "
                                     "or line break; its value is not shown")]


def test_a_basic_username_with_a_colon_is_refused_a_password_with_one_loads(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    """RFC 7617: the first colon ends the user-id, so `svc:eu` would reach the partner as user `svc`; a
    password may hold colons (pinned after final review Q6 asked)."""
    basic = "    type: basic\n    username: %s\n    password: ${PASSWORD}"
    folder = write_profile(VALID_PROFILE.replace(BEARER, basic % '"svc"', 1))
    load_profiles(folder, pseudonymiser=pseudonymiser, environ={"PASSWORD": "a:b:c"})
    text = VALID_PROFILE.replace(BEARER, basic % '"svc:eu"', 1)
    folder = write_profile(text)
    (problem,) = problems(folder, pseudonymiser, environ={"PASSWORD": "pw"})
    # The profile schema's username pattern refuses it (reported on the auth block).
    assert problem.line == line_of(text, "type: basic") - 1
    assert "svc:eu" not in problem.reason
