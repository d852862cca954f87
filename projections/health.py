"""What the projections say of themselves, for the metrics endpoint, ``capture status`` and ``capture doctor``.

Reads only: the SQLite store's state row (read-only, never waiting long for a
writer), and the DuckDB views' file (opened as ``capture sql`` opens it).

"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from ingest.errors import ProjectionError
from ingest.observe.figures import ProjectionFigures
from projections.rule import SkipReason
from projections.sqlite import SCHEMA_VERSION


__all__ = ["projection_figures"]

_REASONS = frozenset(reason.value for reason in SkipReason)


def projection_figures(db_path: Path) -> ProjectionFigures:
    """Read the ``user_texts`` store's position and counters (position 0 before the file exists).

    Skip reasons other than :class:`~projections.rule.SkipReason`'s (a file from
    elsewhere) are counted as ``other``.

    Raises:
        ProjectionError: the file cannot be read, or is of another schema version
            (the message says to run ``capture rebuild``).

    """
    if not db_path.exists():
        return ProjectionFigures(position=0)
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            row = conn.execute(
                "SELECT schema_version, last_seq, lines, rows, skipped FROM projection_state WHERE id = 1"
            ).fetchone()
            gaps = conn.execute("SELECT count(*) FROM projection_gaps").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ProjectionError(f"cannot read {db_path}: {exc}") from exc
    if row is None:
        return ProjectionFigures(position=0)
    version, last_seq, lines, rows, skipped_text = row
    if version != SCHEMA_VERSION:
        raise ProjectionError(
            f"{db_path} is of schema version {version}, this capture's is {SCHEMA_VERSION}: run `capture rebuild`"
        )
    skipped: dict[str, int] = {}
    try:
        stored = orjson.loads(skipped_text)
    except orjson.JSONDecodeError:
        stored = {}
    for reason, count in stored.items() if isinstance(stored, dict) else ():
        if isinstance(count, int):
            label = reason if reason in _REASONS else "other"
            skipped[label] = skipped.get(label, 0) + count
    return ProjectionFigures(
        position=int(last_seq), lines=int(lines), rows=int(rows), skipped=skipped, gaps=int(gaps)
    )
