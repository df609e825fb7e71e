"""gateway.logs: the component logger follows structlog's configuration and the line keeps its format."""

from __future__ import annotations

import datetime
import io
import json
import re

import pytest
import structlog

from gateway import logs
from gateway.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_line_keys_and_timestamp_format(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging("info")
    before = datetime.datetime.now(datetime.UTC)
    get_logger("gateway.proxy").info("request", request_id="r-1", status=200, reason=None)
    after = datetime.datetime.now(datetime.UTC)
    (line,) = _lines(err)
    assert list(line) == ["component", "request_id", "status", "reason", "event", "level", "timestamp"]
    assert line["component"] == "gateway.proxy"
    assert line["event"] == "request"
    assert line["level"] == "info"
    stamp = str(line["timestamp"])
    # structlog's TimeStamper(fmt="iso", utc=True) spelling: microseconds, "Z", no "+00:00".
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp)
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - datetime.timedelta(microseconds=1) <= parsed <= after


def test_timestamp_matches_structlog_at_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    stamper = logs._UtcTimestamp()
    for ns in (1_700_000_000_000_000_000, 1_700_000_000_000_123_000, 1_700_000_001_999_999_000):
        monkeypatch.setattr(logs.time, "time_ns", lambda ns=ns: ns)
        ours = stamper(None, "info", {})["timestamp"]
        moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).replace(microsecond=(ns // 1000) % 10**6)
        # What TimeStamper(fmt="iso", utc=True) writes for that moment.
        expected = moment.isoformat().replace("+00:00", "Z")
        assert ours == expected


def test_follows_reconfiguration_and_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    log = get_logger("gateway.test")  # created before any configuration, like module-level loggers
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging("info")
    log.info("one")
    log.debug("hidden")
    monkeypatch.setattr("sys.stderr", second)
    configure_logging("debug")
    log.debug("two")
    with structlog.testing.capture_logs() as captured:
        log.warning("three", n=3)
    log.info("four")
    assert [line["event"] for line in _lines(first)] == ["one"]
    assert [line["event"] for line in _lines(second)] == ["two", "four"]
    assert captured == [{"component": "gateway.test", "n": 3, "event": "three", "log_level": "warning"}]


def test_unconfigured_binds_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.reset_defaults()
    log = get_logger("gateway.test")
    log.info("default-config")  # structlog's defaults print to the current sys.stdout
    assert "default-config" in capsys.readouterr().out
    assert log.bind(extra=1) is not None
