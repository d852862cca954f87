"""Disposable views of the log: the user-turn rule, the stores, the runner, the DuckDB views.

The names below are the public API (``from projections import project, rebuild``);
they load on first use.

"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from projections.duckdb_views import QueryResult, default_duckdb_path, open_analytics, run_query
    from projections.live import LiveProjection, live_projection_sidecar, start_live_projection
    from projections.reader import LogTail, ScanStats, log_last_seq, scan
    from projections.rule import FoldResult, FoldState, UserTextRow, fold
    from projections.runner import ProjectReport, project, rebuild
    from projections.sqlite import UserTextStore, default_db_path, iter_rows, projection_status
    from projections.store import Store

__all__ = [
    "FoldResult",
    "FoldState",
    "LiveProjection",
    "LogTail",
    "ProjectReport",
    "QueryResult",
    "ScanStats",
    "Store",
    "UserTextRow",
    "UserTextStore",
    "default_db_path",
    "default_duckdb_path",
    "fold",
    "iter_rows",
    "live_projection_sidecar",
    "log_last_seq",
    "open_analytics",
    "project",
    "projection_status",
    "rebuild",
    "run_query",
    "scan",
    "start_live_projection",
]

_LAZY = {
    "QueryResult": "projections.duckdb_views",
    "default_duckdb_path": "projections.duckdb_views",
    "open_analytics": "projections.duckdb_views",
    "run_query": "projections.duckdb_views",
    "LiveProjection": "projections.live",
    "live_projection_sidecar": "projections.live",
    "start_live_projection": "projections.live",
    "FoldResult": "projections.rule",
    "FoldState": "projections.rule",
    "UserTextRow": "projections.rule",
    "fold": "projections.rule",
    "ProjectReport": "projections.runner",
    "project": "projections.runner",
    "rebuild": "projections.runner",
    "LogTail": "projections.reader",
    "ScanStats": "projections.reader",
    "log_last_seq": "projections.reader",
    "scan": "projections.reader",
    "UserTextStore": "projections.sqlite",
    "default_db_path": "projections.sqlite",
    "iter_rows": "projections.sqlite",
    "projection_status": "projections.sqlite",
    "Store": "projections.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'projections' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
