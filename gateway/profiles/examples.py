"""Route examples run as policy tests: each example request goes through strict JSON, the route's schema
and its compiled policy, under a fixed published example key, and must give exactly the expected
output (or exactly the expected refusal).

The example key is public on purpose (it is in this file and in docs/profile-format.md): it lets a
profile author write the exact pseudonym a partner would see in a test, and it is never used for real
traffic (the gateway refuses it as `master.key` outside development mode), so publishing it discloses
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.keys import EXAMPLE_MASTER_KEY as EXAMPLE_MASTER_KEY
from gateway.policy import CompiledRoutePolicy, MinimisedRequest, PseudonymBinder
from gateway.profiles.model import PartnerProfile, Route, RouteExample
from gateway.pseudonyms import PartnerKeyring, Pseudonymiser
from gateway.strictjson import canonical_dumps, parse_json

# EXAMPLE_MASTER_KEY (bytes 0x00..0x1f) is defined in gateway.keys, which refuses it as a real key outside
# development mode.
PSEUDONYM_PLACEHOLDER = "$pseudonym"


def example_pseudonymiser() -> Pseudonymiser:
    return Pseudonymiser(PartnerKeyring(EXAMPLE_MASTER_KEY))


@dataclass(frozen=True, slots=True)
class ExampleResult:
    profile_id: str
    route_id: str
    name: str
    passed: bool
    reason: str
    line: int | None


class _PlaceholderError(ValueError):
    pass


def expand_placeholders(value: Any, partner_id: str, pseudonymiser: PseudonymBinder) -> Any:
    """`value` with every `{$pseudonym: {type, mode, value}}` replaced by that pseudonym for the partner."""
    if isinstance(value, dict):
        if PSEUDONYM_PLACEHOLDER in value:
            spec = value[PSEUDONYM_PLACEHOLDER]
            if len(value) != 1 or not isinstance(spec, dict) or set(spec) != {"type", "mode", "value"}:
                raise _PlaceholderError("a $pseudonym placeholder is {$pseudonym: {type, mode, value}}")
            try:
                return pseudonymiser.bind(partner_id, str(spec["type"]), str(spec["mode"]))(str(spec["value"]))
            except (GatewayError, ValueError) as exc:
                raise _PlaceholderError(f"$pseudonym placeholder cannot be computed: {exc}") from None
        return {key: expand_placeholders(item, partner_id, pseudonymiser) for key, item in value.items()}
    if isinstance(value, list):
        return [expand_placeholders(item, partner_id, pseudonymiser) for item in value]
    return value


def _query_as_mapping(query: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in query:
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


def _differences(expected: Any, actual: Any, path: str, found: list[str]) -> None:
    if len(found) >= 5:
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            where = f"{path}.{key}" if path else key
            if key not in actual:
                found.append(f"{where}: expected but missing")
            elif key not in expected:
                found.append(f"{where}: present but not expected")
            else:
                _differences(expected[key], actual[key], where, found)
        return
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            _differences(left, right, f"{path}[{index}]", found)
        return
    if orjson.dumps(expected) != orjson.dumps(actual):
        found.append(f"{path or '$'}: expected {orjson.dumps(expected).decode()[:80]}, "
                     f"got {orjson.dumps(actual).decode()[:80]}")


def _compare(part: str, expected: Any, actual: Any) -> list[str]:
    if canonical_dumps(expected) == canonical_dumps(actual):
        return []
    found: list[str] = []
    _differences(expected, actual, "", found)
    return [f"{part} {item}" for item in found] or [f"{part} differs"]


def _outputs(result: MinimisedRequest) -> dict[str, Any]:
    return {
        "body": result.body,
        "query": _query_as_mapping(result.query),
        "path": dict(result.path_params),
        "headers": {name.lower(): value for name, value in result.headers.items()},
    }


def run_example(profile_id: str, route: Route, example: RouteExample, policy: CompiledRoutePolicy,
                pseudonymiser: PseudonymBinder, max_json_depth: int = 32) -> ExampleResult:
    """Run one example through `policy` (compiled with the example pseudonymiser)."""

    def result(passed: bool, reason: str) -> ExampleResult:
        return ExampleResult(profile_id, route.id, example.name, passed, reason, example.line)

    request = example.request
    try:
        body = None
        if request.body is not None:
            # What the gateway would parse from the wire, so examples see exactly what requests see.
            body = parse_json(orjson.dumps(request.body), max_depth=max_json_depth)
            policy.validate(body)
        minimised = policy.minimise_request(body, request.query, request.path, request.headers)
    except GatewayError as exc:
        paths = sorted({violation.path for violation in exc.violations})
        if example.expect_error is None:
            return result(False, f"refused with {exc.status} ({exc.slug}) at {', '.join(paths) or '-'}")
        expected = example.expect_error
        if exc.status != expected.status:
            return result(False, f"expected status {expected.status}, got {exc.status} ({exc.slug})")
        if expected.paths is not None and sorted(set(expected.paths)) != paths:
            return result(False, f"expected refusal at {', '.join(sorted(set(expected.paths)))}; "
                                 f"got {', '.join(paths) or '-'}")
        return result(True, f"refused with {exc.status} as expected")
    if example.expect is None:
        status = example.expect_error.status if example.expect_error else "?"
        return result(False, f"expected a refusal with status {status}, but the request was accepted")
    try:
        expect = expand_placeholders(dict(example.expect), profile_id, pseudonymiser)
    except _PlaceholderError as exc:
        return result(False, str(exc))
    actual = _outputs(minimised)
    problems: list[str] = []
    for part in ("body", "query", "path", "headers"):
        if part not in expect:
            continue
        wanted = expect[part]
        if part == "headers" and isinstance(wanted, Mapping):
            wanted = {str(name).lower(): value for name, value in wanted.items()}
        if part == "body" and wanted is None and actual["body"] in ({}, None):
            continue
        problems.extend(_compare(part, wanted, actual[part]))
    if problems:
        return result(False, "; ".join(problems))
    return result(True, "output matches")


def run_profile_examples(profile: PartnerProfile, pseudonymiser: PseudonymBinder | None = None,
                         max_json_depth: int = 32) -> list[ExampleResult]:
    """Every example of every route of `profile`, under the example key."""
    binder = pseudonymiser or example_pseudonymiser()
    results: list[ExampleResult] = []
    for route in profile.routes:
        if not route.examples:
            continue
        policy = CompiledRoutePolicy(route.policy.spec, partner_id=profile.id, pseudonymiser=binder)
        for example in route.examples:
            results.append(run_example(profile.id, route, example, policy, binder, max_json_depth))
    return results
