"""CLI commands `gateway pseudonymise` and `gateway reidentify`: what a partner sees for an identifier,
and which identifier an fpe pseudonym from a partner stands for. For support staff and profile authors.

VALUE/TOKEN may be `-` to read it from standard input, which keeps personal values out of shell history
and the process list.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.config import load_settings
from gateway.keys import load_keys
from gateway.pseudonyms import ID_TYPES, MODES, PartnerKeyring, Pseudonymiser


def register(sub: argparse._SubParsersAction[Any]) -> None:
    pseudonymise = sub.add_parser(
        "pseudonymise",
        help="print the pseudonym a partner receives for an identifier",
        description="Print the pseudonym PARTNER receives for VALUE (an identifier of type TYPE).",
    )
    _common_arguments(pseudonymise)
    pseudonymise.add_argument("--mode", choices=MODES, default="hmac", help="hmac (one-way, default) or fpe")
    pseudonymise.add_argument("value", metavar="VALUE", help="the identifier, or - to read it from stdin")
    pseudonymise.set_defaults(handler=run_pseudonymise)

    reidentify = sub.add_parser(
        "reidentify",
        help="print the identifier behind a partner's fpe pseudonym",
        description="Print the identifier (normalised) behind TOKEN, an fpe pseudonym PARTNER received.",
    )
    _common_arguments(reidentify)
    reidentify.add_argument("token", metavar="TOKEN", help="the fpe pseudonym, or - to read it from stdin")
    reidentify.set_defaults(handler=run_reidentify)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partner", required=True, help="partner id (as in its profile)")
    parser.add_argument("--type", required=True, choices=ID_TYPES, dest="id_type", help="identifier type")
    parser.add_argument("--key-version", type=_key_version, default=None, help="key version (default: 1)")
    parser.add_argument("--keys-dir", type=Path, default=None, help="key folder (default: GATEWAY_KEYS_DIR)")


def _key_version(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) < 2**32:
        raise argparse.ArgumentTypeError("expected a positive integer")
    return int(text)


def _pseudonymiser(args: argparse.Namespace) -> Pseudonymiser:
    settings = load_settings(keys_dir=args.keys_dir)
    keys = load_keys(settings.keys_dir, dev_mode=settings.dev_mode)
    return Pseudonymiser(PartnerKeyring(keys.master_key, version=args.key_version or 1))


def _read(argument: str) -> str:
    return sys.stdin.readline().rstrip("\r\n") if argument == "-" else argument


def run_pseudonymise(args: argparse.Namespace) -> int:
    value = _read(args.value)
    print(_pseudonymiser(args).pseudonymise(args.partner, args.id_type, args.mode, value))
    return 0


def run_reidentify(args: argparse.Namespace) -> int:
    token = _read(args.token)
    print(_pseudonymiser(args).reidentify(args.partner, args.id_type, token))
    return 0
