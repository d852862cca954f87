"""What the projections say of themselves, for the metrics endpoint, ``capture status`` and ``capture doctor``.

Reads only: the SQLite store's state row (read-only, never waiting long for a
writer), and the DuckDB views' file (opened as ``capture sql`` opens it).

"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson

from ingest.errors import CaptureError, ProjectionError
from ingest.log.writer import events_dir
from ingest.observe.figures import ProjectionFigures, projection_lag
from ingest.observe.health import Check
from projections.reader import log_last_seq
from projections.rule import SkipReason
from projections.sqlite import SCHEMA_VERSION, default_db_path


__all__ = ["projection_check", "projection_figures", "views_check"]

#: Seconds the oldest unprojected line may wait while a live projection runs (as ``/readyz``).
LIVE_LAG_BOUND = 60.0

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


def projection_check(
    data_dir: Path, db_path: Path | None, *, live: bool, max_lag: float = LIVE_LAG_BOUND
) -> Check:
    """Whether the ``user_texts`` table is up to date with the log.

    Args:
        data_dir: The data dir.
        db_path: The table's file (default ``<data dir>/whatsapp_storage.db``).
        live: A writer runs, so a live projection should be catching up:
            a lag under ``max_lag`` seconds passes.

    """
    name = "projection"
    db_path = db_path or default_db_path(data_dir)
    if not events_dir(data_dir).is_dir():
        return Check(name, True, "no log yet")
    try:
        figures = projection_figures(db_path)
        last = log_last_seq(data_dir)
        lag = projection_lag(events_dir(data_dir), figures.position, last, time.time())
    except (CaptureError, OSError) as exc:
        return Check(name, False, str(exc))
    if lag.lines == 0:
        return Check(name, True, f"up to date at seq {figures.position} ({figures.rows} rows)")
    behind = f"{lag.lines} lines behind the log (the oldest waiting {lag.seconds:.0f} s)"
    if live and lag.seconds <= max_lag:
        return Check(name, True, f"{behind}; the live projection is catching up")
    if live:
        return Check(name, False, f"{behind}: the live projection is not keeping up")
    return Check(name, False, f"{behind}: run `capture project`")


def views_check(data_dir: Path, duckdb_path: Path | None) -> Check:
    """Whether the DuckDB views open and read the log, as ``capture sql`` opens them."""
    import duckdb  # loaded only for this check

    from projections.duckdb_views import open_analytics

    name = "duckdb views"
    if not events_dir(data_dir).is_dir():
        return Check(name, True, "no log yet")
    try:
        conn = open_analytics(data_dir, duckdb_path)
        try:
            for view in ("events", "user_texts", "conversations", "daily_activity"):
                conn.execute(f"SELECT * FROM {view} LIMIT 0").fetchall()
        finally:
            conn.close()
    except ProjectionError as exc:
        return Check(name, False, str(exc))
    except duckdb.Error as exc:
        return Check(name, False, f"a view does not read the log: {exc}")
    return Check(name, True, "events, user_texts, conversations and daily_activity open")
