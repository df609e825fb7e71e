"""One generated Python function per route for the request-body hot path: schema check and allowlist
walk as plain code, no call per key.

The closures of engine.py and fastschema.py cost a Python call per value; for a 1.5 KB order that is
most of the policy's time. Here the compiled policy tree and the route's JSON Schema are turned into
the source text of one function (as fastjsonschema and attrs do), compiled once when the profile is
loaded. Only profile-defined names ever enter the source, as `repr()` literals; everything else
(pseudonym functions, transforms, regexes, schema closures) is passed in the namespace. No user data is
ever part of the source.

The generated code covers the ordinary case only. Whenever anything is doubtful (a schema "no", a
value of an unexpected type, a refusal, an identifier that does not convert, free text to scan inside
a container, unknown fields under `reject`) it returns None and the caller runs the reference engine,
which stays the authority: its violations and refusals are what the caller sees. Agreement with the
reference engine is property-tested (tests/policy/test_policy_codegen.py).

Arrays of like objects: after the first element the general loop served whole, an element with the same
key set (same count, every name present: one itemgetter call) is checked on its declared values only and
its kept values become a new object in declared order (the canonical form sorts keys anyway); it makes no
records, since the first element of that key set made them all in this call.

Three variants come from one generator: the schema check alone (`validate`), the walk alone
(`minimise_request`) and both fused in one pass (`validate_request`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import InvalidIdentifier
from gateway.policy.actions import (
    Drop,
    FieldAction,
    Generalise,
    Keep,
    NotGeneralisable,
    Pseudonymise,
    Reidentify,
    date_generaliser,
    generalise_age,
    generalise_location,
    mask_value,
)
from gateway.policy.fastschema import ANNOTATIONS, Unsupported, compile_check
from gateway.policy.freetext import FREE_TEXT_MAX_CHARS, redact, scan

# What a generated walk returns when it is sure: the body and the report records in the reference order,
# and how many characters of free text the request may still have scanned (its query and headers).
WalkResult = tuple[Any, dict[str, None], dict[str, None], dict[str, None], dict[str, int], list[Any], int]
GeneratedWalk = Callable[[Any], WalkResult | None]
GeneratedCheck = Callable[[Any], bool | None]

# Keywords written out as plain code; any other keyword makes that schema node a fastschema closure call.
_NATIVE_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems",
                              "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
                              "exclusiveMinimum", "exclusiveMaximum"}) | ANNOTATIONS
_NATIVE_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_BOUNDS = (("minimum", "<"), ("maximum", ">"), ("exclusiveMinimum", "<="), ("exclusiveMaximum", ">="))
# Python refuses more than 20 statically nested blocks (two indentation levels per object here, at most
# one of them a `for`); deeper routes keep the reference engine.
_MAX_INDENT = 34
_MAX_SOURCE_LINES = 20_000


class PolicyNode(Protocol):
    """What the generator reads of engine._Builder: a leaf action, object fields or array items."""

    @property
    def path(self) -> str: ...

    @property
    def action(self) -> FieldAction | None: ...

    @property
    def fields(self) -> Mapping[str, PolicyNode]: ...

    @property
    def items(self) -> PolicyNode | None: ...


class _TooComplex(Exception):
    """The route is beyond what the generator writes out; the reference engine serves it."""


@dataclass(frozen=True, slots=True)
class GeneratedRoute:
    """The generated functions of one route's request body (None where not generated) and their source,
    kept for debugging and tests."""

    check: GeneratedCheck | None
    walk: GeneratedWalk | None
    fused: GeneratedWalk | None
    sources: tuple[str, ...]
    # Whether one path can be recorded both kept and transformed by the fused walk (a transform under an
    # array, kept where an element holds null; a redacted free-text field, kept then transformed): only
    # then does the report have to take the transformed paths out of the kept ones.
    fused_overlaps: bool = True


class _Writer:
    """Source text being built, with the names its constants are bound to."""

    def __init__(self, reject_unknown: bool, free_text_reject: bool, bind: Callable[[FieldAction], Callable[[Any],
                 Any]], names: frozenset[str] = frozenset(), free_text_max_chars: int = FREE_TEXT_MAX_CHARS) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"MISS": _MISS, "InvalidIdentifier": InvalidIdentifier,
                                          "NotGeneralisable": NotGeneralisable, "scan": scan, "redact": redact,
                                          "SCAN_MAX": free_text_max_chars}
        self.counter = 0
        # Flags of report paths appended once per call: a leaf under an array would otherwise add its path
        # once per element (the report keeps first occurrences only, so the outcome is the same).
        self.once_flags: list[str] = []
        self.reject_unknown = reject_unknown
        self.free_text_reject = free_text_reject
        self.bind = bind
        # The key names the profile writes (profile_names): the only ones a report may hold by name.
        self.names = names
        # Set when the code may record one path both kept and transformed (see GeneratedRoute).
        self.overlaps = False
        # Identifier types that one leaf of the whole route pseudonymises (or reidentifies): outside an
        # array that leaf runs at most once per call, so its count is set to 1 rather than incremented.
        self.single_id_types: frozenset[str] = frozenset()

    def emit(self, depth: int, text: str) -> None:
        if depth > _MAX_INDENT or len(self.lines) > _MAX_SOURCE_LINES:
            raise _TooComplex
        self.lines.append("    " * depth + text)

    def name(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def record(self, depth: int, into: str, path_expr: str, in_array: bool) -> None:
        """Record `path_expr` in a report dict; under an array only the first time per call."""
        if not in_array:
            self.emit(depth, f"{into}[{path_expr}] = None")
            return
        flag = self.name("first")
        self.once_flags.append(flag)
        self.emit(depth, f"if {flag}: {flag} = False; {into}[{path_expr}] = None")

    def constant(self, value: Any, stem: str = "c") -> str:
        name = self.name(stem)
        self.namespace[name] = value
        return name


class _Missing:
    __slots__ = ()


_MISS = _Missing()


# JSON types whose schema check (written out) leaves no NaN or infinity: an "integer" float is integral.
# Every other value the walk puts in its output is tested (`v - v` is 0.0 only for a finite float), so a
# body the generated walk served holds no NaN or infinity outside the caller-supplied containers, which
# canonical_dumps_with_known_keys tests itself; MinimisedRequest.canonical_body then skips its search for
# the `null` orjson writes them as.
_FINITE_TYPES = frozenset({"string", "integer", "boolean", "null", "object", "array"})


def _native_type(schema: Any) -> str | None:
    """The single JSON type of a schema node written out as plain code, or None (closure or trivial)."""
    if not isinstance(schema, dict) or not _NATIVE_KEYWORDS.issuperset(schema):
        return None
    declared = schema.get("type")
    return declared if isinstance(declared, str) and declared in _NATIVE_TYPES else None


def _trivial(schema: Any) -> bool:
    return schema is None or schema is True or (isinstance(schema, dict) and ANNOTATIONS.issuperset(schema))


def _emit_closure(w: _Writer, depth: int, var: str, schema: Any) -> None:
    try:
        check = compile_check(schema)
    except Unsupported:
        raise _TooComplex from None
    w.emit(depth, f"if not {w.constant(check, 'schema')}({var}): return None")


def _emit_type(w: _Writer, depth: int, var: str, json_type: str, schema: Mapping[str, Any]) -> None:
    """The type test of a native node and the keywords of that type other than properties and items."""
    if json_type == "string":
        w.emit(depth, f"if type({var}) is not str: return None")
        if "minLength" in schema or "maxLength" in schema:
            size = w.name("n")
            w.emit(depth, f"{size} = len({var})")
            if "minLength" in schema:
                w.emit(depth, f"if {size} < {w.constant(schema['minLength'])}: return None")
            if "maxLength" in schema:
                w.emit(depth, f"if {size} > {w.constant(schema['maxLength'])}: return None")
        if "pattern" in schema:
            try:
                search = re.compile(schema["pattern"]).search
            except (re.error, TypeError):
                raise _TooComplex from None
            w.emit(depth, f"if {w.constant(search, 'pattern')}({var}) is None: return None")
    elif json_type in ("number", "integer"):
        if json_type == "number":
            w.emit(depth, f"if type({var}) is not int and type({var}) is not float: return None")
        else:
            # JSON Schema's integer is any number with a zero fraction, so 2.0 is an integer.
            w.emit(depth, f"if type({var}) is not int and not (type({var}) is float and {var}.is_integer()): "
                          "return None")
        for keyword, failing in _BOUNDS:
            if keyword in schema:
                w.emit(depth, f"if {var} {failing} {w.constant(schema[keyword])}: return None")
    elif json_type == "object":
        w.emit(depth, f"if type({var}) is not dict: return None")
        for name in schema.get("required") or ():
            w.emit(depth, f"if {name!r} not in {var}: return None")
    elif json_type == "array":
        w.emit(depth, f"if type({var}) is not list: return None")
        if "minItems" in schema:
            w.emit(depth, f"if len({var}) < {w.constant(schema['minItems'])}: return None")
        if "maxItems" in schema:
            w.emit(depth, f"if len({var}) > {w.constant(schema['maxItems'])}: return None")
    elif json_type == "boolean":
        w.emit(depth, f"if type({var}) is not bool: return None")
    else:
        w.emit(depth, f"if {var} is not None: return None")


def _emit_check(w: _Writer, depth: int, var: str, schema: Any) -> str | None:
    """Code returning None unless `var` is valid against `schema`; the JSON type the code guarantees
    `var` has after it, if there is one."""
    if _trivial(schema):
        return None
    if schema is False:
        w.emit(depth, "return None")
        return None
    json_type = _native_type(schema)
    if json_type is None:
        _emit_closure(w, depth, var, schema)
        return None
    _emit_type(w, depth, var, json_type, schema)
    if json_type == "object":
        properties: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties", True)
        if extra is True:
            for name, sub in properties.items():
                if _trivial(sub):
                    continue
                item = w.name("p")
                w.emit(depth, f"{item} = {var}.get({name!r}, MISS)")
                w.emit(depth, f"if {item} is not MISS:")
                _emit_check(w, depth + 1, item, sub)
                w.emit(depth + 1, "pass")
        else:
            key, item = w.name("k"), w.name("p")
            w.emit(depth, f"for {key}, {item} in {var}.items():")
            keyword = "if"
            for name, sub in properties.items():
                w.emit(depth + 1, f"{keyword} {key} == {name!r}:")
                _emit_check(w, depth + 2, item, sub)
                w.emit(depth + 2, "pass")
                keyword = "elif"
            w.emit(depth + 1, "else:" if properties else "if True:")
            _emit_check(w, depth + 2, item, extra)
            w.emit(depth + 2, "pass")
    elif json_type == "array" and not _trivial(schema.get("items")):
        item = w.name("e")
        w.emit(depth, f"for {item} in {var}:")
        _emit_check(w, depth + 1, item, schema["items"])
    return json_type


def _emit_container_schema(w: _Writer, depth: int, var: str, schema: Any, wanted: str) -> Any:
    """The schema test of a node the policy walks into (an object or an array); returns the schema whose
    properties or items the walk still has to check, or None when the whole node was checked here."""
    if _trivial(schema):
        return None
    if _native_type(schema) == wanted:
        _emit_type(w, depth, var, wanted, schema)
        return schema
    _emit_check(w, depth, var, schema)
    return None


def _emit_leaf(w: _Writer, depth: int, var: str, node: PolicyNode, store: Callable[[str], str],
               in_array: bool, known: str | None) -> None:
    """The action of a leaf; `known` is the JSON type the schema check already guaranteed, if any."""
    action = node.action
    path = repr(node.path)
    if isinstance(action, Keep):
        kind = w.name("t")
        if action.free_text:
            hits = w.name("h")
            # Each string scanned counts against the request's limit; over it, the reference engine refuses.
            if known == "string":  # the schema check proved it: no type tests
                w.emit(depth, f"scan_left -= len({var})")
                w.emit(depth, "if scan_left < 0: return None")
                w.emit(depth, f"{hits} = scan({var})")
            else:
                # A container holding free text is rare: the reference engine scans it; a number it refuses.
                w.emit(depth, f"{kind} = type({var})")
                w.emit(depth, f"if {kind} is not str and {var} is not None and {kind} is not bool: return None")
                w.emit(depth, f"{hits} = None")
                w.emit(depth, f"if {kind} is str:")
                w.emit(depth + 1, f"scan_left -= len({var})")
                w.emit(depth + 1, "if scan_left < 0: return None")
                w.emit(depth + 1, f"{hits} = scan({var})")
            if w.free_text_reject:
                w.emit(depth, f"if {hits}: return None")
                w.record(depth, "kept", path, in_array)
            else:
                # The reference engine records the path kept, then transformed when it redacts, and its report
                # takes transformed paths out of the kept ones: recording one or the other is the same report,
                # except under an array (kept in one element, redacted in another), where both are recorded.
                w.emit(depth, f"if {hits}:")
                w.record(depth + 1, "transformed", path, in_array)
                w.emit(depth + 1, f"{var} = redact({var}, {hits})")
                w.emit(depth, "else:")
                w.record(depth + 1, "kept", path, in_array)
                if in_array:
                    w.overlaps = True
            w.emit(depth, store(var))
            return
        w.record(depth, "kept", path, in_array)
        if known in ("object", "array"):
            w.emit(depth, f"verbatim_append({var})")
        elif known is None:
            w.emit(depth, f"{kind} = type({var})")
            w.emit(depth, f"if {kind} is dict or {kind} is list: verbatim_append({var})")
            w.emit(depth, f"elif {kind} is float and {var} - {var}: return None")  # NaN or infinity
        elif known not in _FINITE_TYPES:
            w.emit(depth, f"if type({var}) is float and {var} - {var}: return None")
        w.emit(depth, store(var))
        return
    if isinstance(action, Drop):
        w.record(depth, "dropped", path, in_array)
        return
    if action is None:  # pragma: no cover - a leaf always has an action
        raise _TooComplex
    if in_array:  # kept in an element holding null, transformed in another
        w.overlaps = True
    convert = w.constant(w.bind(action), "f")
    result = w.name("r")
    inner = depth
    if known != "string":  # a string (proved by the schema check) is neither null nor to be converted
        w.emit(depth, f"if {var} is None:")
        w.record(depth + 1, "kept", path, in_array)
        w.emit(depth + 1, store("None"))
        w.emit(depth, "else:")
        inner = depth + 1
    if isinstance(action, Pseudonymise | Reidentify):
        if known != "string":
            w.emit(inner, f"if type({var}) is int: {var} = str({var})")
            w.emit(inner, f"elif type({var}) is not str: return None")
        w.emit(inner, f"try: {result} = {convert}({var})")
        w.emit(inner, "except InvalidIdentifier: return None")
        w.record(inner, "transformed", path, in_array)
        id_type = repr(action.id_type)
        if not in_array and action.id_type in w.single_id_types:
            w.emit(inner, f"counts[{id_type}] = 1")
        else:
            w.emit(inner, f"counts[{id_type}] = counts.get({id_type}, 0) + 1")
    else:
        w.emit(inner, f"try: {result} = {convert}({var})")
        w.emit(inner, "except NotGeneralisable: return None")
        w.record(inner, "transformed", path, in_array)
        kind = w.name("t")
        w.emit(inner, f"{kind} = type({result})")
        w.emit(inner, f"if {kind} is dict or {kind} is list: verbatim_append({result})")
        w.emit(inner, f"elif {kind} is float and {result} - {result}: return None")  # NaN or infinity
    w.emit(inner, store(result))


def _emit_walk(w: _Writer, depth: int, var: str, schema: Any, node: PolicyNode,
               store: Callable[[str], str], in_array: bool) -> None:
    """Code checking `var` against `schema` (None: no schema) and applying `node` to it; `store` turns the
    result's expression into the statement placing it in the output."""
    if node.action is not None:
        known = _emit_check(w, depth, var, schema)
        _emit_leaf(w, depth, var, node, store, in_array, known)
        return
    if node.items is not None:
        rest = _emit_container_schema(w, depth, var, schema, "array")
        if rest is None:
            w.emit(depth, f"if type({var}) is not list: return None")
        out, item = w.name("a"), w.name("e")
        element = node.items
        element_schema = None if rest is None else rest.get("items")
        plan = None if w.reject_unknown else _like_elements_plan(element, element_schema)
        w.emit(depth, f"{out} = []")
        if plan is not None:
            shape, others = w.name("shape"), w.name("others")
            w.emit(depth, f"{shape} = 0")
        w.emit(depth, f"for {item} in {var}:")
        if plan is not None:
            _emit_like_element(w, depth + 1, item, out, shape, others, plan)
        _emit_walk(w, depth + 1, item, element_schema, element, lambda expr: f"{out}.append({expr})", True)
        w.emit(depth + 1, "pass")
        if plan is not None:
            # The first element the general code above served whole, holding every declared name, becomes
            # the shape: it made every record an element with its key set makes (records are per call).
            # The shape's other names: with every declared name present, the symmetric difference is the
            # element's undeclared names (one C call on the element, where `keys() - names` takes a view and
            # a set copy); `len` stands for "no other name" (itemgetter() takes at least one).
            names = w.constant(frozenset(plan.checks), "names")
            rest, getter = w.name("rest"), w.constant(operator.itemgetter, "itemgetter")
            w.emit(depth + 1, f"if not {shape} and {item}.keys() >= {names}:")
            w.emit(depth + 2, f"{rest} = {names}.symmetric_difference({item})")
            w.emit(depth + 2, f"{shape} = len({item}); {others} = {getter}(*{rest}) if {rest} else len")
        w.emit(depth, store(out))
        return
    rest = _emit_container_schema(w, depth, var, schema, "object")
    if rest is None:
        w.emit(depth, f"if type({var}) is not dict: return None")
    properties: Mapping[str, Any] = {} if rest is None else rest.get("properties") or {}
    extra = True if rest is None else rest.get("additionalProperties", True)
    out, key, item = w.name("o"), w.name("k"), w.name("v")
    prefix = f"{node.path}." if node.path else ""
    w.emit(depth, f"{out} = {{}}")
    w.emit(depth, f"for {key}, {item} in {var}.items():")
    keyword = "if"
    for name in dict.fromkeys([*node.fields, *properties]):
        w.emit(depth + 1, f"{keyword} {key} == {name!r}:")
        keyword = "elif"
        child = node.fields.get(name)
        # A declared name the schema does not list is one of its additional properties.
        sub = properties.get(name, extra)
        if child is None:
            _emit_check(w, depth + 2, item, sub)
            _emit_unknown(w, depth + 2, repr(prefix + name), in_array)
        else:
            _emit_walk(w, depth + 2, item, sub, child, lambda expr: f"{out}[{key}] = {expr}", in_array)
        w.emit(depth + 2, "pass")
    w.emit(depth + 1, "else:" if keyword == "elif" else "if True:")
    if extra is not True:
        _emit_check(w, depth + 2, item, extra)
    if w.reject_unknown:
        w.emit(depth + 2, "return None")
    else:
        # A name the profile writes is reported by name, any other (the caller's) under the marker: one
        # lookup in a table of profile names only, so no caller-chosen name is kept or written.
        paths, marker = undeclared_paths(prefix, w.names)
        lookup = w.constant(paths.get, "unknown_get")
        w.emit(depth + 2, f"dropped[{lookup}({key}, {marker!r})] = None")
    # An object left empty says nothing the partner needs; the reference engine omits it too.
    w.emit(depth, f"if {out}: {store(out)}" if node.path else store(out))


@dataclass(frozen=True, slots=True)
class _LikeElements:
    """An array element the generated code can serve by shape: every declared name (policy or schema)
    has a scalar schema, each policy action is a plain keep or a drop, undeclared keys are dropped."""

    checks: dict[str, Any]  # declared name -> its schema
    kept: frozenset[str]


def _like_elements_plan(element: PolicyNode, schema: Any) -> _LikeElements | None:
    if element.action is not None or element.items is not None or _native_type(schema) != "object":
        return None
    properties: Mapping[str, Any] = schema.get("properties") or {}
    if schema.get("additionalProperties", True) is not True:
        return None
    checks: dict[str, Any] = {}
    kept: set[str] = set()
    for name in dict.fromkeys([*element.fields, *properties]):
        child = element.fields.get(name)
        sub = properties.get(name)
        if _native_type(sub) not in ("string", "number", "integer", "boolean", "null"):
            return None
        if child is not None:
            action = child.action
            if isinstance(action, Keep) and not action.free_text:
                kept.add(name)
            elif not isinstance(action, Drop):
                return None
        checks[name] = sub
    return _LikeElements(checks, frozenset(kept)) if kept else None


def _emit_like_element(w: _Writer, depth: int, item: str, out: str, shape: str, others: str,
                       plan: _LikeElements) -> None:
    """An element with the key set of the array's learned shape (as many keys, every declared name and
    every other name of the shape present): the schema checks of its declared names on values fetched
    in one call, then the kept values as a new object (declared order; the canonical form sorts keys).
    No records: the shape's element made them all already, and a repeated record changes nothing."""
    names = list(plan.checks)
    values = [w.name("q") for _ in names]
    getter = w.constant(operator.itemgetter(*names), "getter")
    w.emit(depth, f"if {shape} and type({item}) is dict and len({item}) == {shape}:")
    w.emit(depth + 1, "try:")
    w.emit(depth + 2, f"{', '.join(values)}{',' if len(values) == 1 else ''} = "
                      f"{getter}({item}){',' if len(values) == 1 else ''}")
    w.emit(depth + 2, f"{others}({item})")
    w.emit(depth + 1, "except KeyError:")
    w.emit(depth + 2, "pass")
    w.emit(depth + 1, "else:")
    for value, name in zip(values, names, strict=True):
        _emit_check(w, depth + 2, value, plan.checks[name])
        if name in plan.kept and _native_type(plan.checks[name]) not in _FINITE_TYPES:
            w.emit(depth + 2, f"if type({value}) is float and {value} - {value}: return None")  # NaN or infinity
    kept = ", ".join(f"{name!r}: {value}" for value, name in zip(values, names, strict=True) if name in plan.kept)
    w.emit(depth + 2, f"{out}.append({{{kept}}})")
    w.emit(depth + 2, "continue")


# An undeclared key's name is chosen by the caller and may itself be personal data (a contact book keyed by
# phone number, `{"kim@example.com": 1}`), and the report ends up in the append-only ledger: it is never
# written out. Its drop is reported under the object's path with this marker (`recipient.*`, `*` at the
# root); only a name the profile itself writes (an allowlist segment or a schema property) is reported by
# name (docs/ledger.md).
UNDECLARED = "*"


def profile_names(root: PolicyNode, schema: Any) -> frozenset[str]:
    """Every object key name the route's profile writes: the segments of its declared paths and the
    property names (and required names) of its request schema. Only these may appear in a report or a
    violation path by name; any other key is the caller's and is rendered as `UNDECLARED`."""
    names: set[str] = set()
    nodes = [root]
    while nodes:
        node = nodes.pop()
        names.update(node.fields)
        nodes.extend(node.fields.values())
        if node.items is not None:
            nodes.append(node.items)
    return frozenset(names | schema_names(schema))


def schema_names(schema: Any) -> set[str]:
    """The key names a JSON Schema declares: the keys of every `properties` and the `required` entries."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                names.update(name for name in properties if isinstance(name, str))
            required = node.get("required")
            if isinstance(required, list):
                names.update(name for name in required if isinstance(name, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def undeclared_paths(prefix: str, names: frozenset[str]) -> tuple[dict[str, str], str]:
    """The report paths of keys under the object whose children's paths start with `prefix`: a name the
    profile writes by name, any other under the object's marker (returned second)."""
    return {name: prefix + name for name in names}, prefix + UNDECLARED


def _emit_unknown(w: _Writer, depth: int, path_expr: str, once: bool) -> None:
    if w.reject_unknown:
        w.emit(depth, "return None")
    else:
        w.record(depth, "dropped", path_expr, once)


# The builtins the generated source calls; they are bound as closure variables like the constants.
_BUILTINS: dict[str, Any] = {"type": type, "len": len, "str": str, "int": int, "float": float, "dict": dict,
                             "list": list, "bool": bool}


def _compile_source(w: _Writer, name: str) -> Callable[[Any], Any]:
    """Compile the function `name` inside a maker whose parameters are the constants and builtins it reads:
    the generated code then loads them as closure cells (LOAD_DEREF) rather than through the globals and
    builtins dictionaries (LOAD_GLOBAL's version checks), on every value it visits."""
    bound = {**_BUILTINS, **w.namespace}
    maker = f"make_{name}"
    source = "\n".join([f"def {maker}({', '.join(bound)}):", *("    " + line for line in w.lines),
                        f"    return {name}"])
    code = compile(source, f"<route policy {name}>", "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - the source holds only profile-defined names, as repr() literals
    function: Callable[[Any], Any] = namespace[maker](**bound)
    return function


def _counted_id_types(node: PolicyNode) -> list[str]:
    """The identifier type of every pseudonymise or reidentify leaf under `node` (one entry per leaf)."""
    action = node.action
    found = [action.id_type] if isinstance(action, Pseudonymise | Reidentify) else []
    for child in node.fields.values():
        found += _counted_id_types(child)
    if node.items is not None:
        found += _counted_id_types(node.items)
    return found


def _walk_function(root: PolicyNode, schema: Any, name: str, reject_unknown: bool, free_text_reject: bool,
                   bind: Callable[[FieldAction], Callable[[Any], Any]],
                   names: frozenset[str], free_text_max_chars: int) -> tuple[GeneratedWalk, str, bool]:
    w = _Writer(reject_unknown, free_text_reject, bind, names, free_text_max_chars)
    id_types = _counted_id_types(root)
    w.single_id_types = frozenset(id_type for id_type in id_types if id_types.count(id_type) == 1)
    w.emit(0, f"def {name}(body):")
    # Report paths are dict keys (first place kept, as the reference engine's run records them).
    w.emit(1, "kept = {}; transformed = {}; dropped = {}; counts = {}; verbatim = []")
    w.emit(1, "verbatim_append = verbatim.append")
    w.emit(1, "result = MISS; scan_left = SCAN_MAX")
    flags_at = len(w.lines)
    _emit_walk(w, 1, "body", schema, root, lambda expr: f"result = {expr}", False)
    w.emit(1, "return (result, kept, transformed, dropped, counts, verbatim, scan_left)")
    if w.once_flags:
        w.lines.insert(flags_at, "    " + " = ".join(w.once_flags) + " = True")
    return _compile_source(w, name), "\n".join(w.lines), w.overlaps


def _check_function(schema: Any, bind: Callable[[FieldAction], Callable[[Any], Any]]) -> tuple[GeneratedCheck, str]:
    w = _Writer(False, False, bind)
    w.emit(0, "def check(body):")
    _emit_check(w, 1, "body", schema)
    w.emit(1, "return True")
    return _compile_source(w, "check"), "\n".join(w.lines)


# A route the generator cannot write out (too deep, too big, an odd schema) keeps the reference engine.
_GIVE_UP = (_TooComplex, SyntaxError, RecursionError, MemoryError)


def generate_route(root: PolicyNode, schema: Mapping[str, Any] | None, *, reject_unknown: bool,
                   free_text_reject: bool, bind: Callable[[FieldAction], Callable[[Any], Any]],
                   schema_compiles: bool, names: frozenset[str] | None = None,
                   free_text_max_chars: int = FREE_TEXT_MAX_CHARS) -> GeneratedRoute:
    """The generated functions for one route's request body. `bind` gives the value function of a
    pseudonymise, reidentify, generalise or mask action; `schema_compiles` says whether fastschema
    serves the schema (otherwise jsonschema does every check and nothing schema-related is generated);
    `names` the profile's key names (default: `profile_names(root, schema)`), which the reference engine
    must be given too, so that both report an undeclared key alike."""
    if names is None:
        names = profile_names(root, schema)
    check: GeneratedCheck | None = None
    walk: GeneratedWalk | None = None
    fused: GeneratedWalk | None = None
    sources: list[str] = []
    overlaps = True
    try:
        walk, source, overlaps = _walk_function(root, None, "walk", reject_unknown, free_text_reject, bind,
                                                  names, free_text_max_chars)
        sources.append(source)
    except _GIVE_UP:
        walk = None
    if schema is None:
        return GeneratedRoute(None, walk, walk, tuple(sources), overlaps)
    if schema_compiles:
        try:
            check, source = _check_function(schema, bind)
            sources.append(source)
            if walk is not None:
                fused, source, overlaps = _walk_function(root, schema, "fused", reject_unknown, free_text_reject,
                                                         bind, names, free_text_max_chars)
                sources.append(source)
        except _GIVE_UP:
            fused = None
    return GeneratedRoute(check, walk, fused, tuple(sources), overlaps if fused is not None else True)


def value_function(action: FieldAction, partner_id: str, bind_forward: Callable[[str, str, str], Callable[[str], str]],
                   bind_reverse: Callable[[str, str], Callable[[str], str]]) -> Callable[[Any], Any]:
    """The plain value function behind an action that transforms (what the generated code calls)."""
    if isinstance(action, Pseudonymise):
        return bind_forward(partner_id, action.id_type, action.mode)
    if isinstance(action, Reidentify):
        return bind_reverse(partner_id, action.id_type)
    if isinstance(action, Generalise):
        if action.location_decimals is not None:
            decimals = action.location_decimals
            return lambda value: generalise_location(value, decimals)
        if action.date_precision is not None:
            return date_generaliser(action.date_precision)
        band = action.age_band or 1
        return lambda value: generalise_age(value, band)
    if isinstance(action, Keep | Drop):  # pragma: no cover - keep and drop are written out inline
        raise _TooComplex
    keep_last, char = action.keep_last, action.char
    return lambda value: mask_value(value, keep_last, char)
