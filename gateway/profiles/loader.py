"""Loading a folder of partner profiles: YAML with lines, environment substitution, the JSON Schema, the
checks a schema cannot express, policy compilation and the examples. Every problem of every file is
collected and reported as `file:line: reason`; one bad file fails the whole load (the caller keeps
the previous set running).
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from gateway.errors import ConfigError
from gateway.policy import (
    ActionError,
    CompiledRoutePolicy,
    Drop,
    FieldAction,
    Keep,
    PolicyCompileError,
    PseudonymBinder,
    RoutePolicySpec,
    check_schema,
    parse_action,
)
from gateway.policy.engine import parse_field_path
from gateway.policy.freetext import FREE_TEXT_MAX_CHARS
from gateway.profiles.examples import example_pseudonymiser, run_profile_examples
from gateway.profiles.headers import (
    CREDENTIAL_HEADER_REFUSALS,
    RESPONSE_HEADER_REFUSALS,
    basic_credential_problem,
    header_credential_problem,
)
from gateway.profiles.model import (
    ExampleRequest,
    ExpectedError,
    Limits,
    PartnerProfile,
    ProfileSet,
    Route,
    RouteExample,
    Upstream,
    UpstreamAuth,
    ValueSource,
)
from gateway.profiles.yamlsource import JsonPath, YamlProblem, line_of, load_yaml
from gateway.resources import shipped

SCHEMA_PATH = shipped("schemas", "partner_profile.schema.json")
PROFILE_SUFFIXES = (".yaml", ".yml")
_PARAM = re.compile(r"\{([^}]*)\}")
DEFAULT_MAX_BODY_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class ProfileProblem:
    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


class ProfileLoadError(ConfigError):
    """One or more profiles are invalid; `.problems` lists every one, in file and line order."""

    def __init__(self, problems: list[ProfileProblem]) -> None:
        self.problems = problems
        listing = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in partner profiles:\n{listing}")


@cache
def profile_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


class _FileContext:
    """Problems of one file, with the line map to place them."""

    def __init__(self, file: str, lines: Mapping[JsonPath, int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[ProfileProblem] = []

    def add(self, path: JsonPath, reason: str) -> None:
        self.problems.append(ProfileProblem(self.file, line_of(self.lines, path), reason))


_POLICY_SECTIONS = frozenset({"body", "query", "path", "headers"})


def _is_field_action(path: JsonPath) -> bool:
    return len(path) == 5 and path[0] == "routes" and path[2] in ("request", "response") and path[3] in _POLICY_SECTIONS


def _schema_reason(error: ValidationError) -> tuple[JsonPath, str]:
    path: JsonPath = tuple(error.absolute_path)
    if _is_field_action(path):
        # The action schema is a oneOf of six shapes; the action parser says which one was meant and why.
        try:
            parse_action(error.instance)
        except ActionError as exc:
            return path, f"{'.'.join(map(str, path))}: {exc}"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [name for name in error.instance if name not in declared]
        if extra:
            where = ".".join(map(str, path)) or "profile"
            return (*path, extra[0]), f"{where}: unknown key(s) {', '.join(map(repr, extra))}"
    # oneOf errors ("... is not valid under any of the given schemas") say nothing; the best sub-error does.
    chosen = best_match([error, *error.context]) if error.context else error
    path = tuple(chosen.absolute_path)
    where = ".".join(str(p) for p in path) or "profile"
    return path, f"{where}: {_value_free_rule(chosen)}"


def _schema_words(value: Any) -> str:
    """A schema keyword's value (from our own schema, never from the profile) in a short form."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _value_free_rule(error: ValidationError) -> str:
    """Which rule the value broke, never the value: jsonschema's messages quote the instance, and a value
    may have been substituted from the environment (a password in a URL, a token), and the reason reaches
    the reload's 422 body and the `profiles_reload_refused` log line (auth review F8). Only our schema's
    own words (a type, a pattern, a bound, a list of choices) and key names, which are never substituted,
    are quoted."""
    keyword = str(error.validator)
    expected: Any = error.validator_value
    if keyword == "type":
        return f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
    if keyword == "pattern":
        if "propertyNames" in error.schema_path and isinstance(error.instance, str) and len(error.instance) <= 100:
            # The offending name is a key of the profile (keys are never substituted), so it may be named.
            return f"the key {error.instance!r} does not match the required pattern {expected}"
        return f"does not match the required pattern {expected}"
    if keyword == "enum":
        return f"must be one of: {_schema_words(expected)}"
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "required":
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in expected if name not in instance]
        return f"missing required key(s) {', '.join(map(repr, missing))}"
    bounds = {"minLength": "must have at least {} character(s)", "maxLength": "must have at most {} character(s)",
              "minimum": "must be at least {}", "maximum": "must be at most {}",
              "exclusiveMinimum": "must be more than {}", "exclusiveMaximum": "must be less than {}",
              "minItems": "must have at least {} item(s)", "maxItems": "must have at most {} item(s)",
              "minProperties": "must have at least {} key(s)", "maxProperties": "must have at most {} key(s)"}
    if keyword in bounds:
        return bounds[keyword].format(expected)
    if keyword == "uniqueItems":
        return "must not list an item twice"
    if keyword in ("oneOf", "anyOf"):
        return "matches none of the allowed forms"
    if keyword == "not":
        return "is not allowed in this combination"
    if error.validator is None:  # a `false` schema
        return "is not allowed here"
    return f"fails the {keyword} rule"


def _read_secret(ctx: _FileContext, path: JsonPath, options: Mapping[str, Any], key: str, folder: Path,
                 problem: Callable[[str], str | None] = header_credential_problem) -> str:
    """The secret `key` (or the contents of `key`_file) of `options`; a secret that `problem` refuses
    adds a problem naming the key and the rule, never the value (it is a credential)."""
    if key in options:
        where, secret = key, str(options[key])
    else:
        where = f"{key}_file"
        file_name = Path(str(options[where]))
        secret_file = file_name if file_name.is_absolute() else folder / file_name
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            ctx.add((*path, where), f"cannot read {where}: {reason}")
            return ""
    reason = problem(secret)
    if reason is not None:
        ctx.add((*path, where), f"{'.'.join(map(str, path))}.{where}: the credential {reason}; "
                                "its value is not shown")
    return secret


def _build_auth(ctx: _FileContext, raw: Mapping[str, Any] | None, folder: Path) -> UpstreamAuth | None:
    if raw is None:
        return None
    path: JsonPath = ("upstream", "auth")
    kind = raw["type"]
    if kind == "bearer":
        return UpstreamAuth("bearer", "Authorization", "Bearer " + _read_secret(ctx, path, raw, "token", folder))
    if kind == "header":
        header = str(raw["header"])
        refused = CREDENTIAL_HEADER_REFUSALS.get(header.lower())
        if refused is not None:
            ctx.add((*path, "header"), f"upstream.auth.header: {header.lower()!r} cannot carry the credential: "
                                       f"{refused}")
        return UpstreamAuth("header", header, _read_secret(ctx, path, raw, "value", folder))
    username = str(raw["username"])
    reason = basic_credential_problem(username)
    if reason is not None:
        ctx.add((*path, "username"), f"upstream.auth.username: {reason}; its value is not shown")
    password = _read_secret(ctx, path, raw, "password", folder, basic_credential_problem)
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return UpstreamAuth("basic", "Authorization", "Basic " + token)


def _source(raw: Mapping[str, Any] | None) -> ValueSource | None:
    if raw is None:
        return None
    if "value" in raw:
        return ValueSource("value", "", str(raw["value"]))
    return ValueSource(raw["from"], str(raw["path"]))


def _actions(ctx: _FileContext, path: JsonPath, raw: Mapping[str, Any] | None) -> dict[str, FieldAction]:
    actions: dict[str, FieldAction] = {}
    for name, spec in (raw or {}).items():
        try:
            actions[name] = parse_action(spec)
        except ActionError as exc:
            ctx.add((*path, name), f"{name}: {exc}")
    return actions


def _example(raw: Mapping[str, Any], line: int | None) -> RouteExample:
    request = raw.get("request") or {}
    query: list[tuple[str, str]] = []
    for name, value in (request.get("query") or {}).items():
        for item in value if isinstance(value, list) else [value]:
            query.append((name, item))
    expect_error = raw.get("expect_error")
    return RouteExample(
        name=raw["name"],
        request=ExampleRequest(body=request.get("body"), query=tuple(query), path=dict(request.get("path") or {}),
                               headers=dict(request.get("headers") or {})),
        expect=raw.get("expect"),
        expect_error=ExpectedError(expect_error["status"], tuple(expect_error["paths"]) if "paths" in expect_error
                                   else None) if expect_error else None,
        line=line,
    )


_SCALAR_TYPES = frozenset({"string", "number", "integer", "boolean", "null"})
_OPEN_HINT = ("list the fields the partner needs instead, close the schema (additionalProperties: false, "
              "items of closed objects), or opt in with {keep: {open_subtree: true}}")


def _resolve_ref(node: Any, root: Mapping[str, Any]) -> Any:
    """`node` with a local `$ref` (`#/$defs/...`) followed; anything else unresolvable gives None."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 32:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return None
        target: Any = root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return None
            target = target[part]
        node, seen = target, seen + 1
    return None if isinstance(node, dict) and "$ref" in node else node


def _schema_at(schema: Any, segments: tuple[str | None, ...], root: Mapping[str, Any]) -> Any:
    """The schema node of a declared field path (None: the schema does not describe it in a plain way)."""
    node = schema
    for segment in segments:
        node = _resolve_ref(node, root)
        if not isinstance(node, dict):
            return None
        node = node.get("items") if segment is None else (node.get("properties") or {}).get(segment)
    return _resolve_ref(node, root)


def _open_part(node: Any, where: str, root: Mapping[str, Any], depth: int = 0) -> str | None:
    """Where the schema `node` lets a value hold something it does not declare (a key, an element or a
    value of any type), or None when every value it accepts is a scalar or a closed object or array."""
    node = _resolve_ref(node, root)
    if depth > 32 or not isinstance(node, dict):
        return f"the schema does not describe {where}"
    if "const" in node:
        return None if not isinstance(node["const"], dict | list) else f"{where} is a constant object or array"
    if isinstance(node.get("enum"), list) and not any(isinstance(item, dict | list) for item in node["enum"]):
        return None
    for combinator in ("anyOf", "oneOf"):
        if isinstance(node.get(combinator), list) and node[combinator]:
            for branch in node[combinator]:
                problem = _open_part(branch, where, root, depth + 1)
                if problem:
                    return problem
            return None
    if isinstance(node.get("allOf"), list) and any(
            _open_part(branch, where, root, depth + 1) is None for branch in node["allOf"]):
        return None
    declared = node.get("type")
    types = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else None
    if not types:
        return f"the schema gives {where} no type"
    for kind in types:
        if kind in _SCALAR_TYPES:
            continue
        if kind == "object":
            if node.get("additionalProperties") is not False and node.get("unevaluatedProperties") is not False:
                return f"{where} allows undeclared keys"
            children = {**(node.get("properties") or {}), **(node.get("patternProperties") or {})}
            for name, child in children.items():
                problem = _open_part(child, f"{where}.{name}", root, depth + 1)
                if problem:
                    return problem
        elif kind == "array":
            for n, child in enumerate(node.get("prefixItems") or ()):
                problem = _open_part(child, f"{where}[{n}]", root, depth + 1)
                if problem:
                    return problem
            if node.get("items") is not False:
                problem = _open_part(node.get("items"), f"{where}[]", root, depth + 1)
                if problem:
                    return problem
        else:
            return f"the schema gives {where} an unknown type"
    return None


def _unclosed_keeps(schema: Mapping[str, Any] | None, body: Mapping[str, FieldAction]) -> list[tuple[str, str]]:
    """Request-body keeps of an object or array node that would pass keys or elements the route schema
    does not declare, each with where the schema leaves it open.

    A keep passes its whole value verbatim; deny-by-default holds only as deep as the declared paths go.
    So a kept object or array must be closed by the route's request schema, all the way down
    (additionalProperties: false, items of closed objects, scalar leaves). A keep with `open_subtree: true`
    is the author's explicit, greppable exception."""
    problems: list[tuple[str, str]] = []
    for name, action in body.items():
        if not isinstance(action, Keep) or action.open_subtree:
            continue
        if schema is None:
            continue
        try:
            segments = parse_field_path(name)
        except ValueError:
            continue  # the policy compiler reports the path itself
        node = _schema_at(schema, segments, schema)
        if not _may_be_container(node, schema):
            continue
        problem = _open_part(node, name, schema)
        if problem:
            problems.append((name, problem))
    return problems


_CONTAINER_KEYWORDS = ("properties", "additionalProperties", "patternProperties", "unevaluatedProperties",
                       "required", "items", "prefixItems", "contains")


def _may_be_container(node: Any, root: Mapping[str, Any], depth: int = 0) -> bool:
    """Whether the schema says (or lets) the node be an object or an array. A node the schema does not
    describe, or describes without a type or a container keyword, is not checked (see docs/profile-format.md)."""
    node = _resolve_ref(node, root)
    if not isinstance(node, dict) or depth > 32:
        return False
    declared = node.get("type")
    if isinstance(declared, str | list):
        types = [declared] if isinstance(declared, str) else declared
        return "object" in types or "array" in types
    if any(keyword in node for keyword in _CONTAINER_KEYWORDS):
        return True
    if isinstance(node.get("const"), dict | list) or (
            isinstance(node.get("enum"), list) and any(isinstance(v, dict | list) for v in node["enum"])):
        return True
    return any(_may_be_container(branch, root, depth + 1)
               for combinator in ("anyOf", "oneOf", "allOf") if isinstance(node.get(combinator), list)
               for branch in node[combinator])


def _build_route(ctx: _FileContext, index: int, raw: Mapping[str, Any], profile_id: str,
                 consent_purposes: tuple[str, ...], pseudonymiser: PseudonymBinder) -> Route | None:
    at: JsonPath = ("routes", index)
    route_id = raw["id"]
    before = len(ctx.problems)
    request = raw.get("request") or {}
    response = raw.get("response") or {}
    purposes = tuple(raw["purposes"]) if "purposes" in raw else (raw["purpose"],)

    params = _PARAM.findall(raw["path"])
    path_policy = request.get("path") or {}
    for param in params:
        if param not in path_policy:
            ctx.add((*at, "path"), f"route {route_id}: path parameter {{{param}}} has no policy under request.path")
    for name in path_policy:
        if name not in params:
            ctx.add((*at, "request", "path", name), f"route {route_id}: request.path.{name} is not a parameter of "
                                                     f"the path template")
    if len(set(params)) != len(params):
        ctx.add((*at, "path"), f"route {route_id}: a path parameter appears twice")
    consent = raw.get("consent")
    if consent is not None and consent not in consent_purposes:
        ctx.add((*at, "consent"), f"route {route_id}: consent purpose {consent!r} is not declared in consent_purposes")
    # A disclosure whose purpose is a legal obligation (to an authority) must name the legal instrument.
    if "legal_obligation" in purposes and not raw.get("legal_reference_required", False):
        ctx.add((*at, "purposes" if "purposes" in raw else "purpose"),
                f"route {route_id}: a route with purpose legal_obligation needs legal_reference_required: true")
    schema = request.get("schema")
    if schema is not None:
        problem = check_schema(schema)
        if problem:
            ctx.add((*at, "request", "schema"), f"route {route_id}: {problem}")

    path_schema = request.get("path_schema")
    for name, param_schema in (path_schema or {}).items():
        if name not in params:
            ctx.add((*at, "request", "path_schema", name), f"route {route_id}: request.path_schema.{name} is not a "
                                                            f"parameter of the path template")
            continue
        problem = check_schema(param_schema)
        if problem:
            ctx.add((*at, "request", "path_schema", name),
                    f"route {route_id}: request.path_schema.{name}: {problem.replace('request schema', 'schema', 1)}")

    sections: dict[tuple[str, str], dict[str, FieldAction]] = {}
    for part, key, source in (("request", "body", request), ("request", "query", request), ("request", "path", request),
                              ("request", "headers", request), ("response", "body", response),
                              ("response", "headers", response)):
        sections[(part, key)] = _actions(ctx, (*at, part, key), source.get(key))
    for name, reason in _unclosed_keeps(schema, sections[("request", "body")]):
        ctx.add((*at, "request", "body", name), f"route {route_id}: request.body.{name}: keep would pass what the "
                                                 f"request schema does not declare ({reason}); {_OPEN_HINT}")
    for name in sections[("response", "headers")]:
        refused = RESPONSE_HEADER_REFUSALS.get(name.lower())
        if refused is not None:
            ctx.add((*at, "response", "headers", name), f"route {route_id}: response.headers.{name}: the partner's "
                                                         f"{name.lower()!r} header cannot be passed on: {refused}")
    for name, action in sections[("request", "path")].items():
        if isinstance(action, Drop):
            ctx.add((*at, "request", "path", name), f"route {route_id}: path parameter {name} cannot be dropped: "
                                                     "the partner's URL needs it")
    spec = RoutePolicySpec(
        request_body=sections[("request", "body")], request_query=sections[("request", "query")],
        request_path=sections[("request", "path")], request_headers=sections[("request", "headers")],
        response_body=sections[("response", "body")], response_headers=sections[("response", "headers")],
        unknown_fields=raw.get("unknown_fields", "drop"), free_text=raw.get("free_text", "reject"), schema=schema,
        free_text_max_chars=raw.get("free_text_max_chars", FREE_TEXT_MAX_CHARS), path_schema=path_schema or None,
    )
    if len(ctx.problems) > before:
        return None
    try:
        policy = CompiledRoutePolicy(spec, partner_id=profile_id, pseudonymiser=pseudonymiser)
    except PolicyCompileError as exc:
        ctx.add((*at, *exc.section, *( [exc.key] if exc.key else [])), f"route {route_id}: {exc.reason}")
        return None
    examples = tuple(_example(item, line_of(ctx.lines, (*at, "examples", n)))
                     for n, item in enumerate(raw.get("examples") or ()))
    return Route(
        id=route_id, method=raw["method"], path_template=raw["path"], purposes=purposes,
        legal_basis=raw["legal_basis"], subject=_source(raw.get("subject")), residency=_source(raw.get("residency")),
        consent_purpose=consent, essential=raw.get("essential", False),
        allowed_during_hold=raw.get("allowed_during_hold", False), idempotent=raw.get("idempotent", False),
        legal_reference_required=raw.get("legal_reference_required", False),
        media_types=tuple(raw.get("media_types") or ("application/json",)), policy=policy, examples=examples,
        description=raw.get("description", ""),
    )


def _route_shape(route: Route) -> tuple[str, tuple[str | None, ...]]:
    return route.method, tuple(None if p.startswith("{") else p for p in route.path_template.split("/"))


def build_profile(ctx: _FileContext, data: Mapping[str, Any], file: Path, pseudonymiser: PseudonymBinder
                  ) -> PartnerProfile | None:
    """The profile from schema-valid data, or None after adding problems to `ctx`."""
    profile_id = data["id"]
    if profile_id != file.stem:
        ctx.add(("id",), f"id {profile_id!r} must equal the file name without extension ({file.stem!r})")
    consent_purposes = tuple(data.get("consent_purposes") or ())
    routes: list[Route] = []
    seen_ids: dict[str, int] = {}
    shapes: dict[tuple[str, tuple[str | None, ...]], str] = {}
    for index, raw in enumerate(data["routes"]):
        if raw["id"] in seen_ids:
            ctx.add(("routes", index, "id"), f"duplicate route id {raw['id']!r} (first at route {seen_ids[raw['id']]})")
            continue
        seen_ids[raw["id"]] = index
        route = _build_route(ctx, index, raw, profile_id, consent_purposes, pseudonymiser)
        if route is None:
            continue
        shape = _route_shape(route)
        if shape in shapes:
            ctx.add(("routes", index, "path"), f"route {route.id}: same method and path shape as route {shapes[shape]}")
            continue
        shapes[shape] = route.id
        routes.append(route)
    upstream_raw = data["upstream"]
    timeouts = upstream_raw.get("timeouts") or {}
    upstream = Upstream(
        base_url=upstream_raw["base_url"].rstrip("/"), auth=_build_auth(ctx, upstream_raw.get("auth"), file.parent),
        connect_timeout=float(timeouts.get("connect", 2.0)), total_timeout=float(timeouts.get("total", 10.0)),
        retries=int(upstream_raw.get("retries", 0)), keep_alive=bool(upstream_raw.get("keep_alive", True)),
    )
    if upstream.connect_timeout > upstream.total_timeout:
        ctx.add(("upstream", "timeouts"), "the connect timeout cannot exceed the total timeout")
    limits_raw = data.get("limits") or {}
    limits = Limits(
        max_body_bytes=int(limits_raw.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        rate_per_second=limits_raw.get("rate_per_second"), burst=limits_raw.get("burst"),
        max_concurrency=limits_raw.get("max_concurrency"),
    )
    if ctx.problems:
        return None
    return PartnerProfile(
        id=profile_id, name=data["name"], category=data["category"], jurisdiction=data["jurisdiction"],
        description=data.get("description", ""), upstream=upstream, limits=limits, routes=tuple(routes),
        consent_purposes=consent_purposes, source_file=str(file), source=dict(data.get("source") or {}),
    )


def load_profile_file(file: Path, *, pseudonymiser: PseudonymBinder, environ: Mapping[str, str],
                      check_examples: bool = True, max_json_depth: int = 32
                      ) -> tuple[PartnerProfile | None, list[ProfileProblem]]:
    """One profile and its problems (the profile is None when there are any)."""
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ProfileProblem(name, None, f"cannot read the file: {exc}")]
    try:
        data, lines, yaml_problems = load_yaml(text, environ)
    except YamlProblem as exc:
        return None, [ProfileProblem(name, exc.line, exc.reason)]
    ctx = _FileContext(name, lines)
    ctx.problems.extend(ProfileProblem(name, p.line, p.reason) for p in yaml_problems)
    errors = sorted(profile_validator().iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    for error in errors:
        path, reason = _schema_reason(error)
        ctx.add(path, reason)
    if ctx.problems:
        return None, ctx.problems
    profile = build_profile(ctx, data, file, pseudonymiser)
    if profile is not None and check_examples:
        for result in run_profile_examples(profile, example_pseudonymiser(), max_json_depth):
            if not result.passed:
                ctx.problems.append(ProfileProblem(name, result.line, f"route {result.route_id}: example "
                                                                    f"{result.name!r} fails: {result.reason}"))
    return (None if ctx.problems else profile), ctx.problems


def profile_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.suffix in PROFILE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def load_profiles(directory: Path, *, pseudonymiser: PseudonymBinder, environ: Mapping[str, str] | None = None,
                  max_json_depth: int = 32, check_examples: bool = True) -> ProfileSet:
    """Every profile in `directory`; raises `ProfileLoadError` listing all problems of all files."""
    env = os.environ if environ is None else environ
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileLoadError([ProfileProblem(str(directory), None, "profile folder does not exist")])
    files = profile_files(directory)
    if not files:
        raise ProfileLoadError([ProfileProblem(str(directory), None, "no *.yaml profiles in the folder")])
    problems: list[ProfileProblem] = []
    profiles: dict[str, PartnerProfile] = {}
    for file in files:
        profile, found = load_profile_file(file, pseudonymiser=pseudonymiser, environ=env,
                                           check_examples=check_examples, max_json_depth=max_json_depth)
        problems.extend(found)
        if profile is not None:
            if profile.id in profiles:
                problems.append(ProfileProblem(str(file), None, f"profile id {profile.id!r} is used twice"))
            profiles[profile.id] = profile
    if problems:
        raise ProfileLoadError(problems)
    return ProfileSet(profiles)
