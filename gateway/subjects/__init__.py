"""Data subjects' rights at the moment of disclosure: the subject registry (consent, holds, minors), the
transfer rules, the pure per-request checks, the service that records registry changes in the ledger,
and the access report.

See docs/subject-rights.md for what each promise of the source policies becomes here.
"""

from gateway.subjects.checks import SubjectRouteRequirements, check_legal_reference, check_subject
from gateway.subjects.model import EventKind, RegistryEvent, SubjectRecord, SubjectStatus
from gateway.subjects.registry import SubjectRegistry, open_registry
from gateway.subjects.transfers import TransferDecision, TransferRules

__all__ = [
    "EventKind",
    "RegistryEvent",
    "SubjectRecord",
    "SubjectRegistry",
    "SubjectRouteRequirements",
    "SubjectStatus",
    "TransferDecision",
    "TransferRules",
    "check_legal_reference",
    "check_subject",
    "open_registry",
]
