"""CLI command group `ledger`: verify, export, query and prune the disclosure ledger.

Every action takes `--ledger URL` (default GATEWAY_LEDGER_URL). `verify` and `export` need only the
public key; `query --subject` needs the ledger HMAC key (GATEWAY_KEYS_DIR) to compute the keyed
reference; `prune` needs the signing key.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.cli.common import read_subject_id, require_existing_ledger
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.keys import LEDGER_VERIFY_FILE, load_ed25519_public, load_keys
from gateway.ledger import KINDS, LedgerQuery, default_chain_id, open_ledger, open_store
from gateway.ledger.bundle import BundleSnapshot, export_bundle
from gateway.ledger.records import COLUMNS, JSON_COLUMNS, format_time, parse_time
from gateway.ledger.verify import ExpectedHead, TailPolicy, VerifyReport, verify_snapshot
from gateway.subjects.report import pruned_before

DEFAULT_QUERY_LIMIT = 1000
# The exit status of a query that printed only the first --limit of its records: non-zero so that a script
# (a data subject access export) cannot take a partial answer for the whole one; distinct from errors (1, 2).
EXIT_MORE_RECORDS = 3
TABLE_COLUMNS = ("time", "kind", "chain", "sequence", "caller", "partner", "route", "purpose", "status", "reason")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    ledger = sub.add_parser("ledger", help="verify, export, query and prune the disclosure ledger")
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)

    verify = actions.add_parser("verify", help="recompute every chain and check every signature")
    _add_ledger_url(verify)
    verify.add_argument("--expect-head", action="append", default=[], metavar="CHAIN:SEQ:HASH",
                        help="a head recorded earlier; fails if the ledger no longer reaches it (repeatable)")
    verify.add_argument("--public-key", type=Path, help="Ed25519 public key PEM (default: from GATEWAY_KEYS_DIR, "
                                                        "or the bundle's own key with --bundle)")
    verify.add_argument("--bundle", type=Path, help="verify an exported bundle instead of the database")
    _add_accept_unsigned(verify)
    verify.set_defaults(handler=run_verify)

    export = actions.add_parser("export", help="write a self-contained bundle that verifies without the database")
    _add_ledger_url(export)
    export.add_argument("--output", type=Path, required=True, help="new directory for the bundle")
    export.set_defaults(handler=run_export)

    query = actions.add_parser("query", help="list records by partner, route, caller, purpose, kind, subject, time")
    _add_ledger_url(query)
    for name in ("partner", "route", "caller", "purpose"):
        query.add_argument(f"--{name}")
    query.add_argument("--kind", choices=KINDS)
    query.add_argument("--subject", metavar="ID", help="data subject id, or - to read it from stdin; the keyed "
                                                         "reference is computed here")
    query.add_argument("--since", help="date or ISO 8601 time (inclusive)")
    query.add_argument("--until", help="date or ISO 8601 time (exclusive)")
    query.add_argument("--limit", type=int, default=DEFAULT_QUERY_LIMIT,
                       help=f"most records to print (default {DEFAULT_QUERY_LIMIT}; 0 for all); when more match, "
                       "the records are printed, a warning goes to stderr and the exit status is 3")
    query.add_argument("--format", choices=("jsonl", "csv", "table"), default="table")
    query.add_argument("--recipients", action="store_true",
                       help="one line per partner that received matching disclosures (who to notify)")
    query.set_defaults(handler=run_query)

    prune = actions.add_parser("prune", help="remove records older than a date; writes a signed prune record")
    _add_ledger_url(prune)
    prune.add_argument("--before", required=True, help="date or ISO 8601 time; older records are removed")
    _add_accept_unsigned(prune)
    prune.set_defaults(handler=run_prune)


def _add_accept_unsigned(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accept-unsigned", action="append", default=[], metavar="CHAIN:SEQ:HASH",
                        help="accept the records of CHAIN through SEQ (whose hash is HASH) that no signed "
                             "checkpoint covers, e.g. the tail a crashed writer left, after checking them "
                             "(repeatable; verify names the head to pass)")


def _policy(settings: Settings) -> TailPolicy:
    """The cadence the writers run with (the same settings), for chains whose checkpoints do not state it."""
    return TailPolicy(every_records=settings.checkpoint_every_records,
                      every_seconds=settings.checkpoint_every_seconds,
                      commit_timeout_seconds=settings.ledger_commit_timeout_seconds)


def _add_ledger_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ledger", metavar="URL", help="ledger URL (default: GATEWAY_LEDGER_URL)")


def _settings_and_url(args: argparse.Namespace) -> tuple[Settings, str]:
    settings = load_settings()
    url: str = args.ledger or settings.ledger_url
    return settings, url


def _time_arg(name: str, text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return format_time(parse_time(text))
    except ValueError as exc:
        raise ConfigError(f"{name}: expected a date or ISO 8601 time, got {text!r}") from exc


def _fingerprint(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- verify --------------------------------------------------------------------------------------------
def run_verify(args: argparse.Namespace) -> int:
    heads = [ExpectedHead.parse(text) for text in args.expect_head]
    accepted = [ExpectedHead.parse(text, option="--accept-unsigned") for text in args.accept_unsigned]
    if args.bundle is not None:
        bundle = BundleSnapshot(args.bundle)
        if args.public_key is None:
            key = bundle.public_key()
            print(f"gateway: warning: checking with the bundle's own public key (fingerprint {_fingerprint(key)}); "
                  "pass --public-key with a key from a trusted source", file=sys.stderr)
        else:
            key = load_ed25519_public(args.public_key)
        # No writer holds a bundle's chains: records no checkpoint covers fail unless accepted.
        report = asyncio.run(verify_snapshot(bundle, key, heads, accept_unsigned=accepted,
                                             policy=_policy(load_settings())))
    else:
        settings, url = _settings_and_url(args)
        key = load_ed25519_public(args.public_key or settings.keys_dir / LEDGER_VERIFY_FILE)
        report = asyncio.run(verify_url(url, key, heads, accepted, _policy(settings)))
    print(report.summary())
    return 0 if report.ok else 1


async def verify_url(url: str, key: Ed25519PublicKey, heads: Sequence[ExpectedHead] = (),
                     accept_unsigned: Sequence[ExpectedHead] = (), policy: TailPolicy | None = None) -> VerifyReport:
    await require_existing_ledger(url)
    store = open_store(url, create=False)
    await store.open()
    try:
        # Liveness as of the snapshot: a writer that holds its chain now may stop cleanly while the walk
        # runs (a deploy), its final checkpoint then lands after the snapshot and its lease is gone by the
        # time its tail is judged. A chain held before the snapshot was live at it (review rv-verify R4).
        held = {chain for chain in await store.list_chains() if await store.chain_live(chain)}

        async def live(chain: str) -> bool:
            return chain in held or await store.chain_live(chain)

        async with store.snapshot() as snap:
            return await verify_snapshot(snap, key, heads, accept_unsigned=accept_unsigned,
                                         policy=policy or TailPolicy(), live=live)
    finally:
        await store.close()


# -- export --------------------------------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    settings, url = _settings_and_url(args)
    key = load_ed25519_public(settings.keys_dir / LEDGER_VERIFY_FILE)

    async def run() -> int:
        await require_existing_ledger(url)
        store = open_store(url, create=False)
        await store.open()
        try:
            result = await export_bundle(store, args.output, key)
        finally:
            await store.close()
        print(f"exported {result.records} records and {result.checkpoints} checkpoints "
              f"from {len(result.heads)} chains to {result.path}")
        return 0

    return asyncio.run(run())


# -- query ---------------------------------------------------------------------------------------------
def build_query(args: argparse.Namespace, settings: Settings) -> LedgerQuery:
    """The store query for the command line; its limit is one more than --limit, so that run_query can tell
    a complete answer from a cut one."""
    if args.limit < 0:
        raise ConfigError("--limit: must be 0 (all records) or more")
    subject_ref = None
    if args.subject is not None:
        keys = load_keys(settings.keys_dir, dev_mode=settings.dev_mode, create_missing=False)
        subject_ref = keys.ledger.subject_ref(read_subject_id(args.subject))
    return LedgerQuery(
        kind="disclosure" if args.recipients and args.kind is None else args.kind,
        partner=args.partner, route=args.route, caller=args.caller, purpose=args.purpose,
        subject_ref=subject_ref, since=_time_arg("--since", args.since), until=_time_arg("--until", args.until),
        limit=None if args.recipients or args.limit == 0 else args.limit + 1,
    )


def run_query(args: argparse.Namespace) -> int:
    settings, url = _settings_and_url(args)
    query = build_query(args, settings)

    async def run() -> tuple[list[dict[str, Any]], str | None]:
        await require_existing_ledger(url)
        store = open_store(url, create=False)
        await store.open()
        try:
            return await store.query(query), await pruned_before(store)
        finally:
            await store.close()

    records, cutoff = asyncio.run(run())
    if cutoff is not None and (query.since is None or query.since < cutoff):
        # An empty answer (no disclosures, no recipients) must not read as "none ever" after a prune.
        print(f"gateway: note: the ledger was pruned before {cutoff}: older records are not in this answer",
              file=sys.stderr)
    more = query.limit is not None and len(records) > args.limit
    if more:
        records = records[:args.limit]
    sys.stdout.write(render_recipients(records) if args.recipients else render(records, args.format))
    if more:
        # Never a silent cut: a CSV or JSONL file has no footer to say so, and this is the DSAR export.
        print(f"gateway: warning: more than {args.limit} records match; only the first {args.limit} were "
              "printed (pass --limit 0 for all, or narrow with --since/--until)", file=sys.stderr)
        return EXIT_MORE_RECORDS
    return 0


def render_recipients(records: Sequence[dict[str, Any]]) -> str:
    partners: dict[str, list[str]] = {}
    for record in records:
        partners.setdefault(str(record.get("partner")), []).append(record["time"])
    lines = ["partner\tdisclosures\tfirst\tlast"]
    lines += [f"{p}\t{len(t)}\t{min(t)}\t{max(t)}" for p, t in sorted(partners.items())]
    return "\n".join(lines) + "\n"


def render(records: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode() + "\n" for r in records)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow(
                "" if record.get(c) is None
                else orjson.dumps(record[c]).decode() if c in JSON_COLUMNS else record[c]
                for c in COLUMNS
            )
        return out.getvalue()
    rows = [[str(r.get(c, "")) for c in TABLE_COLUMNS] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(TABLE_COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"({len(rows)} records)")
    return "\n".join(lines) + "\n"


# -- prune ---------------------------------------------------------------------------------------------
def run_prune(args: argparse.Namespace) -> int:
    settings, url = _settings_and_url(args)
    before_text = _time_arg("--before", args.before)
    assert before_text is not None
    before = parse_time(before_text)
    if before > datetime.now(UTC):
        raise ConfigError("--before: the date is in the future; prune removes only records older than it")
    keys = load_keys(settings.keys_dir, dev_mode=settings.dev_mode, create_missing=False)
    accepted = [ExpectedHead.parse(text, option="--accept-unsigned") for text in args.accept_unsigned]
    report = asyncio.run(verify_url(url, keys.ledger.verify_key, (), accepted, _policy(settings)))
    if not report.ok:
        print(report.summary(), file=sys.stderr)
        raise ConfigError("prune refused: the ledger does not verify; investigate before removing anything")

    async def run() -> int:
        ledger = open_ledger(url, keys.ledger, chain_id=default_chain_id("admin"))
        await ledger.start()
        try:
            result = await ledger.prune(before)
        finally:
            await ledger.close()
        print(f"pruned {result.removed} records older than {before_text}; prune record "
              f"{result.record.chain}:{result.record.sequence}; chains now start after "
              + (", ".join(f"{c}:{a['sequence']}" for c, a in sorted(result.anchors.items())) or "(none)"))
        return 0

    return asyncio.run(run())
