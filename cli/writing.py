"""How a command that writes the log runs: its sources on one writer, the live projection beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from ingest.observe.watch import Watched
from ingest.sources import LogSettings, Sidecar, Source, run_source, run_sources
from ingest.sources.run import Observer
from ingest.sources.signals import stop_on_signals
from projections.live import live_projection_sidecar
from projections.sqlite import default_db_path


if TYPE_CHECKING:
    from ingest.observe.server import MetricsServer


__all__ = ["Written", "metrics_server", "write_log", "write_log_from"]

R = TypeVar("R")


@dataclass(frozen=True)
class Written(Generic[R]):
    """What a run of a writing command gave.

    Attributes:
        report: The source's report (a list of them for :func:`write_log_from`).
        signal: The signal that stopped the run (SIGINT for Ctrl-C, SIGTERM), if one did.

    """

    report: R
    signal: int | None


def metrics_server(
    port: int | None, host: str, watched: Watched, settings: LogSettings, db: Path | None, no_project: bool
) -> MetricsServer | None:
    """The ``--metrics-port`` endpoint of a run, or ``None`` without the flag; it reads the live projection's store."""
    if port is None:
        return None
    # Loaded only for a run that serves metrics: every other command starts without prometheus-client.
    from ingest.observe.server import MetricsConfig, MetricsServer
    from projections.health import projection_figures

    if not no_project:
        db_path = db or default_db_path(settings.data_dir)
        watched.projection = lambda: projection_figures(db_path)
    return MetricsServer(MetricsConfig(port, host), watched)


def _live_projection(data_dir: Path, db: Path | None, no_project: bool) -> list[Sidecar]:
    return [] if no_project else [live_projection_sidecar(data_dir, db)]


async def _until_signal(run: Callable[[asyncio.Event], Awaitable[R]]) -> Written[R]:
    stop = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stop) as received:
        report = await run(stop)
    return Written(report, received[0] if received else None)


def write_log_from(
    sources: Sequence[Source[object]],
    settings: LogSettings,
    db: Path | None,
    no_project: bool,
    observer: Observer | None = None,
) -> Written[list[object]]:
    """Run ``sources`` on one writer (with the live projection unless ``no_project``) until they end or a signal."""
    sidecars = _live_projection(settings.data_dir, db, no_project)
    return asyncio.run(
        _until_signal(
            lambda stop: run_sources(
                sources, settings, sidecars=sidecars, stop=stop, handle_signals=False, observer=observer
            )
        )
    )


def write_log(
    source: Source[R],
    settings: LogSettings,
    db: Path | None,
    no_project: bool,
    observer: Observer | None = None,
) -> Written[R]:
    """Run a standalone command's one source as :func:`write_log_from` does."""
    sidecars = _live_projection(settings.data_dir, db, no_project)
    return asyncio.run(
        _until_signal(
            lambda stop: run_source(
                source, settings, sidecars=sidecars, stop=stop, handle_signals=False, observer=observer
            )
        )
    )
