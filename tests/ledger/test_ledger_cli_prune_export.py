"""`gateway ledger` end to end on a real SQLite file and PostgreSQL: prune keeps the ledger verifiable,
export bundles verify without the database, query finds a data subject's disclosures, and every record
matches schemas/disclosure_record.schema.json."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import orjson
import pytest
from ledger_helpers import disclosure_draft

from gateway.cli.main import main
from gateway.keys import GatewayKeys
from gateway.ledger import LedgerQuery, RecordDraft, open_ledger

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "disclosure_record.schema.json").read_text())


@pytest.fixture(params=["sqlite", "postgres"])
def cli_url(request: pytest.FixtureRequest, sqlite_url: str, keys_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = sqlite_url if request.param == "sqlite" else request.getfixturevalue("pg_url")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys_dir))
    monkeypatch.setenv("GATEWAY_LEDGER_URL", url)
    return url


async def _write(url: str, keys: GatewayKeys, chain: str, numbers: range, partner: str = "acme") -> None:
    ledger = open_ledger(url, keys.ledger, chain_id=chain, checkpoint_every_records=7)
    await ledger.start()
    for i in numbers:
        await ledger.append(disclosure_draft(i, keys, partner=partner))
    await ledger.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_twice_then_verify_says_from_where(
    cli_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(20)))
    asyncio.run(_write(cli_url, gateway_keys, "w1", range(5)))
    first_cut = datetime.now(UTC).isoformat()
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(20, 30)))

    code, out, _ = _run(capsys, "ledger", "prune", "--before", first_cut)
    assert code == 0, out
    # w0: 20 records and checkpoints at 8, 16 and 23 (close); w1: 5 records and its closing checkpoint.
    assert "pruned 29 records" in out
    code, out, _ = _run(capsys, "ledger", "verify")
    assert code == 0, out
    assert out.startswith("ledger OK:")
    assert "w0:" in out
    assert "from pruned anchor 23" in out

    asyncio.run(_write(cli_url, gateway_keys, "w1", range(5, 8)))
    second_cut = datetime.now(UTC).isoformat()
    asyncio.run(_write(cli_url, gateway_keys, "w1", range(8, 9)))
    code, out, _ = _run(capsys, "ledger", "prune", "--before", second_cut)
    assert code == 0, out
    code, out, _ = _run(capsys, "ledger", "verify")
    assert code == 0, out
    # The first prune record (in the admin chain) is gone now; its anchors were carried forward.
    assert "from pruned anchor" in out

    code, _, err = _run(capsys, "ledger", "prune", "--before", "2999-01-01")
    assert code == 2
    assert "future" in err


def test_export_bundle_verifies_without_the_database_and_catches_edits(
    cli_url: str, gateway_keys: GatewayKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(12)))
    bundle = tmp_path / "bundle"
    code, out, _ = _run(capsys, "ledger", "export", "--output", str(bundle))
    assert code == 0
    assert "exported 14 records" in out
    code, out, err = _run(capsys, "ledger", "verify", "--bundle", str(bundle))
    assert code == 0, out
    assert "ledger OK: 14 records in 1 chains" in out
    assert "bundle's own public key" in err
    pub = tmp_path / "trusted.pub.pem"
    pub.write_bytes((bundle / "ledger-signing.pub.pem").read_bytes())
    assert _run(capsys, "ledger", "verify", "--bundle", str(bundle), "--public-key", str(pub))[0] == 0

    lines = (bundle / "records.jsonl").read_bytes().splitlines()
    record = orjson.loads(lines[4])
    record["route"] = "somewhere-else"
    lines[4] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    (bundle / "records.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, out, _ = _run(capsys, "ledger", "verify", "--bundle", str(bundle), "--public-key", str(pub))
    assert code == 1
    assert "chain w0: sequence 5: contents do not match" in out


def test_query_a_data_subject_and_the_recipients_to_notify(
    cli_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(14), partner="acme"))
    asyncio.run(_write(cli_url, gateway_keys, "w1", range(3, 4), partner="globex"))
    code, out, _ = _run(capsys, "ledger", "query", "--subject", "subscriber-3", "--format", "jsonl")
    assert code == 0
    found = [orjson.loads(line) for line in out.splitlines()]
    assert sorted(r["request_id"] for r in found) == ["req-10", "req-3", "req-3"]
    assert "subscriber-3" not in out  # only the keyed reference is stored
    code, out, _ = _run(capsys, "ledger", "query", "--subject", "subscriber-3", "--recipients")
    assert out.splitlines()[0] == "partner\tdisclosures\tfirst\tlast"
    assert [line.split("\t")[:2] for line in out.splitlines()[1:]] == [["acme", "2"], ["globex", "1"]]
    code, out, _ = _run(capsys, "ledger", "query", "--partner", "acme", "--kind", "disclosure", "--format", "csv",
                        "--limit", "5")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in rows] == ["req-0", "req-1", "req-2", "req-3", "req-4"]
    assert json.loads(rows[0]["fields_sent"]) == ["claim.amount", "claim.device_ref"]
    code, out, _ = _run(capsys, "ledger", "query", "--kind", "checkpoint", "--since", "2000-01-01",
                        "--until", "2999-01-01")
    assert out.splitlines()[0].split() == ["time", "kind", "chain", "sequence", "caller", "partner", "route",
                                           "purpose", "status", "reason"]
    assert out.rstrip().endswith("(3 records)")  # w0 at 8 and 16 (close), w1 at 2 (close)


def test_every_record_kind_matches_the_schema(cli_url: str, gateway_keys: GatewayKeys) -> None:
    async def scenario() -> list[dict[str, object]]:
        ledger = open_ledger(cli_url, gateway_keys.ledger, chain_id="w0")
        await ledger.start()
        await ledger.append(RecordDraft(kind="refusal", reason="rate-limited"))
        cut = datetime.now(UTC)
        disclosure = await ledger.append(disclosure_draft(1, gateway_keys))
        await ledger.append(RecordDraft(kind="outcome", disclosure_id=disclosure.id, partner="acme", status=201,
                                        latency_ms=12.25, attempt=1))
        await ledger.append(RecordDraft(kind="refusal", caller="svc", partner="acme", route="r", status=403,
                                        reason="consent-required", request_id="req-x"))
        await ledger.append(RecordDraft(kind="registry", action="hold_place", subject_ref="a" * 64, reason="dispute"))
        await ledger.prune(cut)
        await ledger.append(RecordDraft(kind="refusal", reason="upstream-timeout"))  # after the prune's checkpoint
        records = await ledger.query(LedgerQuery(limit=None))
        await ledger.close()
        return records

    records = asyncio.run(scenario())
    assert {r["kind"] for r in records} == {"disclosure", "refusal", "outcome", "registry", "checkpoint", "prune"}
    for record in records:
        jsonschema.validate(record, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**records[0], "subject_id": "alice"}, SCHEMA)


def test_a_query_cut_at_its_limit_says_so_and_fails(
    cli_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DSAR export (`--subject ... --format csv`) used to stop at --limit (1000 by default) without a word."""
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(21)))  # subscriber-3: records 3, 10 and 17
    dsar = ("ledger", "query", "--subject", "subscriber-3", "--kind", "disclosure")
    for fmt in ("csv", "jsonl", "table"):
        code, out, err = _run(capsys, *dsar, "--format", fmt, "--limit", "2")
        assert code == 3, fmt
        assert "more than 2 records match" in err
        assert "--limit 0" in err
        assert "subscriber-3" not in err
    code, out, err = _run(capsys, *dsar, "--format", "csv", "--limit", "2")
    assert [r["request_id"] for r in csv.DictReader(io.StringIO(out))] == ["req-3", "req-10"]
    code, out, err = _run(capsys, *dsar, "--format", "csv", "--limit", "3")
    assert (code, err) == (0, "")
    assert len(list(csv.DictReader(io.StringIO(out)))) == 3
    code, out, err = _run(capsys, *dsar, "--format", "jsonl", "--limit", "0")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 3
    code, _, err = _run(capsys, *dsar, "--limit", "-1")
    assert code == 2
    assert "--limit" in err


def test_query_reads_the_subject_from_stdin_and_refuses_a_blank_one(
    cli_url: str, gateway_keys: GatewayKeys, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--subject -` used to search for the literal subject "-" and answer "no records"."""
    asyncio.run(_write(cli_url, gateway_keys, "w0", range(14)))  # subscriber-3: records 3 and 10
    monkeypatch.setattr("sys.stdin", io.StringIO("subscriber-3\n"))
    code, out, _ = _run(capsys, "ledger", "query", "--subject", "-", "--format", "jsonl")
    assert code == 0
    assert sorted(orjson.loads(line)["request_id"] for line in out.splitlines()) == ["req-10", "req-3"]
    for blank in ("", "  ", "\u200b\u3000"):  # white space and format characters only
        monkeypatch.setattr("sys.stdin", io.StringIO(blank + "\n"))
        code, out, err = _run(capsys, "ledger", "query", "--subject", "-", "--format", "jsonl")
        assert (code, out) == (2, "")
        assert "subject id is empty" in err
        code, out, err = _run(capsys, "ledger", "query", "--subject", blank, "--format", "jsonl")
        assert (code, out) == (2, "")
