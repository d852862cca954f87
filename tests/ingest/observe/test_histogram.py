"""The latency histogram: Prometheus' cumulative `le` buckets from plain observations."""

from __future__ import annotations

import pytest

from ingest.observe.histogram import Histogram


def test_observations_land_in_le_buckets_cumulatively() -> None:
    histogram = Histogram((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 3.0, -1.0):
        histogram.observe(seconds)
    snapshot = histogram.snapshot()
    assert snapshot.buckets == ((0.01, 3), (0.1, 4), (1.0, 5), (float("inf"), 6))
    assert snapshot.count == histogram.count == 6
    assert snapshot.sum == pytest.approx(0.005 + 0.01 + 0.05 + 0.5 + 3.0)


def test_bounds_must_increase() -> None:
    with pytest.raises(ValueError):
        Histogram((0.1, 0.01))
    with pytest.raises(ValueError):
        Histogram(())
