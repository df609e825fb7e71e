"""The loader refuses a `keep` of an object or array whose route schema leaves it open (privacy review F2):
a kept parent passes its whole subtree, so any key a caller adds would reach the partner raw. Only
`{keep: {open_subtree: true}}` lets such a keep load, and the published table then says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from profile_texts import ENV, VALID_PROFILE

from gateway.errors import SchemaViolation
from gateway.profiles import ProfileLoadError, load_profiles
from gateway.profiles.render import shared_fields
from gateway.pseudonyms import Pseudonymiser
from gateway.strictjson import parse_json

WriteProfile = Callable[..., Path]

RECIPIENT_SCHEMA = """\
          recipient:
            type: object
            required: [phone]
            properties:
              phone: {type: string}
"""


def variant(recipient_schema: str, body_lines: str) -> str:
    """VALID_PROFILE with the recipient's schema and extra request-body actions replaced."""
    assert RECIPIENT_SCHEMA in VALID_PROFILE
    text = VALID_PROFILE.replace(RECIPIENT_SCHEMA, recipient_schema, 1)
    anchor = "        recipient.phone: {pseudonymise: {type: phone, mode: hmac}}\n"
    assert anchor in text
    return text.replace(anchor, anchor + body_lines, 1)


OPEN_ADDRESS = RECIPIENT_SCHEMA + """\
              address:
                type: object
                properties:
                  city: {type: string}
"""
CLOSED_ADDRESS = RECIPIENT_SCHEMA + """\
              address:
                type: object
                additionalProperties: false
                properties:
                  city: {type: string}
                  geo: {type: object, additionalProperties: false, properties: {lat: {type: number}}}
"""
NESTED_OPEN = RECIPIENT_SCHEMA + """\
              address:
                type: object
                additionalProperties: false
                properties:
                  city: {type: string}
                  geo: {type: object}
"""
OPEN_HISTORY = RECIPIENT_SCHEMA + """\
              history:
                type: array
                items: {type: object, properties: {order: {type: string}}}
"""
UNTYPED_ITEMS = RECIPIENT_SCHEMA + """\
              history: {type: array}
"""

REFUSED = [
    # (recipient schema, body action line, the reason's fragment naming where the schema is open)
    (OPEN_ADDRESS, "        recipient.address: keep\n", "recipient.address allows undeclared keys"),
    (OPEN_ADDRESS, "        recipient.address: {keep: {free_text: true}}\n",
     "recipient.address allows undeclared keys"),
    (OPEN_ADDRESS, "        recipient.address: {keep: null}\n", "recipient.address allows undeclared keys"),
    (NESTED_OPEN, "        recipient.address: keep\n", "recipient.address.geo allows undeclared keys"),
    (OPEN_HISTORY, "        recipient.history: keep\n", "recipient.history[] allows undeclared keys"),
    (UNTYPED_ITEMS, "        recipient.history: keep\n", "the schema does not describe recipient.history[]"),
    (OPEN_HISTORY, "        recipient.history[]: keep\n", "recipient.history[] allows undeclared keys"),
]


@pytest.mark.parametrize(("schema", "action", "reason"), REFUSED,
                         ids=[f"{n}:{case[2][:30]}" for n, case in enumerate(REFUSED)])
def test_keep_of_an_open_node_is_refused_with_file_line_and_reason(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser, schema: str, action: str, reason: str) -> None:
    text = variant(schema, action)
    folder = write_profile(text)
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(folder, pseudonymiser=pseudonymiser, environ=ENV)
    (problem,) = caught.value.problems
    assert problem.file == str(folder / "carrier-xx-test.yaml")
    assert problem.line == text.splitlines().index(action.rstrip("\n")) + 1
    assert reason in problem.reason
    assert "open_subtree: true" in problem.reason  # the refusal names the way out


def test_keep_of_a_closed_node_loads(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = variant(CLOSED_ADDRESS, "        recipient.address: keep\n")
    profile = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles["carrier-xx-test"]
    policy = profile.route("create-shipment").policy
    body = {"order_id": "O-1", "recipient": {"phone": "+84912345678", "address": {"city": "Hanoi", "imei": "1"}}}
    # The closed schema refuses the extra key before anything is minimised.
    with pytest.raises(SchemaViolation):
        policy.validate_request(parse_json(orjson.dumps(body)))


def test_open_subtree_is_an_explicit_opt_in_and_the_table_says_so(
        write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = variant(OPEN_ADDRESS, "        recipient.address: {keep: {open_subtree: true}}\n")
    profile = load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV).profiles["carrier-xx-test"]
    route = profile.route("create-shipment")
    (address,) = [field for field in shared_fields(route) if field.name == "recipient.address"]
    assert address.protection == "kept, whole, with any fields it holds"
    # What the opt-in means: an undeclared key passes (documented in docs/profile-format.md).
    body = {"order_id": "O-1", "recipient": {"phone": "+84912345678", "address": {"city": "Hanoi", "note": "x"}}}
    minimised = route.policy.minimise_validated(route.policy.validate_request(parse_json(orjson.dumps(body))),
                                                [], {"shipment_id": "S-1"}, {})
    assert orjson.loads(minimised.canonical_body())["recipient"]["address"] == {"city": "Hanoi", "note": "x"}


def test_open_subtree_takes_a_boolean(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = variant(OPEN_ADDRESS, "        recipient.address: {keep: {open_subtree: yes}}\n")
    with pytest.raises(ProfileLoadError) as caught:
        load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV)
    assert any("open_subtree" in problem.reason for problem in caught.value.problems), caught.value.problems


def test_keep_of_a_scalar_leaf_is_not_affected(write_profile: WriteProfile, pseudonymiser: Pseudonymiser) -> None:
    text = variant(OPEN_ADDRESS, "        recipient.address.city: keep\n")
    load_profiles(write_profile(text), pseudonymiser=pseudonymiser, environ=ENV)
