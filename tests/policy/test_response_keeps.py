"""A response `keep` passes scalars only (review-partner F2): an allowlisted name the author meant as a
scalar (`tracking_number`, `status`, `events[].facility`) must not carry a partner's whole object or array
(phones, e-mails, IMEIs, locations) to the caller. A container under a plain (or free-text) response keep
is dropped and reported as dropped under the declared path; `{keep: {open_subtree: true}}` passes it.
The request side is unchanged: there the loader checks kept containers against the route's schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.policy import CompiledRoutePolicy

MakePolicy = Callable[..., CompiledRoutePolicy]

PHONE = "+886912345678"
SUBTREE = {"recipient_phone": PHONE, "email": "kim@example.org", "imei": "490154203237518",
           "home": {"lat": 25.03391, "lon": 121.56452}}
SCALARS: list[Any] = ["T-1", 42, 1.5, True, False, None, ""]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_a_plain_response_keep_passes_a_scalar(make_policy: MakePolicy, value: Any) -> None:
    policy = make_policy(response_body={"tracking_number": "keep", "events[].facility": "keep", "tags[]": "keep"})
    result = policy.filter_response({"tracking_number": value, "events": [{"facility": value}], "tags": [value]}, {})
    assert result.body == {"tracking_number": value, "events": [{"facility": value}], "tags": [value]}
    assert result.report.kept == ("tracking_number", "events[].facility", "tags[]")
    assert result.report.dropped == ()


@pytest.mark.parametrize("container", [SUBTREE, [PHONE, {"ssn": "A123456789"}], {}, []], ids=["object", "array",
                                                                                            "empty-object",
                                                                                            "empty-array"])
def test_a_plain_response_keep_drops_an_object_or_array(make_policy: MakePolicy, container: Any) -> None:
    policy = make_policy(response_body={"tracking_number": "keep", "status": "keep", "shipment.state": "keep",
                                        "events[].facility": "keep", "events[].time": "keep", "tags[]": "keep"})
    answer = {"tracking_number": container, "status": "delivered", "shipment": {"state": container},
              "events": [{"facility": container, "time": "10:00"}, {"facility": "TPE"}], "tags": [container, "x"]}
    result = policy.filter_response(answer, {})
    assert result.body == {"status": "delivered", "events": [{"time": "10:00"}, {"facility": "TPE"}], "tags": ["x"]}
    assert set(result.report.dropped) == {"tracking_number", "shipment.state", "events[].facility", "tags[]"}
    assert PHONE not in repr(result)


def test_the_reviewers_answer_reaches_the_caller_without_the_subtrees(make_policy: MakePolicy) -> None:
    """t02_keep_subtree.py: personal data under `tracking_number` and `status`, both declared `keep`."""
    policy = make_policy(response_body={"tracking_number": "keep", "status": "keep"})
    answer = {"tracking_number": SUBTREE, "status": [f"{PHONE} called", {"ssn": "A123456789"}]}
    result = policy.filter_response(answer, {})
    assert result.body == {}
    assert set(result.report.dropped) == {"tracking_number", "status"}
    assert result.report.kept == ()


def test_a_free_text_response_keep_drops_a_container_too(make_policy: MakePolicy) -> None:
    """Free-text scanning finds identifiers, not names or registration numbers: a container under it
    would still pass whatever else it holds."""
    policy = make_policy(response_body={"note": {"keep": {"free_text": True}}}, free_text="redact")
    assert policy.filter_response({"note": {"ssn": "A123456789"}}, {}).body == {}
    result = policy.filter_response({"note": f"call {PHONE}"}, {})
    assert result.body == {"note": "call [redacted:phone]"}


def test_open_subtree_passes_the_whole_container(make_policy: MakePolicy) -> None:
    policy = make_policy(response_body={"label": {"keep": {"open_subtree": True}}, "pages[]": {"keep": {
        "open_subtree": True}}, "status": "keep"})
    answer = {"label": {"format": "pdf", "size": [100, 150]}, "pages": [{"n": 1}, "x"], "status": "ok"}
    result = policy.filter_response(answer, {})
    assert result.body == answer
    assert set(result.report.kept) == {"label", "pages[]", "status"}
    assert result.report.dropped == ()


def test_request_keeps_are_unchanged(make_policy: MakePolicy) -> None:
    """On the request side a kept container passes (the loader has checked it against the schema)."""
    policy = make_policy({"address": "keep", "tags[]": "keep"})
    body = {"address": {"line1": "1 Main St"}, "tags": [["a"], {"b": 1}]}
    assert policy.minimise_request(body, (), {}, {}).body == body
