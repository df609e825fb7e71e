"""Partner profiles: the frozen model, the YAML loader (every problem as file:line: reason), route
matching, and the examples run as policy tests. The rendering of the sharing table lives in
gateway/profiles/render.py."""

from gateway.profiles.examples import EXAMPLE_MASTER_KEY, ExampleResult, example_pseudonymiser, run_profile_examples
from gateway.profiles.loader import ProfileLoadError, ProfileProblem, load_profile_file, load_profiles
from gateway.profiles.model import (
    ExampleRequest,
    ExpectedError,
    Limits,
    PartnerProfile,
    ProfileSet,
    Route,
    RouteExample,
    RouteMatch,
    Upstream,
    UpstreamAuth,
    ValueSource,
)

__all__ = [
    "EXAMPLE_MASTER_KEY",
    "ExampleRequest",
    "ExampleResult",
    "ExpectedError",
    "Limits",
    "PartnerProfile",
    "ProfileLoadError",
    "ProfileProblem",
    "ProfileSet",
    "Route",
    "RouteExample",
    "RouteMatch",
    "Upstream",
    "UpstreamAuth",
    "ValueSource",
    "example_pseudonymiser",
    "load_profile_file",
    "load_profiles",
    "run_profile_examples",
]
