"""The partner profile model: frozen values built once by the loader and read by every request.

Nothing here changes after load; a reload builds a new `ProfileSet`. Secrets (upstream credentials)
live only in `UpstreamAuth.value`, which its repr hides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import NotFound
from gateway.policy import CompiledRoutePolicy
from gateway.profiles.matching import RouteTable, split_path

SourceLocation = Literal["body", "query", "path", "header", "value"]


@dataclass(frozen=True, slots=True)
class UpstreamAuth:
    """The credential injected into every call to the partner: header name and full header value."""

    kind: Literal["bearer", "header", "basic"]
    header: str
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"UpstreamAuth(kind={self.kind!r}, header={self.header!r}, value='***')"


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str
    auth: UpstreamAuth | None
    connect_timeout: float = 2.0
    total_timeout: float = 10.0
    retries: int = 0
    # False: one connection per call (`Connection: close`), for a partner whose late or repeated answer on
    # a reused connection could reach the next caller (HTTP/1.1 cannot tell a late answer from the next).
    keep_alive: bool = True


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 1_048_576
    rate_per_second: float | None = None
    burst: int | None = None
    max_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class ValueSource:
    """Where a value (the data subject's id, their residency) is read: a body path, a query parameter,
    a path parameter, a header, or a fixed `value` (location "value")."""

    location: SourceLocation
    path: str = ""
    value: str | None = None


@dataclass(frozen=True, slots=True)
class ExampleRequest:
    body: Any | None = None
    query: tuple[tuple[str, str], ...] = ()
    path: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExpectedError:
    status: int
    paths: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class RouteExample:
    """A request and either the exact minimised output (`expect`, raw from the profile, may hold
    `$pseudonym` placeholders) or the refusal it must get (`expect_error`)."""

    name: str
    request: ExampleRequest
    expect: Mapping[str, Any] | None
    expect_error: ExpectedError | None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    method: str
    path_template: str
    purposes: tuple[str, ...]
    legal_basis: str
    subject: ValueSource | None
    residency: ValueSource | None
    consent_purpose: str | None
    essential: bool
    allowed_during_hold: bool
    idempotent: bool
    legal_reference_required: bool
    media_types: tuple[str, ...]
    policy: CompiledRoutePolicy
    examples: tuple[RouteExample, ...] = ()
    description: str = ""

    @property
    def path_params(self) -> tuple[str, ...]:
        return tuple(part[1:-1] for part in self.path_template.split("/") if part.startswith("{"))

    @staticmethod
    def read(source: ValueSource, parsed_body: Any, query: Sequence[tuple[str, str]],
             path_params: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The value `source` points at in a request (before minimisation), as text; None when absent
        or not a string or integer."""
        if source.location == "value":
            return source.value
        found: Any = None
        if source.location == "body":
            found = parsed_body
            for name in source.path.split("."):
                if not isinstance(found, dict):
                    return None
                found = found.get(name)
        elif source.location == "query":
            found = next((value for name, value in query if name == source.path), None)
        elif source.location == "path":
            found = path_params.get(source.path)
        elif source.location == "header":
            wanted = source.path.lower()
            found = next((value for name, value in headers.items() if name.lower() == wanted), None)
        if type(found) is int:
            return str(found)
        return found if type(found) is str and found else None


@dataclass(frozen=True, slots=True)
class PartnerProfile:
    id: str
    name: str
    category: str
    jurisdiction: str
    description: str
    upstream: Upstream
    limits: Limits
    routes: tuple[Route, ...]
    consent_purposes: tuple[str, ...]
    source_file: str
    source: Mapping[str, str] = field(default_factory=dict)

    def route(self, route_id: str) -> Route:
        for route in self.routes:
            if route.id == route_id:
                return route
        raise KeyError(route_id)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    profile: PartnerProfile
    route: Route
    path_params: dict[str, str]


class ProfileSet:
    """Every loaded profile and its compiled route table; immutable (a reload builds a new set)."""

    __slots__ = ("_tables", "profiles")

    def __init__(self, profiles: Mapping[str, PartnerProfile]) -> None:
        self.profiles: Mapping[str, PartnerProfile] = dict(profiles)
        self._tables = {pid: RouteTable(profile.routes) for pid, profile in self.profiles.items()}

    def match(self, partner_id: str, method: str, path: str) -> RouteMatch:
        """The route of `partner_id` serving `method` on `path` (raw, still percent-encoded)."""
        segments = split_path(path)
        table = self._tables.get(partner_id)
        if table is None:
            raise NotFound("no such partner", reason="unknown-partner")
        found = table.match(method.upper(), segments)
        if found is None:
            raise NotFound("no route of this partner matches the method and path", reason="no-route")
        return RouteMatch(self.profiles[partner_id], found[0], found[1])

    def __len__(self) -> int:
        return len(self.profiles)
