"""The "third parties we share with" table of a privacy policy, generated from the loaded profiles.

This module owns the public description of what the gateway lets out: one row per route (partner,
category, jurisdiction, purpose, legal basis, consent) with every field the route sends, grouped by data
category and labelled with how it is protected (kept, pseudonymised one-way or reversibly, generalised,
masked). It reads the same compiled profiles the gateway enforces, so the published table cannot drift
from the behaviour. Output is Markdown or a standalone, fully escaped HTML page.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.policy.actions import Drop, FieldAction, Generalise, Keep, Mask, Pseudonymise, Reidentify
from gateway.profiles.model import PartnerProfile, ProfileSet, Route

FORMATS = ("md", "html")

# Where a request field travels; body paths are shown bare, the others with their location.
_LOCATIONS = ("body", "query", "path", "headers")

# Data categories for the published table. A privacy policy speaks in categories; the exact field names
# follow each. The category is decided, in order, by the pseudonym type; by an enclosing container that
# says what its fields are about (`events[].name` is usage, not a person's name); by the field's own name;
# by the object holding it (`sender.*` is contact details); and last by where it travels.
_CATEGORY_BY_ID_TYPE: Mapping[str, str] = {
    "imei": "Device identifiers",
    "imsi": "Device identifiers",
    "iccid": "Device identifiers",
    "mac": "Device identifiers",
    "android_id": "Device identifiers",
    "advertising_id": "Device identifiers",
    "phone": "Contact details",
    "email": "Contact details",
    "token": "Account identifiers",
}
_CONTAINERS: Mapping[str, str] = {
    "voice": "Voice",
    "location": "Location",
    "order": "Order and payment",
    "items": "Order and payment",
    "goods": "Shipment",
    "parcel": "Shipment",
    "shipment": "Shipment",
    "events": "Usage activity",
    "views": "Usage activity",
    "share": "Usage activity",
    "variables": "Message content",
    # The histories a law-enforcement answer lists are sent field by field (`purchase_history[].item`).
    "purchase_history": "Transaction history",
    "listing_history": "Transaction history",
    "fraud_complaints": "Complaints",
}
_NAMES: Mapping[str, str] = {
    **dict.fromkeys(("imei", "imsi", "iccid", "mac", "android_id", "advertising_id"), "Device identifiers"),
    **dict.fromkeys(("lat", "lon", "latitude", "longitude", "radius_m"), "Location"),
    **dict.fromkeys(("customs_clearance_number", "id_card_number", "passport_number"), "Identity documents"),
    **dict.fromkeys(("name", "phone", "email", "address", "street_address", "city", "postal_code", "country",
                     "company_name", "to", "line1", "line2", "shipping_address"), "Contact details"),
    **dict.fromkeys(("user_id", "user_id_history", "ip_addresses", "ip_address"), "Online identifiers"),
    **dict.fromkeys(("model", "os", "os_version", "operator", "screen", "app_version", "language"),
                    "Device information"),
    **dict.fromkeys(("order_id", "order_number", "order_ref", "amount", "currency", "cod_amount"),
                    "Order and payment"),
    **dict.fromkeys(("shipment_ref", "tracking_number", "delivery_note"), "Shipment"),
    **dict.fromkeys(("template", "message_ref", "buyer_message"), "Message content"),
    **dict.fromkeys(("purchase_history", "listing_history"), "Transaction history"),
    "fraud_complaints": "Complaints",
}
_HOLDERS: Mapping[str, str] = {
    **dict.fromkeys(("sender", "recipient", "receiver", "shipper", "buyer", "declarant", "importer"),
                    "Contact details"),
    "device": "Device information",
}
_UNCATEGORISED = "Other"
_BY_LOCATION: Mapping[str, str] = {"body": _UNCATEGORISED, **dict.fromkeys(("query", "path", "headers"),
                                                                          "Request references")}
_AGGREGATE = "Aggregate statistics (no personal data)"


@dataclass(frozen=True, slots=True)
class SharedField:
    """One field a route sends, named as the table shows it, with its category and protection."""

    name: str
    category: str
    protection: str


@dataclass(frozen=True, slots=True)
class SharingRow:
    """One route of one partner, as a row of the published table."""

    partner_id: str
    partner_name: str
    category: str
    jurisdiction: str
    route_id: str
    purposes: tuple[str, ...]
    legal_basis: str
    consent: str | None
    legal_reference_required: bool
    fields: tuple[SharedField, ...]
    source: str

    def fields_by_category(self) -> list[tuple[str, list[SharedField]]]:
        grouped: dict[str, list[SharedField]] = {}
        for field in self.fields:
            grouped.setdefault(field.category, []).append(field)
        return sorted(grouped.items())


def describe_protection(action: FieldAction) -> str:
    """How a field is protected, in the words of a privacy policy."""
    if isinstance(action, Keep):
        kept = "kept (free text scanned for identifiers)" if action.free_text else "kept"
        # An open subtree passes fields nobody declared: the published table must not suggest a field list.
        return f"{kept}, whole, with any fields it holds" if action.open_subtree else kept
    if isinstance(action, Pseudonymise):
        kind = "reversible" if action.mode == "fpe" else "one-way"
        return f"pseudonymised ({kind}, {action.id_type})"
    if isinstance(action, Generalise):
        if action.location_decimals is not None:
            return f"generalised (location to {action.location_decimals} decimals)"
        if action.date_precision is not None:
            return f"generalised (date to {action.date_precision})"
        return f"generalised (age in bands of {action.age_band})"
    if isinstance(action, Mask):
        return f"masked (last {action.keep_last} characters shown)"
    if isinstance(action, Reidentify):  # response-only; never part of what is sent
        return "re-identified in responses"
    return "not sent"


def _category_of(location: str, path: str, action: FieldAction, aggregate: bool) -> str:
    if isinstance(action, Pseudonymise) and not (action.id_type == "token" and location != "body"):
        return _CATEGORY_BY_ID_TYPE.get(action.id_type, _UNCATEGORISED)
    # A token pseudonym of a header or parameter is a request reference made one-way (an
    # Idempotency-Key), not an account identifier: it falls through to the rules below.
    segments = [segment.removesuffix("[]").lower() for segment in path.split(".")]
    if location == "body" and aggregate:
        return _AGGREGATE
    if location != "body":
        return _NAMES.get(segments[-1], _BY_LOCATION[location])
    for segment in segments:
        if segment in _CONTAINERS:
            return _CONTAINERS[segment]
    if segments[-1] in _NAMES:
        return _NAMES[segments[-1]]
    for segment in reversed(segments[:-1]):
        if segment in _HOLDERS:
            return _HOLDERS[segment]
    return _BY_LOCATION[location]


def _shown_name(location: str, path: str) -> str:
    if location == "body":
        return path
    singular = {"query": "query", "path": "path", "headers": "header"}[location]
    return f"{path} ({singular})"


def shared_fields(route: Route) -> tuple[SharedField, ...]:
    """Every field the route sends to the partner (body, query, path parameters, headers), in order;
    fields the policy drops are left out, because they are never shared."""
    # A route without a data subject (a campaign report) carries figures about many people, none singled out.
    aggregate = route.subject is None
    out: list[SharedField] = []
    for location in _LOCATIONS:
        for path, action in route_request_actions(route, location).items():
            if isinstance(action, Drop | Reidentify):
                continue
            out.append(SharedField(_shown_name(location, path), _category_of(location, path, action, aggregate),
                                   describe_protection(action)))
    return tuple(out)


def route_request_actions(route: Route, location: str) -> Mapping[str, FieldAction]:
    """The declared request actions of one location, by field path (as written in the profile)."""
    return route.policy.request_actions(location)


def sharing_rows(profile_set: ProfileSet) -> list[SharingRow]:
    """The rows of the table, sorted by partner name then route id, so the output is stable."""
    rows: list[SharingRow] = []
    for profile in sorted(profile_set.profiles.values(), key=lambda p: (p.name.lower(), p.id)):
        rows.extend(_rows_of(profile))
    return rows


def _rows_of(profile: PartnerProfile) -> Iterable[SharingRow]:
    for route in profile.routes:
        yield SharingRow(
            partner_id=profile.id,
            partner_name=profile.name,
            category=profile.category,
            jurisdiction=profile.jurisdiction,
            route_id=route.id,
            purposes=tuple(route.purposes),
            legal_basis=route.legal_basis,
            consent=route.consent_purpose,
            legal_reference_required=route.legal_reference_required,
            fields=shared_fields(route),
            source=profile.source_file,
        )


def _consent_text(row: SharingRow) -> str:
    if row.consent:
        return f"yes ({row.consent})"
    if row.legal_reference_required:
        return "no (legal reference required)"
    return "no"


def _md_cell(text: str) -> str:
    # A pipe would end the cell and a newline the row; both come from profile text an operator wrote.
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").split())


def _render_md(rows: list[SharingRow]) -> str:
    header = ("| Partner | Category | Jurisdiction | Purpose | Legal basis | Consent needed | "
              "Data shared and how it is protected |")
    lines = [
        "# Third parties we share with",
        "",
        "Generated from the partner profiles the gateway enforces (`gateway profiles render --format md`).",
        "Fields not listed are never sent. Pseudonymised values are keyed per partner, so two partners",
        "cannot link them; one-way pseudonyms cannot be reversed, reversible ones only by the gateway.",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        data = "; ".join(
            f"**{_md_cell(category)}**: " + ", ".join(f"`{_md_cell(f.name)}` {_md_cell(f.protection)}"
                                                        for f in fields)
            for category, fields in row.fields_by_category()
        ) or "none"
        cells = [
            f"{_md_cell(row.partner_name)} (`{_md_cell(row.partner_id)}`, route `{_md_cell(row.route_id)}`)",
            _md_cell(row.category),
            _md_cell(row.jurisdiction),
            _md_cell(", ".join(row.purposes)),
            _md_cell(row.legal_basis),
            _md_cell(_consent_text(row)),
            data,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _render_html(rows: list[SharingRow]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>Third parties we share with</title>",
        "<style>table{border-collapse:collapse}th,td{border:1px solid #999;padding:4px;vertical-align:top}"
        "ul{margin:0;padding-left:1.2em}</style>",
        "</head>",
        "<body>",
        "<h1>Third parties we share with</h1>",
        "<p>Generated from the partner profiles the gateway enforces. Fields not listed are never sent. "
        "Pseudonymised values are keyed per partner, so two partners cannot link them.</p>",
        "<table>",
        "<thead><tr><th>Partner</th><th>Category</th><th>Jurisdiction</th><th>Purpose</th>"
        "<th>Legal basis</th><th>Consent needed</th><th>Data shared and how it is protected</th></tr></thead>",
        "<tbody>",
    ]
    for row in rows:
        groups = "".join(
            f"<li><strong>{_e(category)}</strong><ul>"
            + "".join(f"<li><code>{_e(f.name)}</code>: {_e(f.protection)}</li>" for f in fields)
            + "</ul></li>"
            for category, fields in row.fields_by_category()
        )
        data = f"<ul>{groups}</ul>" if groups else "none"
        parts.append(
            "<tr>"
            f"<td>{_e(row.partner_name)} (<code>{_e(row.partner_id)}</code>, "
            f"route <code>{_e(row.route_id)}</code>)</td>"
            f"<td>{_e(row.category)}</td>"
            f"<td>{_e(row.jurisdiction)}</td>"
            f"<td>{_e(', '.join(row.purposes))}</td>"
            f"<td>{_e(row.legal_basis)}</td>"
            f"<td>{_e(_consent_text(row))}</td>"
            f"<td>{data}</td>"
            "</tr>"
        )
    parts += ["</tbody>", "</table>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render_sharing_table(profile_set: ProfileSet, fmt: str) -> str:
    """The table as Markdown (`md`) or a standalone HTML page (`html`); ValueError on another format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    rows = sharing_rows(profile_set)
    return _render_md(rows) if fmt == "md" else _render_html(rows)
