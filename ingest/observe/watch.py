"""What a run shows its watchers: the live counters of its writer and sources, and what each expects.

The command that builds a run makes one :class:`Watched`, hands each source's
counters both to the source (``run_agent(..., summary=)``,
``run_webhook_server(..., stats=)``, …) and to it, and gives it to the metrics
server; the server sets :attr:`Watched.writer` once the log is open. The
counters are read where they are kept, at scrape time: nothing is copied on
the receive path.

"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingest.log.writer import LogWriter
from ingest.observe.figures import ProjectionFigures
from ingest.sources.agent.client import IngestSummary
from ingest.sources.monitor import MonitorReport
from ingest.sources.relay.server import RelayReport
from ingest.sources.rest.backfill import BackfillReport
from ingest.sources.webhook.receiver import WebhookStats


__all__ = ["BackfillWatch", "MonitorWatch", "Watched"]


@dataclass(frozen=True)
class BackfillWatch:
    """A backfill's counters and its rhythm.

    Attributes:
        report: The counters the backfill updates.
        follow: Whether it polls (else it is one pass and ends).
        interval: Seconds between polls.

    """

    report: BackfillReport
    follow: bool = False
    interval: float = 60.0


@dataclass(frozen=True)
class MonitorWatch:
    """A monitor's counters and how often it lists live conversations."""

    report: MonitorReport
    poll_interval: float = 5.0


@dataclass
class Watched:
    """One run's live counters.

    Attributes:
        writer: The open log writer (set when the log opens).
        agent: The agent client's counters, if it runs.
        webhook: The webhook receiver's counters, if it runs.
        backfill: The backfill's, if it runs.
        monitor: The monitor's, if it runs.
        relay: The relay's, if it runs.
        projection: Returns what the live projection's store says of itself
            (``None`` when the projection is off); called at scrape time, in
            a worker thread. May raise ``CaptureError`` or ``OSError``.
        started: :func:`time.monotonic` when the run began.

    """

    writer: LogWriter | None = None
    agent: IngestSummary | None = None
    webhook: WebhookStats | None = None
    backfill: BackfillWatch | None = None
    monitor: MonitorWatch | None = None
    relay: RelayReport | None = None
    projection: Callable[[], ProjectionFigures] | None = None
    started: float = field(default_factory=time.monotonic)
