"""Entry point of the `gateway` command: builds the parser from the command-group modules and turns
every expected failure into one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError, GatewayError

# Each module defines `register(subparsers)`; the order is the order of `gateway --help`.
COMMAND_MODULES = (
    "gateway.cli.serve",  # serve, demo
    "gateway.cli.profiles",  # profiles check|test|render
    "gateway.cli.pseudonyms",  # pseudonymise, reidentify
    "gateway.cli.ledger",  # ledger verify|query|prune|export
    "gateway.cli.token",  # token mint
    "gateway.cli.subject",  # subject show|...
)


class CommandError(Exception):
    """A command could not do what was asked; the message is the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Partner Data Gateway: minimise, pseudonymise and record every disclosure to a partner.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default")
    warnings.showwarning = _one_line_warning
    try:
        code: int = args.handler(args)
    except (ConfigError, CommandError) as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway: error: {exc.title}: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A missing key file or an unreadable path: name the file, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"gateway: error: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
    line: str | None = None,
) -> None:
    print(f"gateway: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
