"""Transfer rules: which partner jurisdictions may receive the data of a subject resident in a country,
and on which basis.

The rules are configuration (`GATEWAY_TRANSFER_RULES`, default the shipped `transfer_rules.yaml`), loaded
once into frozen values so that `TransferRules.decide` is a dictionary look-up on the request path. The
decision fails closed: a missing or malformed residency, a residency no rule covers, or a jurisdiction no
rule lists is refused (451), and the refusal says which of these it was with a bounded label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from gateway.errors import ConfigError

SHIPPED_RULES = "transfer_rules.yaml"
WILDCARD_RESIDENCY = "*"

# ISO 3166-1 alpha-2 officially assigned codes: a residency or jurisdiction outside this set is refused.
_ISO_3166_ALPHA2_TEXT = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW
    BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ
    FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ
    IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH
    MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL
    PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD
    TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"""
ISO_3166_ALPHA2 = frozenset(_ISO_3166_ALPHA2_TEXT.split())


def normalise_country(value: object) -> str | None:
    """An ISO 3166-1 alpha-2 code in upper case, or None when `value` is not one."""
    if not isinstance(value, str):
        return None
    code = value.strip().upper()
    return code if code in ISO_3166_ALPHA2 else None


@dataclass(frozen=True, slots=True)
class TransferDecision:
    """Whether a subject's data may go to a partner. `basis` is recorded in the ledger for an allowed
    cross-border transfer; `reason` is the refusal label (None when allowed)."""

    allowed: bool
    cross_border: bool
    basis: str | None
    reason: str | None = None


_RESIDENCY_UNKNOWN = TransferDecision(False, False, None, "residency_unknown")
_MAX_DECISIONS = 4096


@dataclass(frozen=True, slots=True)
class PartnerException:
    jurisdictions: frozenset[str]
    basis: str


@dataclass(frozen=True, slots=True)
class ResidencyRule:
    residency: str
    source: str
    # jurisdiction -> basis (the first `allow` entry listing a jurisdiction wins)
    allowed: Mapping[str, str]
    partners: Mapping[str, PartnerException]


@dataclass(frozen=True)
class TransferRules:
    rules: Mapping[str, ResidencyRule]
    source_file: str = field(default="<memory>")
    _decisions: dict[tuple[str, str, str], TransferDecision] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, path: Path | str | None = None) -> TransferRules:
        """Load rules from `path`, or the shipped rules when None; raise ConfigError naming the file, the
        line when known, and the reason."""
        if path is None:
            ref = resources.files("gateway.subjects").joinpath(SHIPPED_RULES)
            text = ref.read_text(encoding="utf-8")
            name = f"gateway/subjects/{SHIPPED_RULES}"
        else:
            name = str(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"transfer rules {name}: cannot read: {exc.strerror or exc}") from exc
            except UnicodeDecodeError as exc:
                raise ConfigError(f"transfer rules {name}: not UTF-8 text") from exc
        return cls.parse(text, name)

    @classmethod
    def parse(cls, text: str, source_file: str = "<memory>") -> TransferRules:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"transfer rules {source_file}: not valid YAML: {exc}") from exc
        return cls(rules=_Parser(source_file).document(root), source_file=source_file)

    def decide(self, residency: str | None, partner_id: str, partner_jurisdiction: str) -> TransferDecision:
        """May data of a subject resident in `residency` go to `partner_id`, established in
        `partner_jurisdiction`? Pure and fast: runs on every request of a route that declares residency."""
        home = normalise_country(residency)
        if home is None:
            return _RESIDENCY_UNKNOWN
        # The rules never change (a reload builds new ones), so a decision is a function of its key; the
        # key is bounded (a listed country code, a profile's id and its jurisdiction).
        key = (home, partner_id, partner_jurisdiction)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(home, partner_id, partner_jurisdiction)
            if len(self._decisions) >= _MAX_DECISIONS:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(self, home: str, partner_id: str, partner_jurisdiction: str) -> TransferDecision:
        abroad = normalise_country(partner_jurisdiction)
        if abroad is None:
            return TransferDecision(False, True, None, "partner_jurisdiction_unknown")
        rule = self.rules.get(home) or self.rules.get(WILDCARD_RESIDENCY)
        if rule is None:
            return TransferDecision(False, home != abroad, None, "no_rule_for_residency")
        if home == abroad:
            return TransferDecision(True, False, None)
        exception = rule.partners.get(partner_id)
        if exception is not None and abroad in exception.jurisdictions:
            return TransferDecision(True, True, exception.basis)
        basis = rule.allowed.get(abroad)
        if basis is not None:
            return TransferDecision(True, True, basis)
        return TransferDecision(False, True, None, "jurisdiction_not_allowed")


class _Parser:
    """Turns the composed YAML node tree into rules, naming file and line for every problem."""

    def __init__(self, source_file: str) -> None:
        self.source_file = source_file

    def fail(self, node: yaml.Node | None, where: str, reason: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ConfigError(f"transfer rules {self.source_file}{line}: {where}: {reason}")

    def mapping(self, node: yaml.Node | None, where: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, where, "expected a mapping")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, where)
            if key in out:
                raise self.fail(key_node, where, f"duplicate key {key!r}")
            out[key] = value_node
        return out

    def scalar(self, node: yaml.Node, where: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            raise self.fail(node, where, "expected a non-empty text value")
        return str(node.value).strip()

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, where, "expected a list")
        return list(node.value)

    def only_keys(self, items: Mapping[str, yaml.Node], node: yaml.Node | None, where: str, allowed: set[str]) -> None:
        unknown = sorted(set(items) - allowed)
        if unknown:
            raise self.fail(node, where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")

    def countries(self, node: yaml.Node, where: str) -> frozenset[str]:
        codes: set[str] = set()
        for item in self.sequence(node, where):
            text = self.scalar(item, where)
            code = normalise_country(text)
            if code is None or code != text:
                raise self.fail(item, where, f"{text!r} is not an ISO 3166-1 alpha-2 code in upper case")
            codes.add(code)
        return frozenset(codes)

    def document(self, root: yaml.Node | None) -> dict[str, ResidencyRule]:
        top = self.mapping(root, "document")
        self.only_keys(top, root, "document", {"version", "residencies"})
        version = top.get("version")
        if version is None or self.scalar(version, "version") != "1":
            raise self.fail(version or root, "version", "expected version: 1")
        if "residencies" not in top:
            raise self.fail(root, "document", "missing key residencies")
        rules: dict[str, ResidencyRule] = {}
        for residency, node in self.mapping(top["residencies"], "residencies").items():
            where = f"residencies.{residency}"
            if residency != WILDCARD_RESIDENCY and normalise_country(residency) != residency:
                raise self.fail(node, where, "a residency is an ISO 3166-1 alpha-2 code in upper case, or \"*\"")
            rules[residency] = self.residency(residency, node, where)
        return rules

    def residency(self, residency: str, node: yaml.Node, where: str) -> ResidencyRule:
        items = self.mapping(node, where)
        self.only_keys(items, node, where, {"source", "allow", "partners"})
        if "source" not in items:
            raise self.fail(node, where, "missing key source (the policy section this rule reflects)")
        allowed: dict[str, str] = {}
        for index, entry in enumerate(self.sequence(items["allow"], f"{where}.allow") if "allow" in items else []):
            entry_where = f"{where}.allow[{index}]"
            fields = self.mapping(entry, entry_where)
            self.only_keys(fields, entry, entry_where, {"jurisdictions", "basis"})
            jurisdictions, basis = self.jurisdictions_and_basis(fields, entry, entry_where)
            for code in jurisdictions:
                allowed.setdefault(code, basis)
        partners: dict[str, PartnerException] = {}
        for partner_id, entry in (self.mapping(items["partners"], f"{where}.partners") if "partners" in items
                                  else {}).items():
            entry_where = f"{where}.partners.{partner_id}"
            fields = self.mapping(entry, entry_where)
            self.only_keys(fields, entry, entry_where, {"jurisdictions", "basis"})
            jurisdictions, basis = self.jurisdictions_and_basis(fields, entry, entry_where)
            partners[partner_id] = PartnerException(jurisdictions, basis)
        return ResidencyRule(residency, self.scalar(items["source"], f"{where}.source"), allowed, partners)

    def jurisdictions_and_basis(
        self, fields: Mapping[str, yaml.Node], node: yaml.Node, where: str
    ) -> tuple[frozenset[str], str]:
        for required in ("jurisdictions", "basis"):
            if required not in fields:
                raise self.fail(node, where, f"missing key {required}")
        jurisdictions = self.countries(fields["jurisdictions"], f"{where}.jurisdictions")
        if not jurisdictions:
            raise self.fail(fields["jurisdictions"], f"{where}.jurisdictions", "list at least one jurisdiction")
        return jurisdictions, self.scalar(fields["basis"], f"{where}.basis")


def shipped_rules() -> TransferRules:
    return TransferRules.load(None)
