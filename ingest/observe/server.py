"""The metrics endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on the run's own event loop.

An aiohttp :class:`~aiohttp.web.AppRunner` started inside the run (as the
webhook receiver is), so it needs no thread of its own and sees the run's
counters where they are kept. Scrapes and readiness checks read files (the
projection's store) in a worker thread, so the event loop — and the receive
paths on it — never wait for them; the frames by type are counted from the
log by a process of its own (:mod:`~ingest.observe.tally_process`).

* ``GET /metrics``: the Prometheus text exposition of a per-run registry
  (:func:`~ingest.observe.collector.build_registry`);
* ``GET /healthz``: 200 while the process runs and its log can be written,
  else 503 (:func:`~ingest.observe.health.health_checks`);
* ``GET /readyz``: 200 while every configured source does its job and the
  projection keeps up, else 503 (:func:`~ingest.observe.health.readiness_checks`).

Health and readiness answer one line per check, ``ok NAME: detail`` or
``fail NAME: detail``. While it listens, ``<data dir>/capture.metrics`` says
where (:mod:`~ingest.observe.address`), for ``capture status``.

"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from ingest.errors import CaptureError, ConfigError
from ingest.log.writer import LogWriter, events_dir
from ingest.observe.address import address_url, forget_address, publish_address
from ingest.observe.collector import Moment, RunCollector, build_registry
from ingest.observe.figures import ProjectionFigures, ProjectionLag, projection_lag
from ingest.observe.health import DiskState, ReadinessPolicy, answer, health_checks, readiness_checks
from ingest.observe.tally_process import TallyProcess
from ingest.observe.watch import Watched


__all__ = ["MetricsConfig", "MetricsServer", "disk_state"]

log = logging.getLogger("capture.metrics")


@dataclass(frozen=True)
class MetricsConfig:
    """Where the endpoint listens and what readiness means.

    Attributes:
        port: TCP port; 0 picks a free one (see :attr:`MetricsServer.port`).
        host: Interface to listen on; loopback by default (metrics name
            agents and volumes: expose them only on purpose).
        readiness: The bounds of ``/readyz``.

    """

    port: int
    host: str = "127.0.0.1"
    readiness: ReadinessPolicy = field(default_factory=ReadinessPolicy)


def disk_state(path: os.PathLike[str] | str) -> DiskState | None:
    """Whether ``path``'s filesystem is mounted read-only, and the bytes free to us; ``None`` if unreadable."""
    try:
        free = shutil.disk_usage(path).free
        read_only = False
        if sys.platform != "win32":
            read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return None
    return DiskState(read_only, free)


class MetricsServer:
    """Serves a run's metrics, health and readiness; an observer for :func:`ingest.sources.run.run_sources`.

    Args:
        config: Where to listen.
        watched: The run's counters (:attr:`Watched.writer` is set by :meth:`start`).
        collectors: More collectors for the same registry (a later feature's figures).

    """

    def __init__(self, config: MetricsConfig, watched: Watched, *collectors: Collector) -> None:
        self.config = config
        self.watched = watched
        self.port: int | None = None
        self.registry: CollectorRegistry | None = None
        self._extra = collectors
        self.collector: RunCollector | None = None
        self._runner: web.AppRunner | None = None
        self._stop: asyncio.Event | None = None
        self._tally = TallyProcess()

    async def start(self, writer: LogWriter, stop: asyncio.Event) -> None:
        """Start serving once the log is open.

        Raises:
            ConfigError: the address cannot be listened on.

        """
        self.watched.writer = writer
        self._stop = stop
        segment = writer.active_segment
        if segment is not None:
            try:
                await self._tally.start(events_dir(writer.data_dir), segment, segment.stat().st_size)
            except OSError as exc:
                log.warning("frames by type will not be counted: %s", exc.strerror or exc)
        self.collector = RunCollector(self.watched, lambda: self._tally.counts, self.moment)
        self.registry = build_registry(self.collector, *self._extra)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            await self._tally.close()
            raise ConfigError(
                f"cannot listen on {self.config.host}:{self.config.port} for metrics: "
                f"{exc.strerror or exc}; pick another --metrics-host or --metrics-port"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)", self.config.host, self.port)
        try:
            publish_address(writer.data_dir, address_url(self.config.host, self.port))
        except OSError as exc:
            log.warning("capture status will not show live figures: %s", exc)

    async def close(self) -> None:
        """Stop serving (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            if self.watched.writer is not None:
                forget_address(self.watched.writer.data_dir)
            await runner.cleanup()
        await self._tally.close()

    def moment(self) -> Moment:
        """Read the files and the projection's store once: what a scrape or a readiness check needs.

        Blocking (file and SQLite reads): call it in a worker thread.

        """
        watched = self.watched
        writer = watched.writer
        disk = disk_state(writer.data_dir) if writer is not None else None
        projection: tuple[ProjectionFigures, ProjectionLag] | Exception | None = None
        if watched.projection is not None and writer is not None:
            try:
                figures = watched.projection()
                lag = projection_lag(
                    events_dir(writer.data_dir), figures.position, writer.next_seq - 1, time.time()
                )
                projection = (figures, lag)
            except (CaptureError, OSError) as exc:
                projection = exc
        lag_only = projection[1] if isinstance(projection, tuple) else projection
        stopping = self._stop is not None and self._stop.is_set()
        ready = readiness_checks(
            watched, lag_only, time.monotonic(), self.config.readiness, stopping=stopping
        )
        return Moment(disk, projection, ready)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.registry is not None
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        writer = self.watched.writer
        disk = await asyncio.to_thread(disk_state, writer.data_dir) if writer is not None else None
        status, text = answer(health_checks(self.watched, disk, self.config.readiness))
        return web.Response(status=status, text=text)

    async def _readyz(self, request: web.Request) -> web.Response:
        moment = await asyncio.to_thread(self.moment)
        status, text = answer(moment.ready)
        return web.Response(status=status, text=text)
