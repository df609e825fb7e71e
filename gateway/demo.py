"""`gateway demo`: the gateway, fake partners and a short run of realistic traffic, all on loopback.

It starts the real gateway (shipped profiles, SQLite ledger under ./data, development keys), one aiohttp
server on 127.0.0.1:9900 that plays every partner (told apart by the first path segment, which is how
the shipped profiles' default base URLs `http://127.0.0.1:9900/<id>` address them; when 9900 is taken a
free port is used and `PARTNER_URL_<ID>` set before the profiles load), mints a development token, sends
the routes' own example requests through several partners plus a few calls that must be refused, and
prints what each service sent next to what the partner received, then the ledger's verification.

The printed sample values are the profiles' example data, not real people; the gateway's own log lines
stay free of values as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from gateway.cli.token import mint_token
from gateway.config import Settings, load_settings
from gateway.logs import configure_logging
from gateway.resources import shipped

FAKE_PARTNER_PORT = 9900
DEMO_CALLER = "demo-order-service"
MAX_PARTNERS = 6


@dataclass
class PartnerCall:
    """What one fake partner received: method, path with query, headers and the exact body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakePartners:
    """One loopback server playing every partner; records each call under the partner id (first segment)."""

    calls: dict[str, list[PartnerCall]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        partner, _, _ = request.path.lstrip("/").partition("/")
        body = await request.read()
        self.calls.setdefault(partner, []).append(
            PartnerCall(request.method, request.path_qs, dict(request.headers), body)
        )
        answer: dict[str, Any] = {"status": "accepted", "reference": f"{partner[:8].upper()}-0001"}
        with contextlib.suppress(ValueError):
            received = json.loads(body) if body else None
            if isinstance(received, dict):
                # Echo what was received, as many partner APIs confirm a request; the route's response
                # policy decides what goes back (and re-identifies reversible pseudonyms).
                answer = {**received, **answer}
        return web.json_response(answer)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flatten(child, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _flatten(child, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(sent: Any, received: Any) -> list[str]:
    """Lines comparing the body a service sent with the body the partner received, field by field."""
    before = dict(_flatten(sent)) if sent is not None else {}
    after = dict(_flatten(received)) if received is not None else {}
    lines: list[str] = []
    for path, value in before.items():
        if path not in after:
            lines.append(f"      dropped       {path}")
        elif after[path] != value:
            lines.append(f"      transformed   {path}: {_short(value)} -> {_short(after[path])}")
        else:
            lines.append(f"      kept          {path}")
    lines.extend(f"      added         {path}" for path in after if path not in before)
    return lines


def _example_requests(profiles: Any) -> list[tuple[Any, Any, Any]]:
    """(profile, route, example request) for the first successful example of a few partners, one per
    category so the run shows different kinds of partner."""
    chosen: list[tuple[Any, Any, Any]] = []
    categories: set[str] = set()
    for profile in sorted(profiles.profiles.values(), key=lambda p: p.id):
        if profile.category in categories or len(chosen) >= MAX_PARTNERS:
            continue
        for route in profile.routes:
            example = next((e for e in route.examples if e.expect_error is None), None)
            if example is not None and not route.legal_reference_required:
                chosen.append((profile, route, example))
                categories.add(profile.category)
                break
    return chosen


def _example_path(route: Any, params: Mapping[str, str]) -> str:
    path = str(route.path_template)
    for name, value in params.items():
        path = path.replace("{" + name + "}", quote(str(value), safe=""))
    return path


async def _run(
    settings: Settings, environ: dict[str, str], partner_ids: list[str]
) -> tuple[list[str], str, str | None]:
    """The demo's traffic; returns what went wrong (empty when all is as expected), the ledger summary and
    one data subject it disclosed about (for the commands to try next)."""
    from gateway.ledger import LedgerQuery
    from gateway.proxy import start_gateway
    from gateway.subjects.rights import SubjectRights

    partners = FakePartners()
    fake_app = web.Application()
    fake_app.router.add_route("*", "/{tail:.*}", partners.handle)
    fake_runner = web.AppRunner(fake_app, access_log=None)
    await fake_runner.setup()
    port = FAKE_PARTNER_PORT if _port_free(FAKE_PARTNER_PORT) else _free_port()
    await web.TCPSite(fake_runner, "127.0.0.1", port).start()
    print(f"fake partners listening on http://127.0.0.1:{port}/<partner-id>")
    if port != FAKE_PARTNER_PORT:
        for partner_id in partner_ids:
            environ.setdefault(f"PARTNER_URL_{partner_id.upper().replace('-', '_')}",
                               f"http://127.0.0.1:{port}/{partner_id}")
    gateway = await start_gateway(settings, environ=environ)
    print(f"gateway listening on {gateway.url} (ledger {settings.ledger_url})\n")
    problems: list[str] = []
    forwarded = 0
    try:
        services = gateway.state.services
        profiles = gateway.state.pipeline.profiles
        plan = _example_requests(profiles)
        scopes = [f"disclose:{p.id}:{purpose}" for p, r, _ in plan for purpose in r.purposes]
        assert services.keys.jwt_dev_private is not None
        token = mint_token(services.keys.jwt_dev_private, subject=DEMO_CALLER, scopes=scopes,
                           issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_seconds=600)
        auth = {"Authorization": f"Bearer {token}"}
        # Through SubjectRights, so each consent the demo records is itself a `registry` ledger record.
        rights = SubjectRights(services.subjects, services.ledger, services.keys.ledger)
        tour_subject: str | None = None
        async with aiohttp.ClientSession() as session:
            for profile, route, example in plan:
                request = example.request
                body = request.body
                if route.subject is not None and route.consent_purpose is not None and body is not None:
                    # The demo's data subject consented in the app; the registry records it first.
                    subject = route.read(route.subject, body, list(request.query), request.path, {})
                    if subject:
                        await rights.grant_consent(str(subject), route.consent_purpose, source="demo")
                        tour_subject = tour_subject or str(subject)
                path = _example_path(route, request.path)
                query = ("?" + urlencode(list(request.query))) if request.query else ""
                # A UUID: the only caller id shape (with a W3C trace-id) the gateway propagates.
                request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo-{profile.id}"))
                headers = {**auth, **dict(request.headers), "X-Request-Id": request_id}
                if len(route.purposes) > 1:
                    headers["X-Purpose"] = route.purposes[0]
                before = len(partners.calls.get(profile.id, []))
                async with session.request(
                    route.method, f"{gateway.url}/v1/partners/{profile.id}{path}{query}",
                    data=None if body is None else json.dumps(body).encode(),
                    headers={**headers, "Content-Type": "application/json"} if body is not None else headers,
                ) as response:
                    await response.read()
                    status, disclosure = response.status, response.headers.get("X-Disclosure-Id", "-")
                forwarded += 1 if 200 <= status < 300 else 0
                print(f"{profile.id} ({profile.category}, {profile.jurisdiction}): {route.method} {route.path_template}"
                      f" purpose {route.purposes[0]} -> {status}, disclosure {disclosure}")
                calls = partners.calls.get(profile.id, [])[before:]
                if calls:
                    received = json.loads(calls[-1].body) if calls[-1].body else None
                    auth_header = profile.upstream.auth.header if profile.upstream.auth is not None else None
                    credential = "present" if auth_header and auth_header in calls[-1].headers else "absent"
                    leaked = token in json.dumps(calls[-1].headers)
                    print(f"    partner received {calls[-1].method} {calls[-1].path}; partner credential {credential}; "
                          f"caller token {'LEAKED' if leaked else 'absent'}")
                    print("\n".join(describe(body, received)))
                else:
                    print("    (nothing reached the partner)")
                print()
            print("calls that must be refused (nothing reaches the partner):")
            narrow = mint_token(services.keys.jwt_dev_private, subject=DEMO_CALLER, scopes=scopes[:1],
                                issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_seconds=600)
            for label, method, url, kwargs in _refusal_calls(gateway.url, plan, auth, narrow):
                before_total = sum(len(c) for c in partners.calls.values())
                async with session.request(method, url, **kwargs) as response:
                    problem = await response.json(content_type=None)
                after_total = sum(len(c) for c in partners.calls.values())
                if response.status < 400 or after_total != before_total:
                    problems.append(f"{label} was not refused")
                print(f"    {label}: {response.status} {problem.get('title')}"
                      f" (partner calls: {after_total - before_total})")
        records = await services.ledger.query(LedgerQuery(limit=100000))
        kinds: dict[str, int] = {}
        for record in records:
            kinds[str(record["kind"])] = kinds.get(str(record["kind"]), 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        if not forwarded:
            problems.append("no example request went through")
    finally:
        await gateway.stop()
        await fake_runner.cleanup()
    return problems, summary, tour_subject


def _refusal_calls(
    base: str, plan: list[tuple[Any, Any, Any]], auth: dict[str, str], narrow_token: str
) -> list[tuple[str, str, str, Any]]:
    calls: list[tuple[str, str, str, Any]] = [
        ("no token", "POST", f"{base}/v1/partners/{plan[0][0].id}{_example_path(plan[0][1], plan[0][2].request.path)}",
         {"data": b"{}", "headers": {"Content-Type": "application/json"}}),
        ("undeclared route", "POST", f"{base}/v1/partners/{plan[0][0].id}/export/all-customers",
         {"data": b"{}", "headers": {**auth, "Content-Type": "application/json"}}),
        ("duplicate JSON keys", "POST", f"{base}/v1/partners/{plan[0][0].id}"
         f"{_example_path(plan[0][1], plan[0][2].request.path)}",
         {"data": b'{"a": 1, "a": 2}', "headers": {**auth, "Content-Type": "application/json"}}),
    ]
    if len(plan) > 1:
        # A token for the first partner only, used on another partner: the scope is missing.
        profile, route, example = plan[1]
        calls.append(("token without the scope for this partner", route.method,
                      f"{base}/v1/partners/{profile.id}{_example_path(route, example.request.path)}",
                      {"data": json.dumps(example.request.body).encode() if example.request.body is not None else None,
                       "headers": {"Authorization": f"Bearer {narrow_token}", "Content-Type": "application/json"}}))
    return calls


def run_demo(*, config_file: str | None = None, data_dir: Path = Path("data")) -> int:
    """Run the demo; 0 when the traffic went through, the refusals were refused and the ledger verifies."""
    from gateway.cli.ledger import verify_url
    from gateway.keys import LEDGER_VERIFY_FILE, load_ed25519_public

    environ = dict(os.environ)
    settings = load_settings(config_file, environ=environ)
    overrides: dict[str, Any] = {}
    if "GATEWAY_LISTEN" not in environ:
        overrides["listen"] = "127.0.0.1:0"
    # The embedded defaults (./keys, ./data/ledger.sqlite3) unless told otherwise, so that `gateway ledger
    # verify`, `gateway ledger query` and `gateway subject show` look at what the demo just did.
    if "GATEWAY_LEDGER_URL" not in environ and data_dir != Path("data"):
        overrides["ledger_url"] = f"sqlite:///{data_dir / 'ledger.sqlite3'}"
    if not Path(settings.profiles_dir).is_dir():
        # Run from elsewhere than the checkout: fall back to the profiles shipped next to the package.
        overrides["profiles_dir"] = shipped("partner_profiles")
    settings = replace(settings, **overrides)
    data_dir.mkdir(parents=True, exist_ok=True)
    configure_logging("warning")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # development keys are expected here
        partner_ids = sorted(p.stem for p in Path(settings.profiles_dir).glob("*.yaml"))
        problems, summary, tour_subject = asyncio.run(_run(settings, environ, partner_ids))
    key = load_ed25519_public(settings.keys_dir / LEDGER_VERIFY_FILE)
    report = asyncio.run(verify_url(settings.ledger_url, key))
    print(f"\nledger: {summary}")
    print(report.summary())
    if not report.ok:
        problems.append("the ledger did not verify")
    elif tour_subject:
        print("\nlook closer (the same ledger and keys):")
        print("  gateway ledger query --kind disclosure --format table")
        print(f"  gateway subject show {tour_subject}      # who received what about this person")
        print("  gateway profiles render --format md        # the sharing table of the privacy policy")
    for problem in problems:
        print(f"gateway: error: demo: {problem}", file=sys.stderr)
    return 1 if problems else 0
