"""`gateway subject ...` end to end on a real SQLite ledger: changes recorded, report printed, errors clear."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger

SUBJECT = "vn-user-77"


@pytest.fixture
def ledger_url(tmp_path: Path, keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    monkeypatch.setenv("GATEWAY_LEDGER_URL", url)
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
