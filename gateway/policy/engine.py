"""The policy engine: a route's field policies compiled once into closures, applied per request.

Compiling turns each declared path (`recipient.phone`, `items[].sku`) into a tree of small functions,
one per object, array and field, with the pseudonymiser already bound to the partner's key. Applying a
policy is then one walk over the input that builds a new value holding only what the allowlist names:
anything undeclared is dropped (or refused with `unknown_fields: reject`). The same engine filters
responses. No I/O happens here; errors name field paths, never values.

This closure engine is the reference. For the request body, gateway/policy/codegen.py also writes each
route out as one generated function (schema check, walk, or both fused) that serves the ordinary case
and hands anything doubtful back to this engine; `validate_request` + `minimise_validated` use the fused
one, `validate` and `minimise_request` the separate ones.

`reidentify` in a response turns back only the `fpe` pseudonyms that the same request sent the partner
(`CompiledRoutePolicy.issued_pseudonyms`, taken from the minimised request): a token the exchange did
not issue (another subject's, a forged one: FF1 decrypts any well-formed string to some real-looking
identifier) is never decrypted, and fails the answer with `UpstreamReidentifyRefused`.

Reports use the declared path form (`items[].sku`) so one field is one entry however many array
elements carried it. Query parameters, path parameters and headers are reported as `query:NAME`,
`path:NAME` and `header:NAME`, so they can never be confused with a body field of the same name.
A path parameter with a schema (`request.path_schema`) is checked against it before its action applies;
one that does not fit is refused (`SchemaViolation` at `path:NAME`), never put in the partner's URL.
Only names the profile writes are reported (or echoed in a refusal) by name: an undeclared key, query
parameter or header has a name the caller chose, which may be a phone or an e-mail, and shows as its
parent's marker (`recipient.*`, `*`, `query:*`, `header:*`).
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

from gateway.errors import (
    FieldNotAllowed,
    FreeTextTooLong,
    GatewayError,
    IdentifierInFreeText,
    InvalidIdentifier,
    SchemaViolation,
    UpstreamError,
    UpstreamReidentifyRefused,
    Violation,
)
from gateway.policy.actions import (
    Drop,
    FieldAction,
    Generalise,
    Keep,
    NotGeneralisable,
    Pseudonymise,
    Reidentify,
    generalise_age,
    generalise_date,
    generalise_location,
    mask_value,
)
from gateway.policy.codegen import (
    UNDECLARED,
    GeneratedRoute,
    WalkResult,
    generate_route,
    profile_names,
    undeclared_paths,
    value_function,
)
from gateway.policy.freetext import FREE_TEXT_MAX_CHARS, redact, scan
from gateway.policy.schema import ROOT, CompiledParamSchemas, CompiledSchema
from gateway.pseudonyms import normalise
from gateway.strictjson import canonical_dumps, canonical_dumps_with_known_keys

UnknownFields = Literal["drop", "reject"]
FreeTextMode = Literal["redact", "reject"]


class PseudonymBinder(Protocol):
    """What the engine needs of `gateway.pseudonyms.Pseudonymiser`: functions bound once per field."""

    def bind(self, partner_id: str, id_type: str, mode: str) -> Callable[[str], str]: ...

    def bind_reverse(self, partner_id: str, id_type: str) -> Callable[[str], str]: ...


class _Missing:
    """Marks a value the policy removed (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# Refusals are raised with every violation found; the first class present in this order decides the type.
_ERROR_ORDER: tuple[type[GatewayError], ...] = (FieldNotAllowed, InvalidIdentifier, IdentifierInFreeText,
                                                FreeTextTooLong, SchemaViolation)


@dataclass(frozen=True, slots=True)
class MinimisationReport:
    """What a policy did, by field path only (never values): for the ledger and the metrics."""

    kept: tuple[str, ...]
    transformed: tuple[str, ...]
    dropped: tuple[str, ...]
    pseudonymised: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class MinimisedRequest:
    body: Any | None
    query: tuple[tuple[str, str], ...]
    path_params: Mapping[str, str]
    headers: Mapping[str, str]
    report: MinimisationReport
    # The body's containers whose keys came from the caller, when every other object of the body holds
    # only allowlisted names known to be canonical; None when nothing is known (check everything).
    unchecked_containers: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    # True when the generated walk built the body: it holds no NaN or infinity outside those containers.
    finite_outside: bool = field(default=False, repr=False, compare=False)

    def canonical_body(self) -> bytes:
        """`canonical_dumps(self.body)`, checking the keys of caller-supplied containers only. Valid for
        the body as `minimise_request` returned it (do not mutate it first)."""
        if self.unchecked_containers is None:
            return canonical_dumps(self.body)
        return canonical_dumps_with_known_keys(self.body, self.unchecked_containers, self.finite_outside)


@dataclass(frozen=True, slots=True)
class ValidatedBody:
    """A request body that passed the route's schema, with the generated walk's outcome (None when the
    reference engine has to decide): what `CompiledRoutePolicy.minimise_validated` takes. The outcome
    sits in a one-element list that the first `minimise_validated` empties: it then owns the walk's
    containers and adds the query, path and header records to them without copying; a second call
    (a retry) walks the body again."""

    policy: CompiledRoutePolicy = field(repr=False)
    body: Any
    walked: list[WalkResult] | None = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FilteredResponse:
    body: Any | None
    headers: Mapping[str, str]
    report: MinimisationReport
    # Declared path -> how many values the answer re-identified there (paths only, never values).
    reidentified: Mapping[str, int] = field(default_factory=dict)


class IssuedPseudonyms:
    """The `fpe` pseudonyms one request sent its partner, per identifier type: the only tokens the
    response policy may re-identify. Keyed by the token's normalised spelling (a partner may echo
    `42-44-...` as `42:44:...`), holding the token exactly as sent, which is what gets decrypted, so the
    value returned is the caller's own (normalised as the pseudonymiser did). Tokens only, no cleartext;
    still never logged: the repr shows counts."""

    __slots__ = ("_by_type",)

    def __init__(self, by_type: Mapping[str, Mapping[str, str]]) -> None:
        self._by_type = by_type

    def sent(self, id_type: str, token: str) -> str | None:
        """The token as the request sent it when `token` (in any accepted spelling) is one of this
        request's `id_type` pseudonyms, else None. Raises InvalidIdentifier when it is no `id_type`."""
        tokens = self._by_type.get(id_type)
        if not tokens:
            normalise(id_type, token)  # garbage stays an invalid identifier, as before
            return None
        found = tokens.get(token)
        return found if found is not None else tokens.get(normalise(id_type, token))

    def __repr__(self) -> str:
        counts = ", ".join(f"{id_type}: {len(tokens)}" for id_type, tokens in sorted(self._by_type.items()))
        return f"IssuedPseudonyms({{{counts}}})"


# What a response is filtered against when no request issued anything: every token is refused.
NO_PSEUDONYMS_ISSUED = IssuedPseudonyms({})


def _builder_class(cls: type, names: tuple[str, ...]) -> type:
    """A plain class with exactly the slots of the frozen dataclass `cls`, for building one per request
    without its `__init__`: the value is filled in through the plain class's slots (ordinary attribute
    stores, which the interpreter specialises) and then becomes a `cls` by `__class__` assignment, which
    CPython allows between classes of the same layout. The frozen `__init__` pays an `object.__setattr__`
    call per field and the slot descriptors' `__set__` a wrapper call each: both cost several times a
    plain store. Refuses at import if `names` is not exactly the class's fields, or if a value built
    this way is not a `cls` equal to one built by `__init__`."""
    if tuple(f.name for f in fields(cls)) != names:  # pragma: no cover - a programming error
        raise TypeError(f"{cls.__name__}: the fast constructor's fields are out of date")
    builder = type(f"_{cls.__name__}Builder", (), {"__slots__": cls.__dict__["__slots__"]})
    probe: Any = _new(builder)
    for position, name in enumerate(names):
        setattr(probe, name, position)
    probe.__class__ = cls  # TypeError if the layouts differ
    if type(probe) is not cls or probe != cls(*range(len(names))):  # pragma: no cover - a programming error
        raise TypeError(f"{cls.__name__}: the fast constructor does not build an equal value")
    return builder


_new = object.__new__
_REPORT_BUILDER = _builder_class(MinimisationReport, ("kept", "transformed", "dropped", "pseudonymised"))
_MINIMISED_BUILDER = _builder_class(
    MinimisedRequest, ("body", "query", "path_params", "headers", "report", "unchecked_containers",
                       "finite_outside"))
_VALIDATED_BUILDER = _builder_class(ValidatedBody, ("policy", "body", "walked"))


def _new_report(kept: tuple[str, ...], transformed: tuple[str, ...], dropped: tuple[str, ...],
                pseudonymised: Mapping[str, int]) -> MinimisationReport:
    """`MinimisationReport(kept, transformed, dropped, pseudonymised)`, built through its builder class."""
    report: Any = _new(_REPORT_BUILDER)
    report.kept = kept
    report.transformed = transformed
    report.dropped = dropped
    report.pseudonymised = pseudonymised
    report.__class__ = MinimisationReport
    return report  # type: ignore[no-any-return]


def _new_minimised(body: Any | None, query: tuple[tuple[str, str], ...], path_params: Mapping[str, str],
                   headers: Mapping[str, str], report: MinimisationReport,
                   unchecked: tuple[Any, ...] | None, finite_outside: bool) -> MinimisedRequest:
    """`MinimisedRequest(...)` with every field given, built through its builder class."""
    minimised: Any = _new(_MINIMISED_BUILDER)
    minimised.body = body
    minimised.query = query
    minimised.path_params = path_params
    minimised.headers = headers
    minimised.report = report
    minimised.unchecked_containers = unchecked
    minimised.finite_outside = finite_outside
    minimised.__class__ = MinimisedRequest
    return minimised  # type: ignore[no-any-return]


def _new_validated(policy: CompiledRoutePolicy, body: Any, walked: list[WalkResult] | None) -> ValidatedBody:
    """`ValidatedBody(policy, body, walked)`, built through its builder class."""
    validated: Any = _new(_VALIDATED_BUILDER)
    validated.policy = policy
    validated.body = body
    validated.walked = walked
    validated.__class__ = ValidatedBody
    return validated  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RoutePolicySpec:
    """A route's policy as declared: for each part of the request and response, field path -> action."""

    request_body: Mapping[str, FieldAction] = field(default_factory=dict)
    request_query: Mapping[str, FieldAction] = field(default_factory=dict)
    request_path: Mapping[str, FieldAction] = field(default_factory=dict)
    request_headers: Mapping[str, FieldAction] = field(default_factory=dict)
    response_body: Mapping[str, FieldAction] = field(default_factory=dict)
    response_headers: Mapping[str, FieldAction] = field(default_factory=dict)
    unknown_fields: UnknownFields = "drop"
    free_text: FreeTextMode = "reject"
    # Characters of free text scanned per request (and per response) at most; beyond, a refusal.
    free_text_max_chars: int = FREE_TEXT_MAX_CHARS
    schema: Mapping[str, Any] | None = None
    # Path parameter name -> JSON Schema of its value (`request.path_schema`); a parameter not named
    # here is only checked by the route matcher (one safe segment).
    path_schema: Mapping[str, Mapping[str, Any]] | None = None


class PolicyCompileError(ValueError):
    """A policy that cannot be compiled. `section` is e.g. ("request", "body"); `key` the declared path."""

    def __init__(self, section: tuple[str, ...], key: str | None, reason: str) -> None:
        super().__init__(reason)
        self.section = section
        self.key = key
        self.reason = reason


class _Run:
    """The mutable record of one application of a policy: what happened to which path, and refusals."""

    # `issued` and `reidentified` are set by `filter_response` only: the request side never reads them.
    __slots__ = ("counts", "dropped", "errors", "free_text_reject", "issued", "kept", "reidentified",
                 "reject_unknown", "scan_left", "scan_max", "transformed", "verbatim")
    issued: IssuedPseudonyms
    reidentified: dict[str, int]

    def __init__(self, reject_unknown: bool, free_text_reject: bool, scan_max: int) -> None:
        # Paths as dict keys: a path recorded again (one per array element) keeps its first place, so the
        # report needs no de-duplication pass.
        self.kept: dict[str, None] = {}
        self.transformed: dict[str, None] = {}
        self.dropped: dict[str, None] = {}
        self.counts: dict[str, int] = {}
        self.errors: list[tuple[type[GatewayError], Violation]] = []
        self.reject_unknown = reject_unknown
        self.free_text_reject = free_text_reject
        # The characters of free text this run may still scan: the scan is linear but not cheap on
        # digit-heavy text, and runs on the event loop, so what one request can cost is bounded.
        self.scan_max = scan_max
        self.scan_left = scan_max
        # Containers placed in the output whose keys came from the caller, not from the allowlist: the
        # only parts of the output whose keys the canonical form still has to check.
        self.verbatim: list[Any] = []

    def unknown(self, path: str) -> Any:
        if self.reject_unknown:
            self.errors.append((FieldNotAllowed, Violation(path, "field not in the route's allowlist")))
        else:
            self.dropped[path] = None
        return MISSING

    def refuse(self, kind: type[GatewayError], path: str, reason: str) -> Any:
        self.errors.append((kind, Violation(path, reason)))
        return MISSING

    def within_scan_budget(self, text: str, path: str) -> bool:
        """Takes `text`'s length from what this run may still scan; False (and a refusal naming the path,
        never the text) once the run is over its limit: the text is then not scanned at all."""
        self.scan_left -= len(text)
        if self.scan_left >= 0:
            return True
        self.refuse(FreeTextTooLong, path, f"more free text than the route scans ({self.scan_max} characters "
                                           "per request in all)")
        return False

    def scan_free_text(self, value: Any, path: str) -> Any:
        """`value` with identifiers in its strings redacted (or refused), recursing into containers.
        Free text is text: a number (an IMEI or phone written as a JSON number would pass the scanner) is
        refused, and so is an object key holding an identifier, whatever the mode (a redacted key could
        collide with its sibling). Every string and key scanned counts against the run's limit."""
        kind = type(value)
        if kind is str:
            if not self.within_scan_budget(value, path):
                return MISSING
            hits = scan(value)
            if not hits:
                return value
            if self.free_text_reject:
                found = ", ".join(sorted({hit.id_type for hit in hits}))
                return self.refuse(IdentifierInFreeText, path, f"free text contains an identifier ({found})")
            self.transformed[path] = None
            return redact(value, hits)
        if kind is dict:
            out = {}
            for key, item in value.items():
                if type(key) is str and not self.within_scan_budget(key, path):
                    return MISSING
                if type(key) is str and (hits := scan(key)):
                    found = ", ".join(sorted({hit.id_type for hit in hits}))
                    return self.refuse(IdentifierInFreeText, path,
                                       f"an object key in free text contains an identifier ({found})")
                out[key] = self.scan_free_text(item, path)
            return out
        if kind is list:
            return [self.scan_free_text(item, path) for item in value]
        if value is None or kind is bool:
            return value
        return self.refuse(SchemaViolation, path, "free text must be a string, not a number")

    def report(self) -> MinimisationReport:
        kept = self.kept
        # A path both kept (a null) and transformed (a value, in another array element) counts as transformed.
        for path in self.transformed:
            kept.pop(path, None)
        return _new_report(tuple(kept), tuple(self.transformed), tuple(self.dropped), self.counts)

    def raise_errors(self, response: bool) -> None:
        if not self.errors:
            return
        violations = [violation for _, violation in self.errors]
        if response:
            refused = [violation for kind, violation in self.errors if kind is UpstreamReidentifyRefused]
            if refused:
                raise UpstreamReidentifyRefused(
                    f"the partner's answer holds a pseudonym this request did not send, at {len(refused)} "
                    "place(s); it was not re-identified", refused, reason="upstream-reidentify")
            raise UpstreamError("the partner's response violates the route's response policy", violations,
                                reason="response-policy")
        kinds = {kind for kind, _ in self.errors}
        kind = next(k for k in _ERROR_ORDER if k in kinds)
        raise kind(f"request refused by the route's policy at {len(violations)} place(s)", violations)


Apply = Callable[[Any, _Run], Any]


def _leaf(action: FieldAction, path: str, partner_id: str, binder: PseudonymBinder) -> Apply:
    """The function applying one declared action to the value at `path`."""
    if isinstance(action, Keep):
        if action.free_text:
            def keep_free_text(value: Any, run: _Run) -> Any:
                run.kept[path] = None
                result = run.scan_free_text(value, path)
                if type(result) is dict or type(result) is list:
                    run.verbatim.append(result)
                return result
            return keep_free_text

        def keep(value: Any, run: _Run) -> Any:
            run.kept[path] = None
            if type(value) is dict or type(value) is list:
                run.verbatim.append(value)
            return value
        return keep
    if isinstance(action, Drop):
        def drop(value: Any, run: _Run) -> Any:
            run.dropped[path] = None
            return MISSING
        return drop
    if isinstance(action, Reidentify):
        return _reidentify_leaf(action.id_type, path, binder.bind_reverse(partner_id, action.id_type))
    if isinstance(action, Pseudonymise):
        id_type = action.id_type
        convert = binder.bind(partner_id, id_type, action.mode)
        invalid = f"not a valid {id_type}"

        def pseudonymise(value: Any, run: _Run) -> Any:
            if value is None:
                run.kept[path] = None
                return None
            if type(value) is int:
                value = str(value)
            elif type(value) is not str:
                return run.refuse(InvalidIdentifier, path, f"a {id_type} must be a string")
            try:
                result = convert(value)
            except InvalidIdentifier:
                return run.refuse(InvalidIdentifier, path, invalid)
            run.transformed[path] = None
            run.counts[id_type] = run.counts.get(id_type, 0) + 1
            return result
        return pseudonymise

    transform: Callable[[Any], Any]
    if isinstance(action, Generalise):
        if action.location_decimals is not None:
            decimals = action.location_decimals

            def transform(value: Any) -> Any:
                return generalise_location(value, decimals)
        elif action.date_precision is not None:
            precision = action.date_precision

            def transform(value: Any) -> Any:
                return generalise_date(value, precision)
        else:
            band = action.age_band or 1

            def transform(value: Any) -> Any:
                return generalise_age(value, band)
    else:
        keep_last, char = action.keep_last, action.char

        def transform(value: Any) -> Any:
            return mask_value(value, keep_last, char)

    def coarsen(value: Any, run: _Run) -> Any:
        if value is None:
            run.kept[path] = None
            return None
        try:
            result = transform(value)
        except NotGeneralisable as exc:
            return run.refuse(SchemaViolation, path, str(exc))
        run.transformed[path] = None
        if type(result) is dict or type(result) is list:
            run.verbatim.append(result)
        return result
    return coarsen


def _reidentify_leaf(id_type: str, path: str, convert: Callable[[str], str]) -> Apply:
    """A `reidentify` leaf: decrypts only a token that the run's request issued (`_Run.issued`), never
    another: the partner holds every token it was ever sent, and FF1 is a bijection, so any well-formed
    string would decrypt to somebody's identifier."""
    unissued = f"not a {id_type} pseudonym this request sent"

    def reidentify(value: Any, run: _Run) -> Any:
        if value is None:
            run.kept[path] = None
            return None
        if type(value) is int:
            value = str(value)
        elif type(value) is not str:
            return run.refuse(InvalidIdentifier, path, f"a {id_type} must be a string")
        issued: IssuedPseudonyms = run.issued
        try:
            sent = issued.sent(id_type, value)
            if sent is None:
                return run.refuse(UpstreamReidentifyRefused, path, unissued)
            result = convert(sent)
        except InvalidIdentifier:
            return run.refuse(InvalidIdentifier, path, f"not a reversible {id_type} pseudonym")
        run.transformed[path] = None
        run.counts[id_type] = run.counts.get(id_type, 0) + 1
        run.reidentified[path] = run.reidentified.get(path, 0) + 1
        return result
    return reidentify


def parse_field_path(text: str) -> tuple[str | None, ...]:
    """`items[].sku` -> ("items", None, "sku"): names, with None for "every element of an array"."""
    segments: list[str | None] = []
    for part in text.split("."):
        name = part
        arrays = 0
        while name.endswith("[]"):
            name = name[:-2]
            arrays += 1
        if not name and not (arrays and not segments):
            raise ValueError(f"field path {text!r} has an empty name")
        if "[" in name or "]" in name:
            raise ValueError(f"field path {text!r}: `[]` may only follow a name")
        if name:
            segments.append(name)
        segments.extend([None] * arrays)
    return tuple(segments)


class _Builder:
    """A node of the declared-path tree before compiling: a leaf action, object fields or array items."""

    __slots__ = ("action", "declared", "fields", "items", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.action: FieldAction | None = None
        self.declared: str | None = None
        self.fields: dict[str, _Builder] = {}
        self.items: _Builder | None = None

    def child(self, segment: str | None, declared: str) -> _Builder:
        if self.action is not None:
            raise ValueError(f"{declared!r} lies under {self.declared!r}, which already has an action")
        if segment is None:
            if self.fields:
                raise ValueError(f"{declared!r} treats {self.path or ROOT!r} as an array and an object")
            if self.items is None:
                self.items = _Builder(f"{self.path}[]")
            return self.items
        if self.items is not None:
            raise ValueError(f"{declared!r} treats {self.path or ROOT!r} as an object and an array")
        if segment == UNDECLARED:  # `recipient.*` in a report means "undeclared keys under recipient"
            raise ValueError(f"{declared!r}: the name {UNDECLARED!r} is reserved for undeclared fields")
        node = self.fields.get(segment)
        if node is None:
            node = self.fields[segment] = _Builder(f"{self.path}.{segment}" if self.path else segment)
        return node

    def set_action(self, action: FieldAction, declared: str) -> None:
        if self.action is not None or self.fields or self.items is not None:
            raise ValueError(f"{declared!r} overlaps another declared path")
        self.action = action
        self.declared = declared

    def check_names(self, section: tuple[str, ...]) -> bool:
        """Refuse sibling names that one canonical form cannot tell apart (`Phone` and `phone`, or two
        Unicode spellings); True when every declared name is ASCII, so the output's own keys need no
        check when it is made canonical."""
        folded: dict[str, str] = {}
        plain = True
        for name, node in self.fields.items():
            plain = plain and name.isascii()
            fold = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
            if fold in folded:
                raise PolicyCompileError(section, node.declared or node.path,
                                         f"{node.path!r} and {folded[fold]!r} differ only by case or Unicode form")
            folded[fold] = node.path
            plain = node.check_names(section) and plain
        if self.items is not None:
            plain = self.items.check_names(section) and plain
        return plain

    def compile(self, partner_id: str, binder: PseudonymBinder, names: frozenset[str] | None = None,
                scalar_keeps: bool = False) -> Apply:
        """The node as one function; `names` are the profile's key names (codegen.profile_names; default:
        this tree's own), the only undeclared keys reported by name. With `scalar_keeps` (responses) a
        `keep` without `open_subtree` passes scalars only: an object or array under it is dropped."""
        if names is None:
            names = profile_names(self, None)
        if self.action is not None:
            leaf = _leaf(self.action, self.path, partner_id, binder)
            if scalar_keeps and isinstance(self.action, Keep) and not self.action.open_subtree:
                return _scalars_only(leaf, self.path)
            return leaf
        if self.items is not None:
            return _array(self.path, self.items.compile(partner_id, binder, names, scalar_keeps))
        fields: dict[str, Apply | str] = {}
        for name, node in self.fields.items():
            plain_keep = isinstance(node.action, Keep) and not node.action.free_text and not (
                scalar_keeps and node.action.open_subtree)
            fields[name] = node.path if plain_keep else node.compile(partner_id, binder, names, scalar_keeps)
        return _object(self.path, fields, names, scalar_keeps)


def _scalars_only(keep: Apply, path: str) -> Apply:
    """A response `keep` leaf that passes a scalar (string, number, boolean, null) and drops an object or
    array: an allowlisted name (`status`, `tracking_number`) must not carry a partner's whole subtree
    (phones, e-mails, locations) to the caller. `{keep: {open_subtree: true}}` is the explicit exception."""
    def keep_scalar(value: Any, run: _Run) -> Any:
        if type(value) is dict or type(value) is list:
            run.dropped[path] = None
            return MISSING
        return keep(value, run)
    return keep_scalar


def _object(path: str, fields: dict[str, Apply | str], names: frozenset[str], scalar_keeps: bool = False) -> Apply:
    """An object node. `fields` maps a declared name to its function, or, for a plain `keep` leaf, to the
    leaf's path: most declared fields are plain keeps, and handling them inline saves a call per field.
    With `scalar_keeps` (responses) such a leaf holding an object or array is dropped (`_scalars_only`)."""
    lookup = fields.get
    # Report paths of undeclared keys: by name only for a name the profile writes, else the object's
    # marker (`recipient.*`): the caller's key names never reach the report, the ledger or a refusal.
    unknown_paths, marker = undeclared_paths(f"{path}." if path else "", names)
    unknown_path = unknown_paths.get

    def apply_object(value: Any, run: _Run) -> Any:
        if type(value) is not dict:
            if value is None:
                run.dropped[path or ROOT] = None
                return MISSING
            return run.unknown(path or ROOT)
        out: dict[str, Any] = {}
        kept = run.kept
        for key, item in value.items():
            entry = lookup(key)
            if entry is None:
                unknown = unknown_path(key, marker)
                if run.reject_unknown:
                    run.unknown(unknown)
                else:
                    run.dropped[unknown] = None
            elif isinstance(entry, str):
                kind = type(item)
                if kind is dict or kind is list:
                    if scalar_keeps:
                        run.dropped[entry] = None
                        continue
                    run.verbatim.append(item)
                kept[entry] = None
                out[key] = item
            else:
                result = entry(item, run)
                if result is not MISSING:
                    out[key] = result
        # An object left empty says nothing the partner needs; omit it rather than send a shell.
        return out if out else MISSING
    return apply_object


def _array(path: str, element: Apply) -> Apply:
    def apply_array(value: Any, run: _Run) -> Any:
        if type(value) is not list:
            if value is None:
                run.dropped[path or ROOT] = None
                return MISSING
            return run.unknown(path or ROOT)
        out = []
        for item in value:
            result = element(item, run)
            if result is not MISSING:
                out.append(result)
        return out
    return apply_array


def compile_body(policy: Mapping[str, FieldAction], partner_id: str, binder: PseudonymBinder,
                 section: tuple[str, ...]) -> tuple[Apply, bool]:
    """The body policy as one function, and whether all its declared names are ASCII (so the keys it
    writes are canonical); raises `PolicyCompileError` naming the declared path. In a response policy
    (`section` ("response", ...)) a `keep` without `open_subtree` passes scalars only."""
    root, plain_names = _body_tree(policy, section)
    return root.compile(partner_id, binder, profile_names(root, None), section[0] == "response"), plain_names


def _body_tree(policy: Mapping[str, FieldAction], section: tuple[str, ...]) -> tuple[_Builder, bool]:
    root = _Builder("")
    for declared, action in policy.items():
        try:
            node = root
            for segment in parse_field_path(declared):
                node = node.child(segment, declared)
            node.set_action(action, declared)
        except ValueError as exc:
            raise PolicyCompileError(section, declared, str(exc)) from None
    plain_names = root.check_names(section)
    return root, plain_names


def _compile_names(policy: Mapping[str, FieldAction], prefix: str, partner_id: str, binder: PseudonymBinder,
                   section: tuple[str, ...], fold_case: bool) -> dict[str, tuple[str, Apply]]:
    """Flat name -> (output name, function) for query, path parameters and headers."""
    compiled: dict[str, tuple[str, Apply]] = {}
    for name, action in policy.items():
        if isinstance(action, Reidentify) and section[0] == "request":
            raise PolicyCompileError(section, name, "reidentify is for responses only")
        key = name.lower() if fold_case else name
        if key in compiled:
            raise PolicyCompileError(section, name, "declared twice (header names ignore case)")
        compiled[key] = (name, _leaf(action, f"{prefix}{name}", partner_id, binder))
    return compiled


def _check_body_actions(policy: Mapping[str, FieldAction], section: tuple[str, ...]) -> None:
    if section[0] == "request":
        for declared, action in policy.items():
            if isinstance(action, Reidentify):
                raise PolicyCompileError(section, declared, "reidentify is for responses only")


class CompiledRoutePolicy:
    """One route's policy, compiled: schema validation, request minimisation and response filtering."""

    __slots__ = (
        "_finish_pops",
        "_free_text_reject",
        "_generated",
        "_issued_sources",
        "_kept_header_paths",
        "_path",
        "_path_schema",
        "_plain_request_names",
        "_query",
        "_reject_unknown",
        "_request_body",
        "_request_header_names",
        "_request_headers",
        "_response_body",
        "_response_header_names",
        "_response_headers",
        "_schema",
        "free_text",
        "partner_id",
        "reidentifies",
        "spec",
        "unknown_fields",
    )

    def __init__(self, spec: RoutePolicySpec, *, partner_id: str, pseudonymiser: PseudonymBinder) -> None:
        self.spec = spec
        self.partner_id = partner_id
        self.unknown_fields = spec.unknown_fields
        self.free_text = spec.free_text
        self._reject_unknown = spec.unknown_fields == "reject"
        self._free_text_reject = spec.free_text == "reject"
        self._request_header_names: dict[str, tuple[str, Apply] | str] = {}
        self._response_header_names: dict[str, tuple[str, Apply] | str] = {}
        _check_body_actions(spec.request_body, ("request", "body"))
        self._schema = CompiledSchema(spec.schema) if spec.schema is not None else None
        request_tree, self._plain_request_names = _body_tree(spec.request_body, ("request", "body"))
        # The key names the profile writes: the generated walk and this engine report the same ones by name.
        names = profile_names(request_tree, spec.schema)
        self._request_body = request_tree.compile(partner_id, pseudonymiser, names)
        self._generated = generate_route(
            request_tree, spec.schema, reject_unknown=spec.unknown_fields == "reject",
            free_text_reject=spec.free_text == "reject", free_text_max_chars=spec.free_text_max_chars,
            bind=lambda action: value_function(action, partner_id, pseudonymiser.bind, pseudonymiser.bind_reverse),
            schema_compiles=self._schema is not None and self._schema.compiled_fast, names=names)
        self._response_body, _ = compile_body(spec.response_body, partner_id, pseudonymiser, ("response", "body"))
        self._query = _compile_names(spec.request_query, "query:", partner_id, pseudonymiser,
                                     ("request", "query"), fold_case=False)
        self._path = _compile_names(spec.request_path, "path:", partner_id, pseudonymiser,
                                    ("request", "path"), fold_case=False)
        self._path_schema = CompiledParamSchemas(spec.path_schema) if spec.path_schema else None
        self._request_headers = _compile_names(spec.request_headers, "header:", partner_id, pseudonymiser,
                                               ("request", "headers"), fold_case=True)
        # When every declared request header is a plain keep, minimise_validated finishes inline: declared
        # name -> its report path. None: some header has another action (the general finish serves).
        plain_headers = all(isinstance(action, Keep) and not action.free_text
                            for action in spec.request_headers.values())
        self._kept_header_paths: dict[str, str] | None = (
            {name: f"header:{name}" for name in spec.request_headers} if plain_headers else None)
        # Whether `_finish_plain` has to take transformed paths out of the kept ones: only when the fused walk
        # can record a path both ways, or a body path could be spelt like a header's report path.
        self._finish_pops = self._generated.fused_overlaps or any(
            path.startswith("header:") for path in spec.request_body)
        self._response_headers = _compile_names(spec.response_headers, "header:", partner_id, pseudonymiser,
                                                ("response", "headers"), fold_case=True)
        self._issued_sources = _issued_sources(spec)
        # Whether the response re-identifies anything: only then does a request keep its issued pseudonyms.
        self.reidentifies = bool(self._issued_sources)

    def request_actions(self, location: str) -> Mapping[str, FieldAction]:
        """The declared request actions of `location` ("body", "query", "path" or "headers"), by path."""
        return {"body": self.spec.request_body, "query": self.spec.request_query, "path": self.spec.request_path,
                "headers": self.spec.request_headers}[location]

    def response_actions(self, location: str) -> Mapping[str, FieldAction]:
        """The declared response actions of `location` ("body" or "headers"), by path."""
        return {"body": self.spec.response_body, "headers": self.spec.response_headers}[location]

    @property
    def generated(self) -> GeneratedRoute:
        """The route's generated request-body functions (for tests and diagnostics)."""
        return self._generated

    def validate(self, body: Any) -> None:
        """Check `body` against the route's request JSON Schema; raises `SchemaViolation` with paths."""
        check = self._generated.check
        if check is not None and check(body):
            return
        if self._schema is not None:
            self._schema.validate(body)

    def validate_request(self, body: Any) -> ValidatedBody:
        """`validate(body)` (same refusal), in one pass with the body's minimisation, whose outcome the
        returned value carries to `minimise_validated`. Refusals of the policy itself (unknown fields
        under `reject`, identifiers in free text, ...) still come from `minimise_validated` only."""
        fused = self._generated.fused
        if fused is not None and body is not None:
            try:
                walked = fused(body)
            except Exception:  # whatever the policy raises must come from minimise_validated,
                walked = None  # after the caller's scope check, as minimise_request would raise it
            if walked is not None:  # `_new_validated` written out
                validated: Any = _new(_VALIDATED_BUILDER)
                validated.policy = self
                validated.body = body
                validated.walked = [walked]
                validated.__class__ = ValidatedBody
                return validated  # type: ignore[no-any-return]
        self.validate(body)
        return _new_validated(self, body, None)

    def minimise_validated(self, validated: ValidatedBody, query: Sequence[tuple[str, str]],
                           path_params: Mapping[str, str], headers: Mapping[str, str]) -> MinimisedRequest:
        """`minimise_request(validated.body, ...)`, reusing the walk `validate_request` already did."""
        held = validated.walked if validated.policy is self else None
        try:
            # The report grows with query, path and header entries: this call takes the walk's containers.
            walked = held.pop() if held else None
        except IndexError:  # taken by a concurrent call in between
            walked = None
        if walked is None:  # no walk, another route's, or already taken by an earlier call
            return self._minimise(validated.body, None, query, path_params, headers)
        kept_header_paths = self._kept_header_paths
        if kept_header_paths is not None and not query and not path_params:
            return self._finish_plain(walked, headers, kept_header_paths)
        run: _Run = _new(_Run)
        body, run.kept, run.transformed, run.dropped, run.counts, run.verbatim, run.scan_left = walked
        run.errors = []
        run.reject_unknown, run.free_text_reject = self._reject_unknown, self._free_text_reject
        run.scan_max = self.spec.free_text_max_chars
        return self._finish(body, run, query, path_params, headers, True)

    def minimise_request(self, body: Any | None, query: Sequence[tuple[str, str]], path_params: Mapping[str, str],
                         headers: Mapping[str, str]) -> MinimisedRequest:
        """The request as the partner may see it, and what was done; raises a 422 refusal naming paths."""
        return self._minimise(body, None, query, path_params, headers)

    def _minimise(self, body: Any | None, walked: WalkResult | None, query: Sequence[tuple[str, str]],
                  path_params: Mapping[str, str], headers: Mapping[str, str]) -> MinimisedRequest:
        run = _Run(self._reject_unknown, self._free_text_reject, self.spec.free_text_max_chars)
        if walked is None and body is not None and (walk := self._generated.walk) is not None:
            walked = walk(body)
        if walked is not None:
            # The generated walk is sure (nothing refused, nothing doubtful): its records are exactly what
            # the reference walk below would have made.
            out_body, run.kept, run.transformed, run.dropped, run.counts, run.verbatim, run.scan_left = walked
        else:
            out_body = _apply_root(self._request_body, body, run)
        return self._finish(out_body, run, query, path_params, headers, walked is not None)

    def _finish(self, out_body: Any, run: _Run, query: Sequence[tuple[str, str]], path_params: Mapping[str, str],
                headers: Mapping[str, str], generated: bool) -> MinimisedRequest:
        """Query, path parameters and headers after the body, then the refusal or the result. `generated`:
        the generated walk built the body (no NaN or infinity outside the caller-supplied containers)."""
        out_query: list[tuple[str, str]] = []
        for name, value in query:
            entry = self._query.get(name)
            if entry is None:
                run.unknown(_UNDECLARED_QUERY)  # the caller's name, never written out
                continue
            result = entry[1](value, run)
            if result is not MISSING:
                out_query.append((entry[0], result))
        out_path: dict[str, str] = {}
        path_schema = self._path_schema
        for name, value in path_params.items():
            entry = self._path.get(name)
            if entry is None:
                run.unknown(f"path:{name}")
                continue
            if path_schema is not None and (problem := path_schema.problem(name, value)) is not None:
                run.refuse(SchemaViolation, f"path:{name}", problem)
                continue
            result = entry[1](value, run)
            if result is not MISSING:
                out_path[name] = result
        out_headers = _apply_headers(self._request_headers, headers, run, self._request_header_names)
        if run.errors:
            run.raise_errors(response=False)
        unchecked = tuple(run.verbatim) if self._plain_request_names else None
        return _new_minimised(out_body, tuple(out_query), out_path, out_headers, run.report(), unchecked, generated)

    def _finish_plain(self, walked: WalkResult, headers: Mapping[str, str],
                      kept_header_paths: dict[str, str]) -> MinimisedRequest:
        """`_finish` for a generated walk's outcome, no query or path parameters and only plain-keep
        headers: nothing can be refused, so the records go straight into the walk's containers (no `_Run`)
        in the order `_finish` makes them. Property-tested against `_finish`."""
        body, kept, transformed, dropped, counts, verbatim, _ = walked
        out_headers: dict[str, str] = {}
        resolved = self._request_header_names
        for name, value in headers.items():
            entry = resolved.get(name)
            if entry is None:
                entry = _resolve_header(self._request_headers, name, resolved)
            if type(entry) is str:
                dropped[entry] = None
                continue
            declared = entry[0]
            kept[kept_header_paths[declared]] = None
            kind: Any = type(value)  # a str in practice; the keep leaf's record for any other value
            if kind is dict or kind is list:
                verbatim.append(value)
            out_headers[declared] = value
        # A path both kept (a null) and transformed (a value, in another array element) counts as transformed;
        # the loop is skipped when the route cannot record one path both ways (`_finish_pops`).
        if self._finish_pops:
            for path in transformed:
                kept.pop(path, None)
        # `_new_report` and `_new_minimised` written out (two calls fewer on the proxy's path).
        report: Any = _new(_REPORT_BUILDER)
        report.kept = tuple(kept)
        report.transformed = tuple(transformed)
        report.dropped = tuple(dropped)
        report.pseudonymised = counts
        report.__class__ = MinimisationReport
        minimised: Any = _new(_MINIMISED_BUILDER)
        minimised.body = body
        minimised.query = ()
        minimised.path_params = {}
        minimised.headers = out_headers
        minimised.report = report
        minimised.unchecked_containers = tuple(verbatim) if self._plain_request_names else None
        minimised.finite_outside = True  # the generated walk built the body
        minimised.__class__ = MinimisedRequest
        return minimised  # type: ignore[no-any-return]

    def issued_pseudonyms(self, minimised: MinimisedRequest) -> IssuedPseudonyms:
        """The `fpe` pseudonyms `minimised` sends the partner, of the types the response re-identifies:
        read from the minimised request itself (the values at the route's `fpe` leaves), so the request
        side pays nothing for it. Empty when the response re-identifies nothing."""
        by_type: dict[str, dict[str, str]] = {}
        for id_type, location, key in self._issued_sources:
            tokens = by_type.setdefault(id_type, {})
            if location == "body":
                _collect_tokens(minimised.body, key, 0, id_type, tokens)
            elif location == "query":
                for name, value in minimised.query:
                    if name == key:
                        _add_token(value, id_type, tokens)
            elif location == "path":
                _add_token(minimised.path_params.get(key), id_type, tokens)
            else:
                _add_token(minimised.headers.get(key), id_type, tokens)
        return IssuedPseudonyms(by_type)

    def filter_response(self, body: Any | None, headers: Mapping[str, str],
                        issued: IssuedPseudonyms = NO_PSEUDONYMS_ISSUED) -> FilteredResponse:
        """The partner's answer as the caller may see it. Undeclared fields are dropped (never refused: the
        caller did nothing wrong); a value the policy cannot apply to raises `UpstreamError`, a token to
        re-identify that is not among `issued` (the request's own, `issued_pseudonyms`)
        `UpstreamReidentifyRefused`."""
        run = _Run(False, self.free_text == "reject", self.spec.free_text_max_chars)
        run.issued = issued
        run.reidentified = {}
        out_body = _apply_root(self._response_body, body, run)
        out_headers = _apply_headers(self._response_headers, headers, run, self._response_header_names)
        run.raise_errors(response=True)
        return FilteredResponse(out_body, out_headers, run.report(), run.reidentified)


IssuedSource = tuple[str, str, Any]  # (identifier type, "body" | "query" | "path" | "headers", path or name)


def _issued_sources(spec: RoutePolicySpec) -> tuple[IssuedSource, ...]:
    """Where the request puts the `fpe` pseudonyms of each type the response re-identifies; refuses
    (`PolicyCompileError`) a `reidentify` whose type the request never pseudonymises with `fpe`: it could
    only ever refuse, since nothing but the exchange's own tokens is re-identified."""
    wanted: dict[str, tuple[tuple[str, str], str]] = {}
    for location, actions in (("body", spec.response_body), ("headers", spec.response_headers)):
        for declared, action in actions.items():
            if isinstance(action, Reidentify):
                wanted.setdefault(action.id_type, (("response", location), declared))
    if not wanted:
        return ()
    sources: list[IssuedSource] = []
    for location, actions in (("body", spec.request_body), ("query", spec.request_query),
                              ("path", spec.request_path), ("headers", spec.request_headers)):
        for declared, action in actions.items():
            if isinstance(action, Pseudonymise) and action.mode == "fpe" and action.id_type in wanted:
                sources.append((action.id_type, location,
                                parse_field_path(declared) if location == "body" else declared))
    for id_type, (section, declared) in wanted.items():
        if not any(source[0] == id_type for source in sources):
            raise PolicyCompileError(
                section, declared, f"reidentify {{type: {id_type}}} needs the request to pseudonymise a {id_type} "
                "with mode fpe: only the pseudonyms a request sent are re-identified in its answer")
    return tuple(sources)


def _add_token(value: Any, id_type: str, tokens: dict[str, str]) -> None:
    """Records one issued token under its spelling as sent and its normalised spelling."""
    if type(value) is not str:
        return  # null, or absent
    tokens[value] = value
    with contextlib.suppress(InvalidIdentifier):  # every fpe token is a valid value of its type
        tokens.setdefault(normalise(id_type, value), value)


def _collect_tokens(value: Any, segments: tuple[str | None, ...], index: int, id_type: str,
                    tokens: dict[str, str]) -> None:
    """The tokens at the declared path `segments` of a minimised body (None: every array element)."""
    if index == len(segments):
        _add_token(value, id_type, tokens)
        return
    segment = segments[index]
    if segment is None:
        if type(value) is list:
            for item in value:
                _collect_tokens(item, segments, index + 1, id_type, tokens)
    elif type(value) is dict and segment in value:
        _collect_tokens(value[segment], segments, index + 1, id_type, tokens)


def _apply_root(apply: Apply, body: Any | None, run: _Run) -> Any | None:
    if body is None:
        return None
    result = apply(body, run)
    if result is MISSING:
        return {} if type(body) is dict else None
    return result


# The report paths of undeclared query parameters and headers: their names are the caller's (a header
# `X-Contact-kim@...`, a query `?kim@example.com=1`) and are never written out (docs/ledger.md).
_UNDECLARED_QUERY = f"query:{UNDECLARED}"
_UNDECLARED_HEADER = f"header:{UNDECLARED}"

# How many caller-chosen names (header names) a policy remembers what it does with; beyond that it works
# each out again, so a caller sending ever new names cannot grow the memory.
_NAME_CACHE_MAX = 256


def _apply_headers(policy: Mapping[str, tuple[str, Apply]], headers: Mapping[str, str], run: _Run,
                   resolved: dict[str, tuple[str, Apply] | str]) -> dict[str, str]:
    """`resolved` remembers, per header name as sent, its declared entry or (undeclared) the path its
    drop is reported under, so a repeated name costs one lookup instead of two lower-casings."""
    out: dict[str, str] = {}
    dropped = run.dropped
    for name, value in headers.items():
        entry = resolved.get(name)
        if entry is None:
            entry = _resolve_header(policy, name, resolved)
        if isinstance(entry, str):
            # Undeclared headers (Authorization, cookies, tracing) never pass and never refuse a request.
            dropped[entry] = None
            continue
        result = entry[1](value, run)
        if result is not MISSING:
            out[entry[0]] = result
    return out


def _resolve_header(policy: Mapping[str, tuple[str, Apply]], name: str,
                    resolved: dict[str, tuple[str, Apply] | str]) -> tuple[str, Apply] | str:
    """The declared entry of header `name` as sent, or (undeclared) the path its drop is reported under;
    remembered in `resolved` while it holds fewer than _NAME_CACHE_MAX names."""
    entry = policy.get(name.lower()) or _UNDECLARED_HEADER
    if len(resolved) < _NAME_CACHE_MAX:
        resolved[name] = entry
    return entry
