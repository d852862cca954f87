"""How a command that writes the log runs: its sources on one writer, the live projection beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from ingest.sources import LogSettings, Sidecar, Source, run_source, run_sources
from projections.live import live_projection_sidecar


__all__ = ["write_log", "write_log_from"]

R = TypeVar("R")


def _live_projection(data_dir: Path, db: Path | None, no_project: bool) -> list[Sidecar]:
    return [] if no_project else [live_projection_sidecar(data_dir, db)]


def write_log_from(
    sources: Sequence[Source[object]], settings: LogSettings, db: Path | None, no_project: bool
) -> list[object]:
    """Run ``sources`` on one writer (with the live projection unless ``no_project``); their reports."""
    sidecars = _live_projection(settings.data_dir, db, no_project)
    return asyncio.run(run_sources(sources, settings, sidecars=sidecars))


def write_log(source: Source[R], settings: LogSettings, db: Path | None, no_project: bool) -> R:
    """Run a standalone command's one source as :func:`write_log_from` does; its report."""
    sidecars = _live_projection(settings.data_dir, db, no_project)
    return asyncio.run(run_source(source, settings, sidecars=sidecars))
