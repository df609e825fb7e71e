"""The shipped profiles never pass a key a caller adds to an address or a history entry (privacy review F2).

These objects were once kept whole under open schemas, so a phone, an e-mail, an IMEI, a customer id or a
resident registration number put into them reached the partner raw, and the ledger recorded only the
parent as kept. Each case runs the route's own first example through the real compiled policy (example
key) with such keys added: on `unknown_fields: drop` routes they are dropped and reported as dropped, on
`reject` routes the request is refused naming only field paths.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.errors import FieldNotAllowed
from gateway.profiles import ProfileSet, example_pseudonymiser, load_profiles
from gateway.resources import shipped
from gateway.strictjson import parse_json

EXTRA = {"phone": "+821055501234", "email": "leak.marker@example.org", "imei": "490154203237518",
         "customer_id": "qx-c-LEAKMARK", "resident_registration_number": "900101-1234567"}

CARRIERS = ("cn-sfexpress", "hk-hongkongpost", "id-vr1express", "in-indiapost", "jp-yamato", "kr-hanjin",
            "my-poslaju", "sg-ninjavan", "tw-hct", "us-ups")
CASES = [
    *((f"carrier-{carrier}", route, container) for carrier in CARRIERS
      for route, container in (("create-shipment", "sender.address"), ("create-shipment", "recipient.address"),
                               ("correct-recipient", "recipient.address"))),
    ("seller-qstore-merchant", "forward-order", "shipping_address"),
    ("customs-kr-yuhan-technos", "file-declaration", "importer.address"),
    ("law-enforcement-kr", "answer-legal-request", "fraud_complaints[]"),
    ("law-enforcement-kr", "answer-legal-request", "purchase_history[]"),
    ("law-enforcement-kr", "answer-legal-request", "listing_history[]"),
]


@pytest.fixture(scope="module")
def shipped_set() -> ProfileSet:
    return load_profiles(shipped("partner_profiles"), pseudonymiser=example_pseudonymiser(), environ={})


def add_extra_keys(body: dict[str, Any], container: str) -> None:
    """EXTRA added to the object at `container` (`a.b`), or to every element of the array (`a[]`, one made
    when the example has none)."""
    *parents, last = container.removesuffix("[]").split(".")
    node = body
    for name in parents:
        node = node[name]
    if container.endswith("[]"):
        node.setdefault(last, [{}])
        for element in node[last]:
            element.update(EXTRA)
    else:
        node[last].update(EXTRA)


def named_or_marked(prefix: str, paths: set[str]) -> bool:
    """Every extra key is in `paths`: by name when the profile writes that name somewhere, else as the
    parent's marker `prefix*` (a caller-chosen name is never recorded as such)."""
    return all(f"{prefix}{name}" in paths or f"{prefix}*" in paths for name in EXTRA)


@pytest.mark.parametrize(("partner", "route_id", "container"), CASES, ids=[f"{p}/{r}/{c}" for p, r, c in CASES])
def test_a_key_added_to_a_formerly_open_object_never_reaches_the_partner(
        shipped_set: ProfileSet, partner: str, route_id: str, container: str) -> None:
    route = shipped_set.profiles[partner].route(route_id)
    example = next(example for example in route.examples if example.expect is not None)
    body = copy.deepcopy(example.request.body)
    add_extra_keys(body, container)
    policy = route.policy
    validated = policy.validate_request(parse_json(orjson.dumps(body)))
    prefix = container + "."
    if policy.unknown_fields == "reject":
        with pytest.raises(FieldNotAllowed) as refused:
            policy.minimise_validated(validated, list(example.request.query), dict(example.request.path),
                                      dict(example.request.headers))
        problem = orjson.dumps(refused.value.to_problem("/x")).decode()
        assert named_or_marked(prefix, {v.path for v in refused.value.violations})
        assert not any(value in problem for value in EXTRA.values())
        return
    minimised = policy.minimise_validated(validated, list(example.request.query), dict(example.request.path),
                                          dict(example.request.headers))
    sent = minimised.canonical_body().decode()
    for value in EXTRA.values():
        if value != "+821055501234" or value not in orjson.dumps(example.request.body).decode():
            assert value not in sent, (value, sent)
    *parents, last = container.split(".")
    node = orjson.loads(sent)
    for name in parents:
        node = node[name]
    assert not set(EXTRA) & set(node[last]), sent
    # The extra keys are reported dropped (names the profile writes, else the parent's marker), never kept.
    assert named_or_marked(prefix, set(minimised.report.dropped))
    assert container not in minimised.report.kept
