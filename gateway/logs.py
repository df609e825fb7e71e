"""Structured logging: structlog configured to write one JSON object per line to stderr.

The egress pipeline writes exactly one `request` line per request (see gateway.proxy.pipeline) holding
only bounded, non-personal values: request id, caller service, partner, route, status, latency and the
counts of fields kept, transformed and dropped. Bodies, query values, header values and subject ids are
never passed to a logger; exceptions are logged by type name only, because an exception message may
quote the data that caused it. aiohttp's server-side loggers follow the same rule: `configure_logging`
reduces their records to a fixed message and the exception's type name (`_ValueFreeRecords`), since
aiohttp's parser errors quote the raw request line or header line.

Nothing binds structlog context variables (request values are passed to each call explicitly), so the
processor chain has no `merge_contextvars` step: add it back before using `bind_contextvars`.

The per-request line goes through `ComponentLogger.info_line`, which builds the event dict in the order
structlog's chain gives it and hands it to the same JSON renderer and writer, skipping the bound logger and
the processor loop while the configuration `configure_logging` installed is in force (the same values reach
the line either way; tests/proxy/test_logs.py compares the two line for line).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# The logger factory `configure_logging` installed last; component loggers reuse their bound logger only
# while it is in force (see ComponentLogger).
_configured_factory: object | None = None


@dataclass(frozen=True, slots=True)
class _Installed:
    """What `configure_logging` installed, for `info_line`'s direct path: it applies only while structlog's
    configuration still holds exactly these (a test's own configuration or capture_logs() does not)."""

    factory: object
    processors: list[Any]  # the list structlog holds (capture_logs() edits it in place) ...
    chain: list[Any]  # ... and its contents as installed
    wrapper_class: object
    context_class: object
    info_enabled: bool
    stamp: _UtcTimestamp
    render: Any  # the chain's JSONRenderer
    write: Any  # a WriteLogger's msg (write, flush, under the file's lock)


_installed: _Installed | None = None


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode("utf-8")


class _UtcTimestamp:
    """`timestamp` as structlog's TimeStamper(fmt="iso", utc=True) writes it ("2024-05-01T12:00:00.123456Z",
    no fraction when it is zero), with the date and time of day formatted once per second instead of
    building an aware datetime per line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        second, micros = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"


# aiohttp's loggers on the server side: `aiohttp.server` logs a request it cannot parse with the parser's
# exception, whose text quotes the offending request line or header line (a path parameter, an e-mail in a
# header); `aiohttp.web` and `aiohttp.internal` log handler, payload and cookie trouble likewise. Their records
# keep their level and logger name and lose everything else (see `_ValueFreeRecords`).
# `asyncio` likewise: its "Task exception was never retrieved", "Exception in callback ..." and "Fatal error
# on transport/protocol" records quote the exception's text (an IDNA error quotes the host label it failed on).
_REQUEST_QUOTING_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.internal", "asyncio")


class _ValueFreeRecords(logging.Filter):
    """Reduces a record to a fixed message naming only the exception's type: the message, its arguments,
    the exception (its text and traceback, and any exception chained to it) and the stack are dropped, so
    no handler can write a byte of the request that caused it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        record.msg = f"log record withheld (may quote the request): error={type(error).__name__ if error else '-'}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_value_free = _ValueFreeRecords()


def configure_logging(level: str = "info") -> None:
    """Configure structlog (and route aiohttp's stdlib loggers to the same level). Idempotent."""
    global _configured_factory, _installed
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, got {level!r}")
    factory = structlog.WriteLoggerFactory(file=sys.stderr)
    stamp = _UtcTimestamp()
    render = structlog.processors.JSONRenderer(serializer=_dumps)
    processors: list[Any] = [structlog.processors.add_log_level, stamp, render]
    wrapper_class = structlog.make_filtering_bound_logger(numeric)
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _configured_factory = factory
    _installed = _Installed(
        factory=factory, processors=processors, chain=list(processors), wrapper_class=wrapper_class,
        context_class=structlog.get_config()["context_class"], info_enabled=numeric <= logging.INFO,
        stamp=stamp, render=render, write=factory().msg,
    )
    # aiohttp's access log would print the request line, whose path and query may carry personal
    # values; the pipeline's own line replaces it.
    logging.getLogger("aiohttp.access").disabled = True
    for name in _REQUEST_QUOTING_LOGGERS:
        logging.getLogger(name).addFilter(_value_free)  # adds it once, however often this runs
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s: %(message)s")


class ComponentLogger:
    """A component's logger that follows structlog's configuration like a lazy structlog logger, but
    binds once per configuration instead of on every call (a lazy proxy builds a bound logger and a
    logger per line: about a quarter of the request line's cost).

    The bound logger is reused only while the configuration `configure_logging` installed is in force
    (same processor list, wrapper, context class and logger factory); under any other configuration
    (structlog's defaults, a test's own) every call binds afresh, exactly as the lazy proxy does, so a
    factory that looks up sys.stdout per logger still sees the current one. `capture_logs()` edits the
    processor list in place, which the bound logger shares, so it sees every line."""

    __slots__ = ("_bound", "_context_class", "_factory", "_lazy", "_name", "_processors", "_wrapper_class")

    def __init__(self, name: str) -> None:
        self._name = name
        self._lazy: Any = structlog.get_logger(component=name)
        self._bound: Any = None
        self._factory: object = None
        self._processors: object = None
        self._wrapper_class: object = None
        self._context_class: object = None

    def _current(self) -> Any:
        config = structlog.get_config()
        factory = config["logger_factory"]
        if factory is not _configured_factory:
            return self._lazy.bind()
        if (
            factory is not self._factory
            or config["processors"] is not self._processors
            or config["wrapper_class"] is not self._wrapper_class
            or config["context_class"] is not self._context_class
        ):
            self._bound = self._lazy.bind()
            self._factory, self._processors = factory, config["processors"]
            self._wrapper_class, self._context_class = config["wrapper_class"], config["context_class"]
        return self._bound

    def info_line(self, event: str, fields: dict[str, Any]) -> None:
        """`info(event, **fields)`, written directly while `configure_logging`'s configuration is in
        force: the event dict structlog's chain would build (context, fields, event, level, timestamp, in
        that order) goes to the same renderer and writer, without the bound logger and processor loop
        (about a tenth of the request's CPU in the log line)."""
        installed = _installed
        if installed is not None:
            config = structlog.get_config()
            if (
                config["logger_factory"] is installed.factory
                and config["processors"] is installed.processors
                and installed.processors == installed.chain
                and config["wrapper_class"] is installed.wrapper_class
                and config["context_class"] is installed.context_class
            ):
                if installed.info_enabled:
                    # A dict display keeps structlog's key order and its "last value wins, first position
                    # kept" for a field named like a context key or `level`.
                    event_dict = {"component": self._name, **fields, "event": event, "level": "info",
                                  "timestamp": installed.stamp.now()}
                    installed.write(installed.render(None, "info", event_dict))
                return
        self.info(event, **fields)

    # The logging methods as properties (found by normal attribute lookup, unlike __getattr__, which
    # Python reaches only after a failed lookup: about 0.7 µs more per call).
    @property
    def debug(self) -> Any:
        return self._current().debug

    @property
    def info(self) -> Any:
        return self._current().info

    @property
    def warning(self) -> Any:
        return self._current().warning

    @property
    def error(self) -> Any:
        return self._current().error

    @property
    def exception(self) -> Any:
        return self._current().exception

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)


def get_logger(name: str) -> Any:
    """A structlog logger for a component. It stays lazy (nothing is bound here), so module-level loggers
    follow `configure_logging()` even when they were created before it ran."""
    return ComponentLogger(name)
