"""Structured logging: structlog configured to write one JSON object per line to stderr.

The egress pipeline writes exactly one `request` line per request (see gateway.proxy.pipeline) holding
only bounded, non-personal values: request id, caller service, partner, route, status, latency and the
counts of fields kept, transformed and dropped. Bodies, query values, header values and subject ids are
never passed to a logger; exceptions are logged by type name only, because an exception message may
quote the data that caused it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode("utf-8")


def configure_logging(level: str = "info") -> None:
    """Configure structlog (and route aiohttp's stdlib loggers to the same level). Idempotent."""
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, got {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # aiohttp's access log would print the request line, whose path and query may carry personal
    # values; the pipeline's own line replaces it.
    logging.getLogger("aiohttp.access").disabled = True
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s: %(message)s")


def get_logger(name: str) -> Any:
    """A structlog logger for a component. It stays lazy (no `.bind()` here), so module-level loggers
    follow `configure_logging()` even when they were created before it ran."""
    return structlog.get_logger(component=name)
