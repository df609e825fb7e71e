"""`gateway subject ...` end to end on a real SQLite ledger: changes recorded, report printed, errors clear."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger

SUBJECT = "vn-user-77"
PROFILES_DIR = Path(__file__).resolve().parents[2] / "partner_profiles"


async def _first_gateway_start(url: str, keys: GatewayKeys) -> None:
    """What a gateway's first start leaves in the database: the ledger's tables and a chain."""
    ledger = open_ledger(url, keys.ledger, chain_id="server")
    await ledger.start()
    await ledger.close()


@pytest.fixture
def ledger_url(tmp_path: Path, keys_dir: Path, gateway_keys: GatewayKeys, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    asyncio.run(_first_gateway_start(url, gateway_keys))
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    monkeypatch.setenv("GATEWAY_LEDGER_URL", url)
    monkeypatch.setenv("GATEWAY_PROFILES_DIR", str(PROFILES_DIR))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    return url


def test_changes_then_access_report(
    ledger_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = gateway_keys.ledger.subject_ref(SUBJECT)
    assert main(["subject", "consent", "grant", SUBJECT, "location", "--source", "app-settings"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(SUBJECT + "\n"))
    assert main(["subject", "consent", "withdraw", "-", "location"]) == 0
    assert main(["subject", "hold", "place", SUBJECT, "--reason", "correction_pending"]) == 0
    assert main(["subject", "minor", SUBJECT, "--guardian-consent", "yes"]) == 0
    out = capsys.readouterr().out
    assert "consent_withdrawn location" in out
    assert SUBJECT not in out

    async def add_disclosure() -> None:
        ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="server")
        await ledger.start()
        await ledger.append(RecordDraft(kind="disclosure", partner="maps-google", route="geocode",
                                        purpose="locker-search", subject_ref=ref, fields_sent=["location"]))
        registry_records = await ledger.query(LedgerQuery(kind="registry", subject_ref=ref))
        assert len(registry_records) == 4
        await ledger.close()

    asyncio.run(add_disclosure())
    assert main(["subject", "show", SUBJECT, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["subject_ref"] == ref
    assert report["consents"] == [
        {"consent_purpose": "location", "granted": False, "since": report["consents"][0]["since"], "source": "cli"}
    ]
    assert report["hold"]["reason"] == "correction_pending"
    assert report["minor"]["guardian_consent"] is True
    assert [r["partner"] for r in report["recipients_to_notify_of_a_correction"]] == ["maps-google"]

    assert main(["subject", "show", SUBJECT]) == 0
    table = capsys.readouterr().out
    assert "Recipients to notify of a correction (1)" in table
    assert "maps-google" in table
    assert SUBJECT not in table


def test_errors_are_one_line_and_non_zero(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere.sqlite3'}"
    assert main(["subject", "show", SUBJECT, "--ledger", missing]) == 2
    assert main(["subject", "consent", "grant", SUBJECT, "Bad Purpose"]) == 1
    assert main(["subject", "hold", "place", SUBJECT, "--reason", "x y"]) == 1
    assert main(["subject", "consent", "grant", "  ", "location"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 4
    assert "does not exist" in err
    assert "consent_purpose" in err
    assert not (tmp_path / "nowhere.sqlite3").exists()


def test_minor_needs_a_choice(ledger_url: str) -> None:
    with pytest.raises(SystemExit):
        main(["subject", "minor", SUBJECT])


def _tables(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    finally:
        conn.close()


@pytest.mark.parametrize("argv", [
    ["subject", "consent", "withdraw", SUBJECT, "location"],
    ["subject", "consent", "grant", SUBJECT, "location"],
    ["subject", "hold", "place", SUBJECT, "--reason", "correction_pending"],
    ["subject", "minor", SUBJECT, "--not-minor"],
])
def test_a_change_to_a_ledger_that_does_not_exist_is_refused_and_creates_nothing(
    argv: list[str], keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mistyped --ledger, or the default ./data/ URL from another directory, used to create a new empty
    ledger and registry, record the change there (where the gateway never looks) and report "changed"."""
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("GATEWAY_LEDGER_URL", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    typo = tmp_path / "ledgr.sqlite3"
    assert main([*argv, "--ledger", f"sqlite:///{typo}"]) == 2
    assert main(argv) == 2  # the default URL, relative to this directory
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert str(typo) in err[0]
    assert "does not exist" in err[0]
    assert "nothing was changed" in err[1]
    assert SUBJECT not in "".join(err)
    assert not typo.exists()
    assert list(elsewhere.iterdir()) == []

    # A file with no ledger tables (not a gateway's ledger) is refused too, and left as it was.
    sqlite3.connect(typo).close()
    assert main([*argv, "--ledger", f"sqlite:///{typo}"]) == 2
    assert "no ledger tables" in capsys.readouterr().err
    assert _tables(typo) == []


def test_a_change_to_a_postgres_schema_without_the_ledger_is_refused(
    pg_url: str, keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert main(["subject", "consent", "withdraw", SUBJECT, "location", "--ledger", pg_url]) == 2
    err = capsys.readouterr().err
    assert "no ledger tables" in err
    assert "search_path" not in err.split("(")[0]  # the location is printed without the URL's query

    async def tables() -> list[str]:
        import asyncpg
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_schema = current_schema()")
        finally:
            await conn.close()
        return [r[0] for r in rows]

    assert asyncio.run(tables()) == []


def test_a_change_says_which_ledger_it_was_recorded_in(
    ledger_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["subject", "hold", "place", SUBJECT, "--reason", "correction_pending"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(f" in {(tmp_path / 'ledger.sqlite3').resolve()}")
    assert SUBJECT not in out


def test_a_withdrawal_for_a_purpose_no_profile_declares_is_recorded_with_a_warning(
    ledger_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["subject", "consent", "withdraw", SUBJECT, "analytcs"]) == 0
    out, err = capsys.readouterr()
    assert "consent_withdrawn analytcs" in out  # recorded: a withdrawal is never lost
    assert err.count("\n") == 1
    assert "warning: no profile" in err
    assert "'analytcs'" in err
    assert "analytics" in err  # the declared purposes, to spot the typo
    assert main(["subject", "consent", "withdraw", SUBJECT, "analytics"]) == 0
    assert capsys.readouterr().err == ""


def test_the_access_report_after_a_prune_says_from_when_it_is_complete(
    ledger_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = gateway_keys.ledger.subject_ref(SUBJECT)

    async def disclose_then_prune() -> str:
        ledger = open_ledger(ledger_url, gateway_keys.ledger, chain_id="server")
        await ledger.start()
        await ledger.append(RecordDraft(kind="disclosure", partner="maps-google", route="geocode",
                                        purpose="locker-search", subject_ref=ref, fields_sent=["location"]))
        await asyncio.sleep(0.01)
        result = await ledger.prune(datetime.now(UTC))
        [prune] = await ledger.query(LedgerQuery(kind="prune"))
        await ledger.close()
        assert result.removed >= 1
        before: str = prune["detail"]["before"]
        return before

    before = asyncio.run(disclose_then_prune())
    assert main(["subject", "show", SUBJECT, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipients_to_notify_of_a_correction"] == []
    assert report["complete_since"] == before
    assert main(["subject", "show", SUBJECT]) == 0
    table = capsys.readouterr().out
    assert f"Ledger pruned before {before}" in table
    assert "NOT known" in table
    assert f"(none known since {before})" in table
    assert main(["ledger", "query", "--subject", SUBJECT, "--recipients"]) == 0
    out, err = capsys.readouterr()
    assert out == "partner\tdisclosures\tfirst\tlast\n"
    assert f"the ledger was pruned before {before}" in err
