"""Fixtures for the policy tests: the real Pseudonymiser under a fixed test key, and a policy builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gateway.policy import CompiledRoutePolicy, RoutePolicySpec, parse_action
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser

TEST_MASTER_KEY = bytes(range(100, 132))
PARTNER = "carrier-test"


@pytest.fixture(scope="session")
def pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(PartnerKeyring(TEST_MASTER_KEY))


def _actions(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    return {name: parse_action(action) for name, action in (raw or {}).items()}


@pytest.fixture
def make_policy(pseudonymiser: Pseudonymiser) -> Callable[..., CompiledRoutePolicy]:
    def build(body: Mapping[str, Any] | None = None, *, query: Mapping[str, Any] | None = None,
              path: Mapping[str, Any] | None = None, headers: Mapping[str, Any] | None = None,
              response_body: Mapping[str, Any] | None = None, response_headers: Mapping[str, Any] | None = None,
              unknown_fields: str = "drop", free_text: str = "reject",
              schema: Mapping[str, Any] | None = None) -> CompiledRoutePolicy:
        spec = RoutePolicySpec(
            request_body=_actions(body), request_query=_actions(query), request_path=_actions(path),
            request_headers=_actions(headers), response_body=_actions(response_body),
            response_headers=_actions(response_headers), unknown_fields=unknown_fields,  # type: ignore[arg-type]
            free_text=free_text, schema=schema,  # type: ignore[arg-type]
        )
        return CompiledRoutePolicy(spec, partner_id=PARTNER, pseudonymiser=pseudonymiser)
    return build
