"""The per-request metric children write exactly what prometheus-client's own inc()/observe() write."""

from __future__ import annotations

import math
import re

import pytest

from gateway.metrics import GatewayMetrics

_CREATED = re.compile(rb"^.*_created.*$", re.MULTILINE)


def _exposition(metrics: GatewayMetrics) -> bytes:
    # `_created` samples carry the creation time of each series, which differs between two registries.
    return _CREATED.sub(b"", metrics.render())


def test_children_match_the_client_library() -> None:
    ours, theirs = GatewayMetrics(), GatewayMetrics()
    observations = [0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.003, 0.025, 0.9, 10.0, 11.0, 1e9, math.inf, math.nan, -1.0]
    for value in observations:
        ours.series.request_duration("p", "r").observe(value)
        theirs.request_duration.labels("p", "r").observe(value)
        ours.series.upstream_duration("p").observe(value)
        theirs.upstream_duration.labels("p").observe(value)
    for amount in (1, 1, 3, 0, 2.5):
        ours.series.requests("p", "r", "forwarded").inc(amount)
        theirs.requests.labels("p", "r", "forwarded").inc(amount)
        ours.series.pseudonymised("p", "imei").inc(amount)
        theirs.pseudonymised.labels("p", "imei").inc(amount)
    ours.series.refusals("p", "consent_missing").inc()
    theirs.refusals.labels("p", "consent_missing").inc()
    assert _exposition(ours) == _exposition(theirs)
    assert b'gateway_request_duration_seconds_bucket{le="0.0005",partner="p",route="r"} 4.0' in _exposition(ours)


def test_negative_increments_are_refused_like_the_client() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ValueError, match="non-negative"):
        metrics.series.fields_dropped("p", "r").inc(-1)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.fields_dropped.labels("p", "r").inc(-1)


def test_children_are_made_once_per_label_set() -> None:
    metrics = GatewayMetrics()
    assert metrics.series.requests("p", "r", "refused") is metrics.series.requests("p", "r", "refused")
    assert metrics.series.requests("p", "r", "refused").metric is metrics.requests.labels("p", "r", "refused")
