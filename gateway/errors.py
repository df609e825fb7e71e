"""Problem types: every refusal the gateway can give, with the HTTP status it maps to.

Each exception carries its RFC 9457 problem type and status, so the code that refuses decides what the
caller sees, and the server only renders. `detail` and `violations` must never hold a personal value:
name paths and reasons, not the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

PROBLEM_BASE = "urn:partner-data-gateway:problem:"


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason a request was refused: a field path (never its value) and why."""

    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class GatewayError(Exception):
    """Base of every refusal. Subclasses fix `status`, `slug` and `title`."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        violations: Sequence[Violation] = (),
        *,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.violations = tuple(violations)
        # `reason` is the short machine label used for metrics and refusal records (a bounded set).
        self.reason = reason or self.slug

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.violations:
            body["violations"] = [v.as_dict() for v in self.violations]
        if instance:
            body["instance"] = instance
        return body


class MalformedRequest(GatewayError):
    status = 400
    slug = "malformed-request"
    title = "Malformed request"


class Unauthenticated(GatewayError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication failed"


class Forbidden(GatewayError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class ScopeMissing(Forbidden):
    slug = "scope-missing"
    title = "Token lacks the scope for this disclosure"


class ConsentRequired(Forbidden):
    slug = "consent-required"
    title = "The data subject has not consented to this purpose"


class SubjectOnHold(Forbidden):
    slug = "subject-on-hold"
    title = "Processing of this data subject is restricted"


class MinorWithoutGuardianConsent(Forbidden):
    slug = "minor-guardian-consent-required"
    title = "The data subject is a minor without guardian consent"


class LegalReferenceRequired(Forbidden):
    slug = "legal-reference-required"
    title = "A legal reference is required for this disclosure"


class NotFound(GatewayError):
    status = 404
    slug = "not-found"
    title = "No such partner or route"


class PayloadTooLarge(GatewayError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class UnsupportedMediaType(GatewayError):
    status = 415
    slug = "unsupported-media-type"
    title = "Media type not allowed for this route"


class Unprocessable(GatewayError):
    status = 422
    slug = "unprocessable"
    title = "Request violates the route's policy"


class SchemaViolation(Unprocessable):
    slug = "schema-violation"
    title = "Request does not match the route's schema"


class InvalidIdentifier(Unprocessable):
    slug = "invalid-identifier"
    title = "An identifier is not valid for its type"


class FieldNotAllowed(Unprocessable):
    slug = "field-not-allowed"
    title = "A field outside the route's allowlist was sent"


class IdentifierInFreeText(Unprocessable):
    slug = "identifier-in-free-text"
    title = "A free-text field contains an identifier"


class FreeTextTooLong(Unprocessable):
    slug = "free-text-too-long"
    title = "More free text than the route scans"


class RateLimited(GatewayError):
    status = 429
    slug = "rate-limited"
    title = "Partner rate or concurrency limit reached"


class TransferNotAllowed(GatewayError):
    status = 451
    slug = "transfer-not-allowed"
    title = "Cross-border transfer not allowed for this data subject"


class UpstreamError(GatewayError):
    status = 502
    slug = "upstream-error"
    title = "The partner failed"


class UpstreamReidentifyRefused(UpstreamError):
    """The partner's answer holds, in a `reidentify` field, a pseudonym that this request did not send it
    (another subject's token, one never issued, or one from an earlier exchange). It is never decrypted:
    the answer fails as a whole, naming the declared field paths only."""

    slug = "upstream-reidentify"
    title = "The partner answered with a pseudonym this request did not send"


class LedgerUnavailable(GatewayError):
    status = 503
    slug = "ledger-unavailable"
    title = "Disclosure ledger not durable; nothing was sent"


class StoreBroken(LedgerUnavailable):
    """A write refused because an earlier write of the same store failed or timed out: the records were
    chained onto one that may not exist, so nothing is written until the store has re-read the durable
    head (the chain never forks or skips). Maps to 503 like any other ledger failure; nothing was sent."""

    slug = "ledger-store-broken"
    title = "Disclosure ledger refuses writes until it has re-read its head; nothing was sent"


class UpstreamTimeout(GatewayError):
    status = 504
    slug = "upstream-timeout"
    title = "The partner did not answer in time"


class ConfigError(Exception):
    """A configuration, profile or key problem found at load time; the message names where and why."""
