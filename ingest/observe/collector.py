"""A run's counters as Prometheus metric families, read where they are kept, at scrape time.

:class:`RunCollector` is a ``prometheus_client`` custom collector: register it
on a per-run :class:`~prometheus_client.CollectorRegistry` (never the global
one, so that tests and library callers can run several) and expose it with
``generate_latest``. Every figure comes from a counter the code keeps anyway
(:class:`~ingest.log.writer.WriterStats`, the sources' reports) or from the
log itself (:class:`~ingest.log.tally.LogTally`: frames by type); collecting
adds no work to a receive path.

Names follow Prometheus' conventions: ``capture_`` first, ``_total`` for
counters, base units in the name (``_seconds``, ``_bytes``). Every label takes
values from a bounded set of capture's own words, never from what a peer
sent. A later feature adds its figures with a collector of its own on the
same registry (see :func:`build_registry`).

"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.log.segments import list_segments
from ingest.log.tally import TallyKey
from ingest.log.writer import events_dir
from ingest.observe.figures import ProjectionFigures, ProjectionLag
from ingest.observe.health import Check, DiskState
from ingest.observe.histogram import HistogramSnapshot
from ingest.observe.watch import Watched
from ingest.sources.rest.client import RestStats


__all__ = ["Moment", "RunCollector", "build_registry"]


@dataclass(frozen=True)
class Moment:
    """What one scrape read besides the counters (the files, the projection's store).

    Attributes:
        disk: The data dir's filesystem, or ``None`` if it could not be read.
        projection: The projection's figures and lag; the error that
            prevented reading them; ``None`` when the projection is off.
        ready: The readiness checks, as ``/readyz`` answers them now.

    """

    disk: DiskState | None
    projection: tuple[ProjectionFigures, ProjectionLag] | Exception | None
    ready: list[Check]


def _version() -> str:
    try:
        return version("capture")
    except PackageNotFoundError:
        return "unknown"


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    buckets = [("+Inf" if bound == float("inf") else repr(bound), float(n)) for bound, n in snapshot.buckets]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snapshot.sum)


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: list[str],
    values: Mapping[Any, float],
) -> Metric:
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class RunCollector(Collector):
    """Yields a run's metric families; see the README's "Monitoring" for each one.

    Args:
        watched: The run's counters.
        tally: Returns the latest counts of the log's new lines by source,
            direction and type (:class:`~ingest.observe.tally_process.TallyProcess`);
            ``None``: no such metric.
        moment: Reads the files and the projection once per scrape.

    """

    def __init__(
        self,
        watched: Watched,
        tally: Callable[[], Mapping[TallyKey, int]] | None,
        moment: Callable[[], Moment],
    ) -> None:
        self.watched = watched
        self.tally = tally
        self.moment = moment

    def collect(self) -> Iterator[Metric]:
        moment = self.moment()
        yield from self._log(moment)
        yield from self._frames()
        yield from self._agent()
        yield from self._webhook()
        yield from self._backfill()
        yield from self._monitor()
        yield from self._relay()
        yield from self._projection(moment)
        ready = GaugeMetricFamily(
            "capture_ready", "1 when the readiness check passes (as /readyz).", labels=["check"]
        )
        for check in moment.ready:
            ready.add_metric([check.name], 1.0 if check.ok else 0.0)
        yield ready
        info = GaugeMetricFamily("capture_build_info", "capture's version.", labels=["version"])
        info.add_metric([_version()], 1.0)
        yield info

    def _log(self, moment: Moment) -> Iterator[Metric]:
        writer = self.watched.writer
        if writer is None:
            return
        stats = writer.stats
        yield _counter("capture_log_lines", "Lines appended to the log by this process.", stats.lines)
        yield _counter("capture_log_bytes", "Bytes appended to the log by this process.", stats.bytes)
        yield _counter("capture_log_segments_rolled", "Segments rolled by this process.", stats.rotations)
        yield _gauge(
            "capture_log_segments",
            "Segment files in the log.",
            len(list_segments(events_dir(writer.data_dir))),
        )
        yield _gauge("capture_log_last_seq", "Seq of the last line appended.", writer.next_seq - 1)
        yield _gauge(
            "capture_log_writable",
            "1 while the writer is open and has not failed.",
            1.0 if writer.error is None and writer.active_segment is not None else 0.0,
        )
        yield _histogram(
            "capture_log_fsync_duration_seconds",
            "Time an fsync of the active segment took (each line's under --fsync always).",
            stats.fsync_seconds.snapshot(),
        )
        if moment.disk is not None:
            yield _gauge(
                "capture_data_dir_free_bytes",
                "Bytes free to capture on the data dir's filesystem.",
                moment.disk.free_bytes,
            )

    def _frames(self) -> Iterator[Metric]:
        tally = self.tally
        if tally is None:
            return
        counts = {key: float(n) for key, n in tally().items()}
        yield _labelled(
            CounterMetricFamily,
            "capture_frames_logged",
            "Frames appended to the log by source, direction (in: received, out: sent) and type.",
            ["source", "direction", "type"],
            counts,
        )
        skipped: dict[tuple[str, ...], float] = {}
        watched = self.watched
        if watched.agent is not None:
            skipped[("agent_ws",)] = watched.agent.audio_skipped
        if watched.monitor is not None:
            skipped[("monitor",)] = watched.monitor.report.audio_skipped
        if watched.relay is not None:
            skipped[("relay",)] = watched.relay.audio_in + watched.relay.audio_out
        if skipped:
            yield _labelled(
                CounterMetricFamily,
                "capture_audio_frames_skipped",
                "Audio frames received and never stored, by source.",
                ["source"],
                skipped,
            )

    def _agent(self) -> Iterator[Metric]:
        agent = self.watched.agent
        if agent is None:
            return
        yield _gauge(
            "capture_agent_connected",
            "1 while a conversation's socket is open.",
            1.0 if agent.connected else 0.0,
        )
        yield _counter("capture_agent_connections", "Agent sockets opened.", agent.connections)
        yield _counter(
            "capture_agent_conversations",
            "Conversations held (the platform named them).",
            agent.conversations,
        )
        yield _counter(
            "capture_agent_user_messages_sent",
            "Typed user messages sent (--input).",
            agent.user_messages_sent,
        )
        yield _labelled(
            CounterMetricFamily,
            "capture_agent_reconnects",
            "Connections that ended and led to another, by why they ended.",
            ["reason"],
            {(reason,): float(n) for reason, n in agent.reconnects.items()},
        )
        yield _histogram(
            "capture_agent_pong_latency_seconds",
            "From a ping's arrival to its pong's sending.",
            agent.pong_seconds.snapshot(),
        )

    def _webhook(self) -> Iterator[Metric]:
        stats = self.watched.webhook
        if stats is None:
            return
        yield _gauge(
            "capture_webhook_listening",
            "1 while the webhook receiver accepts connections.",
            1.0 if stats.listening else 0.0,
        )
        outcomes: dict[tuple[str, ...], float] = {
            ("200", "stored"): stats.stored,
            ("200", "audio_not_stored"): stats.audio_skipped,
            ("400", "incomplete_body"): stats.aborted,
            ("408", "too_slow"): stats.timed_out,
            ("413", "too_large"): stats.too_large,
            ("500", "log_failed"): stats.failed,
            ("503", "crowded_out"): stats.crowded,
        }
        for reason, n in stats.rejected.items():
            outcomes[("401", reason)] = n
        yield _labelled(
            CounterMetricFamily,
            "capture_webhook_deliveries",
            "Webhook requests answered, by HTTP status and outcome.",
            ["code", "outcome"],
            outcomes,
        )
        yield _counter(
            "capture_webhook_stored_bytes", "Body bytes of the stored deliveries.", stats.bytes_stored
        )

    def _rest(self, client: str, stats: RestStats | None) -> dict[str, dict[tuple[str, ...], float]]:
        if stats is None:
            return {}
        return {
            "requests": {(client,): stats.requests},
            "throttled": {
                (client, "too_many_concurrent_requests"): stats.throttled_slot,
                (client, "system_busy"): stats.throttled_busy,
            },
            "errors": {(client,): stats.errors},
            "gave_up": {(client,): stats.gave_up},
            "in_flight": {(client,): stats.in_flight},
            "limit": {(client,): stats.limit},
        }

    def _backfill(self) -> Iterator[Metric]:
        watch = self.watched.backfill
        rest: dict[str, dict[tuple[str, ...], float]] = {}
        if watch is not None:
            report = watch.report
            yield _counter(
                "capture_backfill_passes", "Listings of the agent's conversations walked.", report.passes
            )
            yield _labelled(
                CounterMetricFamily,
                "capture_backfill_conversations",
                "Listed conversations, by what the backfill did with them.",
                ["outcome"],
                {
                    ("logged",): report.logged,
                    ("already_captured",): report.already_captured,
                    ("missing",): report.missing,
                },
            )
            yield _gauge(
                "capture_backfill_unfinished",
                "Conversations not finished yet (asked for again).",
                report.unfinished,
            )
            yield _gauge(
                "capture_backfill_errors", "Conversations whose fetch failed, to be retried.", report.errors
            )
            rest = self._rest("backfill", report.rest)
        monitor = self.watched.monitor
        if monitor is not None:
            for name, values in self._rest("monitor", monitor.report.rest).items():
                rest.setdefault(name, {}).update(values)
        if not rest:
            return
        yield _labelled(
            CounterMetricFamily,
            "capture_rest_requests",
            "REST requests sent, by client.",
            ["client"],
            rest["requests"],
        )
        yield _labelled(
            CounterMetricFamily,
            "capture_rest_throttled",
            "REST answers 429, by client and reason.",
            ["client", "reason"],
            rest["throttled"],
        )
        yield _labelled(
            CounterMetricFamily,
            "capture_rest_errors",
            "REST answers 5xx or 408 and network errors, by client.",
            ["client"],
            rest["errors"],
        )
        yield _labelled(
            CounterMetricFamily,
            "capture_rest_gave_up",
            "REST requests that failed every retry, by client.",
            ["client"],
            rest["gave_up"],
        )
        yield _labelled(
            GaugeMetricFamily,
            "capture_rest_in_flight",
            "REST requests awaiting an answer, by client.",
            ["client"],
            rest["in_flight"],
        )
        yield _labelled(
            GaugeMetricFamily,
            "capture_rest_concurrency_limit",
            "REST requests allowed in flight (as learnt from 429s), by client.",
            ["client"],
            rest["limit"],
        )

    def _monitor(self) -> Iterator[Metric]:
        watch = self.watched.monitor
        if watch is None:
            return
        report = watch.report
        yield _gauge("capture_monitor_sockets_open", "Monitor sockets open.", report.open_sockets)
        yield _counter("capture_monitor_polls", "Listings of live conversations.", report.polls)
        yield _counter("capture_monitor_attachments", "Monitor sockets opened.", report.attachments)
        yield _counter(
            "capture_monitor_conversations",
            "Monitored conversations that ended normally.",
            report.conversations,
        )
        yield _counter(
            "capture_monitor_failures", "Monitor sockets that failed or ended abnormally.", report.failures
        )

    def _relay(self) -> Iterator[Metric]:
        report = self.watched.relay
        if report is None:
            return
        yield _gauge(
            "capture_relay_listening",
            "1 while the relay accepts connections.",
            1.0 if report.listening else 0.0,
        )
        yield _gauge("capture_relay_connections_open", "Connections being relayed.", report.open)
        yield _counter("capture_relay_connections", "Connections relayed.", report.connections)
        yield _counter(
            "capture_relay_conversations",
            "Relayed connections in which the platform announced a conversation.",
            report.conversations,
        )
        yield _counter("capture_relay_signed_urls", "Signed URLs handed out.", report.signed_urls)
        yield _counter(
            "capture_relay_stalled", "Connections closed because a side did not read.", report.stalled
        )
        refused = {
            (str(code) if 100 <= code <= 599 else "other",): float(n) for code, n in report.refused.items()
        }
        yield _labelled(
            CounterMetricFamily,
            "capture_relay_refused",
            "Requests not relayed, by the HTTP status the client got.",
            ["code"],
            refused,
        )

    def _projection(self, moment: Moment) -> Iterator[Metric]:
        state = moment.projection
        if state is None:
            return
        yield _gauge(
            "capture_projection_up",
            "1 when the projection's state could be read.",
            0.0 if isinstance(state, Exception) else 1.0,
        )
        if isinstance(state, Exception):
            return
        figures, lag = state
        yield _gauge(
            "capture_projection_position", "Seq of the last line the projection applied.", figures.position
        )
        yield _gauge("capture_projection_lag_lines", "Lines in the log not yet projected.", lag.lines)
        yield _gauge(
            "capture_projection_lag_seconds",
            "How long the oldest line not yet projected has waited.",
            lag.seconds,
        )
        yield _gauge("capture_projection_rows", "Rows in the user_texts table.", figures.rows)
        yield _gauge("capture_projection_gaps", "Jumps in seq the projection saw.", figures.gaps)
        yield _counter(
            "capture_projection_lines",
            "Lines the projection applied since its table was built.",
            figures.lines,
        )
        yield _labelled(
            CounterMetricFamily,
            "capture_projection_skipped",
            "Lines and sightings that gave no new row, by reason, since the table was built.",
            ["reason"],
            {(reason,): float(n) for reason, n in figures.skipped.items()},
        )


def build_registry(collector: RunCollector, *extra: Collector) -> CollectorRegistry:
    """A fresh registry holding ``collector``, the process' own metrics, and any ``extra`` collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for more in extra:
        registry.register(more)
    return registry
