"""The long-lived components one gateway process runs with, built once at startup.

Stages take what they need from `GatewayServices` in `configure()`. The profile set is not in here: it
is the one thing that changes at run time (reload), and each reload builds a fresh pipeline from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import CallerAuthenticator
from gateway.config import Settings
from gateway.forward import UpstreamPool
from gateway.keys import GatewayKeys
from gateway.ledger import Ledger
from gateway.metrics import GatewayMetrics
from gateway.pseudonyms import Pseudonymiser
from gateway.subjects import SubjectRegistry, TransferRules


@dataclass(frozen=True)
class GatewayServices:
    settings: Settings
    keys: GatewayKeys
    metrics: GatewayMetrics
    authenticator: CallerAuthenticator
    ledger: Ledger
    upstream: UpstreamPool
    subjects: SubjectRegistry
    transfer_rules: TransferRules
    pseudonymiser: Pseudonymiser
    chain_id: str
