"""The figures a running capture is watched by, as data: what the projection reports, how far it lags.

Shared by the metrics endpoint, ``/readyz``, ``capture status`` and
``capture doctor``, so that each names and computes a figure the same way.
The projection's own state comes from the store (``projections``), handed in
as a :class:`ProjectionFigures`: ingest never reads a projection itself.

"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingest.log.reader import find_line


__all__ = ["ProjectionFigures", "ProjectionLag", "projection_lag"]


@dataclass(frozen=True)
class ProjectionFigures:
    """What a projection says of itself.

    Attributes:
        position: Seq of the last line it applied (0: none yet).
        lines: Lines it applied, since its table was built.
        rows: Rows its table holds.
        skipped: Lines and sightings that gave no new row, by reason.
        gaps: Jumps in seq it saw.

    """

    position: int
    lines: int = 0
    rows: int = 0
    skipped: Mapping[str, int] = field(default_factory=dict)
    gaps: int = 0


@dataclass(frozen=True)
class ProjectionLag:
    """How far a projection is behind its log.

    Attributes:
        lines: Lines in the log after its position.
        seconds: How long the oldest of them has waited (from its
            ``received_at`` to ``now``); 0 when none waits.

    """

    lines: int
    seconds: float


def projection_lag(events_dir: Path, position: int, last_seq: int | None, now: float) -> ProjectionLag:
    """Measure the lag of a projection at ``position`` behind a log whose last line is ``last_seq``.

    Args:
        events_dir: The log's folder (the oldest waiting line is read from it).
        position: The projection's position.
        last_seq: The log's last seq (``None`` for an empty log).
        now: The current Unix time.

    """
    behind = max(0, (last_seq or 0) - position)
    if behind == 0:
        return ProjectionLag(0, 0.0)
    oldest = find_line(events_dir, position + 1)
    if oldest is None:
        return ProjectionLag(behind, 0.0)
    try:
        received = datetime.fromisoformat(oldest.received_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return ProjectionLag(behind, 0.0)
    return ProjectionLag(behind, max(0.0, now - received))
