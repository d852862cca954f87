"""Disposable views of the log: the user-turn rule, the SQLite store, the DuckDB views.

The names below are the public API (``from projections import project, rebuild``);
they load on first use.

"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from projections.duckdb_views import QueryResult, open_analytics, run_query
    from projections.rule import FoldResult, FoldState, UserTextRow, fold
    from projections.sqlite import ProjectReport, UserTextStore, project, projection_status, rebuild

__all__ = [
    "FoldResult",
    "FoldState",
    "ProjectReport",
    "QueryResult",
    "UserTextRow",
    "UserTextStore",
    "fold",
    "open_analytics",
    "project",
    "projection_status",
    "rebuild",
    "run_query",
]

_LAZY = {
    "QueryResult": "projections.duckdb_views",
    "open_analytics": "projections.duckdb_views",
    "run_query": "projections.duckdb_views",
    "FoldResult": "projections.rule",
    "FoldState": "projections.rule",
    "UserTextRow": "projections.rule",
    "fold": "projections.rule",
    "ProjectReport": "projections.sqlite",
    "UserTextStore": "projections.sqlite",
    "project": "projections.sqlite",
    "projection_status": "projections.sqlite",
    "rebuild": "projections.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'projections' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
