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


class _Odd:
    def __repr__(self) -> str:
        return "<odd>"


# Events the request line and other callers may write, with values of every kind orjson and structlog's
# fallback treat differently: None, floats, unicode and escapes, nesting, a set and an object (repr'd by the
# renderer's fallback), a datetime, and fields named like keys the chain adds itself.
_EVENTS: list[tuple[str, dict[str, object]]] = [
    ("request", {"request_id": "r-1", "caller": "order-service", "partner": "carrier-test", "route": "create",
                 "purpose": None, "status": 200, "outcome": "forwarded", "reason": None, "latency_ms": 1.234,
                 "attempts": 1, "fields_kept": 7, "fields_transformed": 2, "fields_dropped": 0,
                 "response_fields_dropped": 0}),
    ("request", {"request_id": "r-2", "status": 451, "reason": "consent-withdrawn", "latency_ms": 0.0}),
    ("odd", {"text": 'quote " back \\ tab \t nl \n é 中 \u2028', "big": 2**63, "neg": -0.5, "nested": {"a": [1, None]},
             "a_set": {3}, "obj": _Odd(), "when": datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)}),
    ("clash", {"level": "shadowed", "timestamp": "shadowed", "component": "other"}),
    ("empty", {}),
]


@pytest.mark.parametrize(("event", "fields"), _EVENTS, ids=[e for e, _ in _EVENTS])
def test_info_line_writes_what_structlog_writes(
    monkeypatch: pytest.MonkeyPatch, event: str, fields: dict[str, object]
) -> None:
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_700_000_000_123_456_000)
    direct, chain = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", chain)
    configure_logging("info")
    get_logger("gateway.proxy").info(event, **fields)
    monkeypatch.setattr("sys.stderr", direct)
    configure_logging("info")

    def no_chain(self: logs.ComponentLogger) -> object:
        raise AssertionError("info_line went through structlog's chain")

    # The direct path must be the one taken under the gateway's own configuration.
    monkeypatch.setattr(logs.ComponentLogger, "info", property(no_chain))
    get_logger("gateway.proxy").info_line(event, dict(fields))
    assert direct.getvalue() == chain.getvalue()
    assert direct.getvalue().count("\n") == 1


def test_info_line_follows_level_capture_and_other_configurations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = get_logger("gateway.proxy")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    configure_logging("warning")
    log.info_line("request", {"status": 200})
    assert err.getvalue() == ""  # below the level: no line
    configure_logging("info")
    with structlog.testing.capture_logs() as captured:
        log.info_line("request", {"status": 200})
    assert captured == [{"component": "gateway.proxy", "status": 200, "event": "request", "log_level": "info"}]
    assert err.getvalue() == ""
    log.info_line("after", {"n": 1})  # capture_logs() restored the chain: written again
    assert [line["event"] for line in _lines(err)] == ["after"]
    structlog.reset_defaults()  # someone else's configuration: structlog's own path, to stdout
    log.info_line("default-config", {"n": 2})
    assert "default-config" in capsys.readouterr().out
    assert [line["event"] for line in _lines(err)] == ["after"]
