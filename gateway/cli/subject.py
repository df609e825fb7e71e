"""CLI command group `subject`: a data subject's access report, and the registry changes a privacy
officer makes (consent, holds, minor status), each recorded in the ledger through SubjectRights.

    gateway subject show ID [--format table|json]
    gateway subject consent grant|withdraw ID PURPOSE
    gateway subject hold place ID --reason REASON | gateway subject hold lift ID
    gateway subject minor ID --guardian-consent yes|no | gateway subject minor ID --not-minor

ID may be `-` to read it from standard input, which keeps it out of shell history and the process list.
The raw id is only turned into its keyed reference here; nothing prints or stores it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import ledger_location, read_subject_id, require_existing_ledger
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.keys import LedgerKeys, load_keys
from gateway.ledger import default_chain_id, open_ledger, open_store
from gateway.profiles import example_pseudonymiser, load_profiles
from gateway.subjects.registry import open_registry
from gateway.subjects.report import build_access_report, render_table
from gateway.subjects.rights import RegistryChange, SubjectRights, consent_purposes_of

# Registry changes made from the command line go to their own ledger chain, so they never race the
# server's chain for the next sequence number.
CLI_CHAIN_SUFFIX = "subject-cli"
DEFAULT_SOURCE = "cli"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    subject = sub.add_parser(
        "subject",
        help="a data subject's access report; consent, holds and minor status",
        description="Access reports and registry changes for one data subject. Every change is recorded "
        "in the ledger before it takes effect.",
    )
    actions = subject.add_subparsers(dest="subject_command", metavar="ACTION", required=True)

    show = actions.add_parser(
        "show",
        help="print the access report: consents, holds, minor status, every disclosure, recipients",
        description="Print what the registry holds about ID and every disclosure the ledger recorded "
        "(partner, route, purpose, fields, time), ending with the recipients to notify of a correction.",
    )
    _common(show)
    show.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    show.set_defaults(handler=run_show)

    consent = actions.add_parser("consent", help="grant or withdraw consent for a consent purpose",
                                 description="Grant or withdraw ID's consent for PURPOSE.")
    consent.add_argument("change", choices=("grant", "withdraw"), help="grant or withdraw")
    _common(consent)
    consent.add_argument("purpose", metavar="PURPOSE", help="consent purpose (as in the partner profiles)")
    _source(consent)
    consent.set_defaults(handler=run_consent)

    hold = actions.add_parser("hold", help="place or lift a hold (restriction of processing)",
                              description="Place or lift a hold on ID: while held, only routes marked "
                              "allowed_during_hold serve the subject.")
    hold.add_argument("change", choices=("place", "lift"), help="place or lift")
    _common(hold)
    hold.add_argument("--reason", default="correction_pending",
                      help="why (a label such as correction_pending, processing_suspended; default "
                      "correction_pending); only for place")
    _source(hold)
    hold.set_defaults(handler=run_hold)

    minor = actions.add_parser("minor", help="record that a subject is a minor, with or without guardian consent",
                               description="Record ID as a minor with or without guardian consent, or as not "
                               "a minor (--not-minor).")
    _common(minor)
    choice = minor.add_mutually_exclusive_group(required=True)
    choice.add_argument("--guardian-consent", choices=("yes", "no"), help="whether a guardian consented")
    choice.add_argument("--not-minor", action="store_true", help="the subject is not (or no longer) a minor")
    _source(minor)
    minor.set_defaults(handler=run_minor)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject_id", metavar="ID", help="the data subject's id, or - to read it from stdin")
    parser.add_argument("--ledger", metavar="URL", help="ledger database URL (default: GATEWAY_LEDGER_URL)")
    parser.add_argument("--keys-dir", type=Path, help="keys folder (default: GATEWAY_KEYS_DIR)")
    parser.add_argument("--config", metavar="FILE", help="settings file (default: GATEWAY_CONFIG)")


def _source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help=f"who or what asked for the change, recorded with it (default {DEFAULT_SOURCE!r})")


def _settings(args: argparse.Namespace) -> tuple[Settings, LedgerKeys]:
    settings = load_settings(args.config, ledger_url=args.ledger, keys_dir=args.keys_dir)
    # Never create keys here: a fresh key would give references that match nothing already recorded.
    keys = load_keys(settings.keys_dir, dev_mode=settings.dev_mode, create_missing=False)
    return settings, keys.ledger


def run_show(args: argparse.Namespace) -> int:
    settings, keys = _settings(args)
    subject_ref = keys.subject_ref(read_subject_id(args.subject_id))

    async def report_text() -> str:
        await require_existing_ledger(settings.ledger_url)  # the registry would create its tables otherwise
        store = open_store(settings.ledger_url, create=False)
        await store.open()
        try:
            async with open_registry(settings.ledger_url, keys) as registry:
                report = await build_access_report(registry, store, subject_ref)
        finally:
            await store.close()
        if args.format == "json":
            return json.dumps(report.as_dict(), indent=2, ensure_ascii=False) + "\n"
        return render_table(report)

    sys.stdout.write(asyncio.run(report_text()))
    return 0


def _change(args: argparse.Namespace, kind: str) -> int:
    settings, keys = _settings(args)
    subject_id = read_subject_id(args.subject_id)

    async def apply() -> RegistryChange:
        # Before anything is opened: opening creates a missing ledger, and a change recorded in a new
        # database the gateway never reads would be reported as done while nothing took effect.
        await require_existing_ledger(settings.ledger_url)
        ledger = open_ledger(settings.ledger_url, keys, chain_id=default_chain_id(CLI_CHAIN_SUFFIX))
        await ledger.start()
        try:
            async with open_registry(settings.ledger_url, keys) as registry:
                rights = SubjectRights(registry, ledger, keys)
                if kind == "consent":
                    if args.change == "grant":
                        return await rights.grant_consent(subject_id, args.purpose, source=args.source)
                    return await rights.withdraw_consent(subject_id, args.purpose, source=args.source)
                if kind == "hold":
                    if args.change == "place":
                        return await rights.place_hold(subject_id, args.reason, source=args.source)
                    return await rights.lift_hold(subject_id, source=args.source)
                minor = not args.not_minor
                return await rights.set_minor(
                    subject_id, minor, minor and args.guardian_consent == "yes", source=args.source)
        finally:
            await ledger.close()

    change = asyncio.run(apply())
    if kind == "consent":
        _warn_if_undeclared(settings, args.purpose)
    event = change.event
    what = event.consent_purpose or event.hold_reason or ""
    if event.minor is not None:
        what = f"minor={'yes' if event.minor else 'no'} guardian_consent={'yes' if event.guardian_consent else 'no'}"
    effect = "changed" if event.changed else "unchanged (already so)"
    print(f"{event.kind.value} {what} for subject {event.subject_ref}: {effect}; "
          f"ledger record {change.record.id} at {change.record.time} in {ledger_location(settings.ledger_url)}")
    return 0


def _warn_if_undeclared(settings: Settings, purpose: str) -> None:
    """Warn (after the change: a withdrawal is never refused, so nothing is lost) when no profile in the
    configured profiles folder declares `purpose`: such a change affects no route, and for a misspelt
    withdrawal the consent meant stays granted."""
    try:
        profiles = load_profiles(Path(settings.profiles_dir), pseudonymiser=example_pseudonymiser(),
                                 check_examples=False)
    except (ConfigError, OSError):
        print(f"gateway: warning: the profiles in {settings.profiles_dir} could not be loaded, so consent "
              f"purpose {purpose!r} was not checked against them (see `gateway profiles check`)", file=sys.stderr)
        return
    known = consent_purposes_of(profiles)
    if purpose not in known:
        print(f"gateway: warning: no profile in {settings.profiles_dir} declares consent purpose {purpose!r}: "
              "the change was recorded but affects no route (declared: "
              f"{', '.join(sorted(known)) or 'none'}); check the spelling", file=sys.stderr)


def run_consent(args: argparse.Namespace) -> int:
    return _change(args, "consent")


def run_hold(args: argparse.Namespace) -> int:
    return _change(args, "hold")


def run_minor(args: argparse.Namespace) -> int:
    return _change(args, "minor")
