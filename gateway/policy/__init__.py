"""Compiled field policies: keep, drop, pseudonymise, generalise, mask and reidentify over bodies, query
and path parameters and headers, deny by default, plus the free-text scanner and the route's JSON
Schema. Pure code: no I/O, no logging, errors name paths and never values."""

from gateway.policy.actions import (
    ActionError,
    Drop,
    FieldAction,
    Generalise,
    Keep,
    Mask,
    Pseudonymise,
    Reidentify,
    parse_action,
)
from gateway.policy.engine import (
    NO_PSEUDONYMS_ISSUED,
    CompiledRoutePolicy,
    FilteredResponse,
    IssuedPseudonyms,
    MinimisationReport,
    MinimisedRequest,
    PolicyCompileError,
    PseudonymBinder,
    RoutePolicySpec,
    ValidatedBody,
    parse_field_path,
)
from gateway.policy.schema import CompiledSchema, check_schema

__all__ = [
    "NO_PSEUDONYMS_ISSUED",
    "ActionError",
    "CompiledRoutePolicy",
    "CompiledSchema",
    "Drop",
    "FieldAction",
    "FilteredResponse",
    "Generalise",
    "IssuedPseudonyms",
    "Keep",
    "Mask",
    "MinimisationReport",
    "MinimisedRequest",
    "PolicyCompileError",
    "PseudonymBinder",
    "Pseudonymise",
    "Reidentify",
    "RoutePolicySpec",
    "ValidatedBody",
    "check_schema",
    "parse_action",
    "parse_field_path",
]
