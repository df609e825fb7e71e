"""The "third parties we share with" table rendered from the shipped profiles (Markdown and HTML), its
escaping of hostile profile text, and docs/partners.md staying the rendered table."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest
import yaml

from gateway.profiles import ProfileSet, example_pseudonymiser, load_profiles
from gateway.profiles.render import render_sharing_table, sharing_rows

ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = ROOT / "partner_profiles"
HOSTILE_NAME = '<script>alert("x")</script> & Co | <b>bold</b>'


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return load_profiles(PROFILES_DIR, pseudonymiser=example_pseudonymiser(), environ={})


def md_rows(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith(("| Partner", "| ---"))]


def cells(row: str) -> list[str]:
    # Split on pipes that the renderer did not escape.
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


def test_markdown_has_one_row_per_route_with_every_partner(shipped: ProfileSet) -> None:
    text = render_sharing_table(shipped, "md")
    rows = md_rows(text)
    assert len(rows) == sum(len(profile.routes) for profile in shipped.profiles.values())
    for profile in shipped.profiles.values():
        assert f"(`{profile.id}`, route" in text, profile.id
        assert profile.name in text
    for row in rows:
        assert len(cells(row)) == 7, row


def test_markdown_says_how_each_field_is_protected(shipped: ProfileSet) -> None:
    rows = {cells(row)[0]: cells(row) for row in md_rows(render_sharing_table(shipped, "md"))}
    maps = next(row for name, row in rows.items() if "`maps-google`" in name)
    assert maps[2] == "US"
    assert maps[5] == "yes (location)"
    assert "`device.imei` pseudonymised (one-way, imei)" in maps[6]
    assert "`location` generalised (location to 3 decimals)" in maps[6]
    assert "user.id" not in maps[6]  # read for consent, dropped: never shared, so never listed
    assert "imsi" not in maps[6]     # the seed gives map providers no IMSI
    carrier = next(row for name, row in rows.items() if "`carrier-tw-hct`, route `create-shipment`" in name)
    assert "`sender.phone` pseudonymised (reversible, phone)" in carrier[6]
    assert "`recipient.address.line1` kept" in carrier[6]
    # A one-way idempotency key is a request reference, not an account identifier (rv-transforms R1).
    payment = next(row for name, row in rows.items() if "`payment-vietcombank`" in name)
    assert "**Request references**: `Idempotency-Key (header)` pseudonymised (one-way, token)" in payment[6]
    police = next(row for name, row in rows.items() if "`law-enforcement-kr`" in name)
    assert police[4] == "legal_obligation"
    assert police[5] == "no (legal reference required)"
    promotion = next(row for name, row in rows.items() if "`promotion-entrustors`" in name)
    assert "**Aggregate statistics (no personal data)**" in promotion[6]
    assert "Device identifiers" not in promotion[6]


def test_every_shipped_field_has_a_category(shipped: ProfileSet) -> None:
    for row in sharing_rows(shipped):
        for field in row.fields:
            assert field.category != "Other", (row.partner_id, field.name)


def test_html_is_a_standalone_page_with_every_partner(shipped: ProfileSet) -> None:
    page = render_sharing_table(shipped, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    assert page.count("<tr>") == 1 + sum(len(profile.routes) for profile in shipped.profiles.values())
    for profile in shipped.profiles.values():
        assert f"<code>{profile.id}</code>" in page
        assert html.escape(profile.name) in page
    assert "Yamato Transport Co., Ltd." in page


def test_hostile_profile_text_is_escaped(tmp_path: Path) -> None:
    source = PROFILES_DIR / "maps-google.yaml"
    document = yaml.safe_load(source.read_text(encoding="utf-8"))
    document["name"] = HOSTILE_NAME
    (tmp_path / "maps-google.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    shutil.copy(PROFILES_DIR / "payment-vietcombank.yaml", tmp_path / "payment-vietcombank.yaml")
    loaded = load_profiles(tmp_path, pseudonymiser=example_pseudonymiser(), environ={})
    assert loaded.profiles["maps-google"].name == HOSTILE_NAME

    page = render_sharing_table(loaded, "html")
    assert "<script>" not in page
    assert "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co | &lt;b&gt;bold&lt;/b&gt;" in page

    markdown = render_sharing_table(loaded, "md")
    hostile_row = next(row for row in md_rows(markdown) if "maps-google" in row)
    assert len(cells(hostile_row)) == 7  # the pipe in the name did not split the row
    assert "Co \\| " in hostile_row


def test_unknown_format_is_refused(shipped: ProfileSet) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render_sharing_table(shipped, "pdf")


def test_docs_partners_holds_the_current_table(shipped: ProfileSet) -> None:
    """docs/partners.md is the rendered table plus notes; regenerate it when a profile changes."""
    table = render_sharing_table(shipped, "md")
    docs = (ROOT / "docs" / "partners.md").read_text(encoding="utf-8")
    assert table in docs
    for profile in shipped.profiles.values():
        assert f"### `{profile.id}`" in docs, profile.id
