"""A latency histogram cheap enough for the paths it times: fixed buckets, no lock, no dependency.

The code that times something (an fsync, a pong) keeps a :class:`Histogram`
and calls :meth:`Histogram.observe`; the metrics endpoint reads
:meth:`Histogram.snapshot` at scrape time (:mod:`ingest.observe.collector`).
Nothing here imports ``prometheus_client``: a process that serves no metrics
pays only the observation (a ``bisect`` and two additions).

"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass


__all__ = ["FSYNC_BUCKETS", "LATENCY_BUCKETS", "Histogram", "HistogramSnapshot"]

#: Upper bounds, in seconds, for latencies that should stay well under a second (a pong).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

#: Upper bounds, in seconds, for an fsync: from a cache flush to a saturated disk.
FSYNC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state at one moment, in Prometheus' shape.

    Attributes:
        buckets: ``(upper bound, observations at or below it)`` pairs, cumulative,
            the last one ``float("inf")``.
        count: Observations in all (equal to the last bucket's).
        sum: Their total, in seconds.

    """

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Histogram:
    """Observations counted in fixed buckets.

    Not locked: one thread observes (the event loop, or the fsync thread) and
    another may snapshot; a snapshot taken mid-observation is at most one
    observation off in ``sum``, never inconsistent in its counts.

    Args:
        bounds: Increasing upper bounds, in seconds.

    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be increasing and not empty")
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation (a negative one, from a clock step, as 0)."""
        if seconds < 0:
            seconds = 0.0
        self._counts[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        """Return the cumulative counts now."""
        counts = list(self._counts)  # one copy: the counts below add up to the total
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return HistogramSnapshot(tuple(cumulative), total, self._sum)

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)
