"""gateway.logs: the component logger follows structlog's configuration and the line keeps its format."""

from __future__ import annotations

import datetime
import io
import json
import logging
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


def _render_with(wrapper_class: type, calls: list[tuple[str, tuple[object, ...], dict[str, object]]]) -> list[object]:
    """What the wrapped logger receives for each call, with a given wrapper class and the same chain."""
    received: list[object] = []

    class Sink:
        def __getattr__(self, method: str) -> object:
            return lambda *args, **kwargs: received.append((method, args, kwargs))

    def drop_marked(logger: object, name: str, event_dict: dict[str, object]) -> dict[str, object]:
        if event_dict.get("drop"):
            raise structlog.DropEvent
        return event_dict

    structlog.configure(
        processors=[structlog.processors.add_log_level, drop_marked, structlog.processors.JSONRenderer()],
        wrapper_class=wrapper_class, logger_factory=lambda *args: Sink(), cache_logger_on_first_use=False,
    )
    log = structlog.get_logger(component="c").bind(bound="b")
    for method, args, kwargs in calls:
        getattr(log, method)(*args, **kwargs)
    return received


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_wrapper_writes_what_structlogs_filtering_logger_writes(level: str) -> None:
    calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
        ("debug", ("d",), {"k": 1}),
        ("info", ("i %s and %d", "x", 2), {}),
        ("info", ("m %(a)s", {"a": "A"}), {"z": None}),
        ("msg", ("plain",), {}),
        ("warning", ("w",), {"n": 1.5}),
        ("warn", ("w2",), {}),
        ("error", ("e",), {"drop": True}),
        ("error", ("e2",), {}),
        ("critical", ("c",), {}),
        ("fatal", ("f",), {}),
        ("exception", ("x",), {}),
        ("log", (logging.WARNING, "via log"), {}),
    ]
    numeric = logs._LEVELS[level]
    ours = _render_with(logs._wrapper_class(numeric), calls)
    stock = _render_with(structlog.make_filtering_bound_logger(numeric), calls)
    assert ours == stock
    assert len(ours) > 3
