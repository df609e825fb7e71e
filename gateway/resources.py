"""Where the files the project ships beside its code are found: the JSON Schemas, the OpenAPI document
and the partner profiles.

They live at the top of the repository (schemas/, partner_profiles/), where people read and edit them;
`gateway/shipped/` holds symlinks to them, so a checkout and an editable install read the originals and
a wheel (setuptools copies what the links point to) carries its own copies. Code never looks them up
relative to the current directory or the repository root, which a non-editable install does not have.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"


def shipped(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. `shipped("schemas", "openapi.yaml")`."""
    return SHIPPED_DIR.joinpath(*parts)
